"""constitution.yaml: the principles that decide what the model learns.

Each principle has an id, a category (helpful, honest, harmless), the stages that may draw it, a
critique request and a revision request (the critique and revise steps), and, where it can make
pairs of its own, a `contrast` and a `check` (the contrast step, cai/data/contrast.py): the same
request answered under an instruction that asks for the principle and under one that asks for its
opposite (RLCD), and the signal that must tell the two apart, in the principle's direction, for the
pair to be kept. A principle without a check still drives critique and revision. Loaded as strictly
as the curriculum.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from cai.config.settings import Strict, read_yaml, sha256, validate

# The requests a contrast answers: the stage's own tasks, or one of the project's sets whose kind
# the set says (requests/: harmful ones, which the positive side refuses; benign ones that look
# risky, which it helps with).
REQUEST_KINDS = ("tasks", "harmful", "benign")
# What may separate the two sides, each in a fixed direction (the positive side is the one chosen):
#   refusal      it refuses well (an apology or a statement that it cannot, no lecture, brief); the
#   other does not refuse
#   compliance   it helps (no refusal); the other refuses
#   words        it is shorter: within `at_most` words where set (the other over it), else fewer by
#   `margin` of the other's
#   relevance    it is closer to the bare request by `margin` (cosine, cai/data/quality.py)
#   repetition   it repeats itself less by `margin`
#   boilerplate  it does not introduce itself; the other does
#   rule         it keeps the task's checkable rule, or the principle's own (`rule`, an IFEval
#   instruction id, with its `kwargs`); the other breaks it (lm-eval's IFEval checker)
#   judge        the judge prefers it in both orders (only where the stage trusts the judge)
SIGNALS = (
    "refusal",
    "compliance",
    "words",
    "relevance",
    "repetition",
    "boilerplate",
    "rule",
    "judge",
)


class Exemplar(Strict):
    """A request answered the principle's way (`positive`) and/or the opposite way (`negative`):
    shown to the model as an earlier turn under that side's instruction (Dromedary's exemplars).
    Measured here: the 135M model refused 1 of 48 harmful requests under a refusing instruction
    alone, 45 of 48 with two such turns."""

    request: str = Field(min_length=10)
    positive: str | None = Field(None, min_length=1)
    negative: str | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _a_side(self) -> "Exemplar":
        if self.positive is None and self.negative is None:
            raise ValueError(
                "an exemplar answers its request on at least one side (positive, negative)"
            )
        return self


class Contrast(Strict):
    """The two instructions a principle's pairs are sampled under, as the system prompt of the
    answer, and the exemplar turns shown under each."""

    requests: Literal[REQUEST_KINDS] = "tasks"
    positive: str = Field(min_length=10)  # asks for the principle
    # asks for its opposite, and is otherwise as alike as it can be; left out, the negative side is
    # the policy's own answer to the bare request (programs/contrast.py)
    negative: str | None = Field(None, min_length=10)
    examples: list[Exemplar] = []
    # each side's cap, where the stage's (`generation.contrast.max_tokens`) is too short for the
    # behaviour to show: a ramble or a loop shows only at length
    max_tokens: int | None = Field(None, ge=16, le=2048)

    @model_validator(mode="after")
    def _plain_side_shows_no_exemplar(self) -> "Contrast":
        if self.negative is None and any(e.negative is not None for e in self.examples):
            raise ValueError(
                "an exemplar's negative answer is never shown where the contrast has no negative "
                "instruction (that side is the policy's own answer): drop it, or add the "
                "instruction"
            )
        return self

    def demos(self, side: str) -> list[tuple[str, str]]:
        """The (request, answer) turns shown under `side`'s instruction."""
        return [
            (e.request, getattr(e, side)) for e in self.examples if getattr(e, side) is not None
        ]


class Check(Strict):
    """The signal that must separate the positive side from the negative one, in its direction
    (SIGNALS)."""

    signal: Literal[SIGNALS]
    # words: the positive side within this many words, the negative over it
    at_most: int | None = Field(None, ge=1)
    # words, relevance, repetition: the least difference that counts
    margin: float = Field(0.0, ge=0, le=1)
    # rule: the principle's own rule, kept whatever the request asks (an IFEval instruction id and
    # its arguments: `startend:end_checker`, {end_phrase: ...}), in place of the task's
    rule: str | None = None
    kwargs: dict[str, Any] = {}

    @model_validator(mode="after")
    def _at_most_for_words(self) -> "Check":
        if self.at_most is not None and self.signal != "words":
            raise ValueError(f"at_most applies to the words signal only, not {self.signal!r}")
        if (self.rule is not None or self.kwargs) and self.signal != "rule":
            raise ValueError(f"rule and kwargs apply to the rule signal only, not {self.signal!r}")
        return self  # a rule that lm-eval has no checker for: cai/data/constraints.py, own_rules

    def own_rule(self) -> dict | None:
        """The principle's own rule as a task's constraint, None where it checks the task's."""
        return {"instruction_id": self.rule, "kwargs": self.kwargs} if self.rule else None


class Principle(Strict):
    id: str = Field(pattern=r"^[a-z0-9]+(-[a-z0-9]+)*$")
    category: Literal["helpful", "honest", "harmless"]
    stages: list[int] = Field(min_length=1)
    critique: str = Field(min_length=10)
    revision: str = Field(min_length=10)
    contrast: Contrast | None = None
    check: Check | None = None

    @model_validator(mode="after")
    def _contrast_needs_its_check(self) -> "Principle":
        if self.contrast is not None and self.check is None:
            raise ValueError(
                f"principle {self.id!r}: a contrast needs a check (the signal that must separate "
                "its two sides)"
            )
        if (
            self.check is not None
            and self.check.signal == "rule"
            and self.check.rule is None
            and self.contrast
            and self.contrast.requests != "tasks"
        ):
            raise ValueError(
                f"principle {self.id!r}: the rule signal needs requests that carry a rule "
                "(requests: tasks), or a rule of its own (check.rule)"
            )
        if (
            self.check is not None
            and self.check.signal in ("refusal", "compliance")
            and self.contrast
            and self.contrast.requests == "tasks"
        ):
            raise ValueError(
                f"principle {self.id!r}: whether a refusal is right depends on the request: use "
                f"the harmful or benign requests for the {self.check.signal} signal"
            )
        return self

    @field_validator("stages")
    @classmethod
    def _stages_in_range(cls, v: list[int]) -> list[int]:
        bad = [s for s in v if not 1 <= s <= 6]
        if bad:
            raise ValueError(f"stage {bad[0]} is out of range 1-6")
        return v


class Constitution(Strict):
    principles: list[Principle] = Field(min_length=1)

    @field_validator("principles")
    @classmethod
    def _unique_ids(cls, v: list[Principle]) -> list[Principle]:
        seen = set()
        for p in v:
            if p.id in seen:
                raise ValueError(f"duplicate principle id {p.id!r}")
            seen.add(p.id)
        return v

    def for_stage(self, stage: int) -> list[Principle]:
        return [p for p in self.principles if stage in p.stages]


def load_constitution(path: Path) -> tuple[Constitution, str]:
    """The constitution and the sha256 of its text."""
    data, text = read_yaml(path)
    return validate(Constitution, data, path), sha256(text)
