"""Checkable constraints, verified by lm-eval's own IFEval checkers.

At 135M parameters the judge is close to chance, while a checker is never wrong
about "no commas" or "fewer than 50 words" (DESIGN.md, "What signal a 135M model
gives"). Tasks carry one such constraint where their stage allows it, and pairs whose
sides the checker separates are the trustworthy kind.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

from cai import ROOT
from cai.config.settings import ConfigError

# lm-eval's IFEval module looks for punkt_tab at import and would download it:
# point NLTK at the copy shipped in the repo first.
_NLTK_DATA = ROOT / "nltk_data"
os.environ["NLTK_DATA"] = os.pathsep.join(
    p for p in (str(_NLTK_DATA), os.environ.get("NLTK_DATA")) if p
)
import nltk  # noqa: E402

if str(_NLTK_DATA) not in nltk.data.path:
    nltk.data.path.insert(0, str(_NLTK_DATA))

from lm_eval.tasks.ifeval import instructions_registry  # noqa: E402

# agg_inst_level_acc and process_results are imported from here by cai/measuring/benchmarks.py:
# after the NLTK path
from lm_eval.tasks.ifeval.utils import (  # noqa: E402
    InputExample,
    agg_inst_level_acc,  # noqa: F401
    process_results,  # noqa: F401
    test_instruction_following_strict,
)

# The constraint kinds tasks may carry, with the argument values we draw from. Chosen
# to be within reach of a small model and to leave the answer on topic (no forced
# random keywords); number_sentences is left out because it needs trained punkt data.
KINDS: dict[str, list[dict]] = {
    "change_case:english_lowercase": [{}],
    "punctuation:no_comma": [{}],
    "length_constraints:number_words": [
        {"relation": "less than", "num_words": n} for n in (25, 40, 60)
    ],
    "startend:end_checker": [
        {"end_phrase": p} for p in ("That is all.", "Hope this helps!", "Any other questions?")
    ],
    "detectable_format:number_bullet_lists": [{"num_bullets": n} for n in (2, 3, 4)],
    "detectable_format:title": [{}],
    "startend:quotation": [{}],
    "detectable_content:postscript": [{"postscript_marker": m} for m in ("P.S.", "P.P.S")],
}

# How a training task states its rule: three phrasings a kind, written for this project, none of
# them the words of IFEval or of lm-eval's `build_description` (which the dev suite keeps), so that
# a gain on either cannot come from one memorised sentence. The checker reads the kwargs, never the
# words.
PHRASINGS: dict[str, tuple[str, ...]] = {
    "change_case:english_lowercase": (
        "Write the whole reply in small letters only, without a single capital.",
        "Do not use uppercase letters anywhere; even the first word starts in lowercase.",
        "Every letter of your answer has to be lowercase.",
    ),
    "punctuation:no_comma": (
        "Leave out commas completely.",
        "Your reply must not contain even one comma; use full stops instead.",
        "Write it without any comma characters.",
    ),
    "length_constraints:number_words": (
        "Keep the reply shorter than {num_words} words.",
        "Say it in fewer than {num_words} words in total.",
        "Stay under {num_words} words altogether.",
    ),
    "startend:end_checker": (
        "The very last words of your reply must be: {end_phrase}",
        "Close with {end_phrase} and put nothing after it.",
        "Make {end_phrase} the final sentence, with no text following.",
    ),
    "detectable_format:number_bullet_lists": (
        "Give exactly {num_bullets} markdown bullet points, each line starting with an asterisk.",
        "Reply with a list of precisely {num_bullets} items, every one beginning with '* '.",
        "Use {num_bullets} bullet points, no more and no fewer, in markdown.",
    ),
    "detectable_format:title": (
        "Put a title between double angle brackets, like <<a title>>.",
        "Begin with a heading enclosed in << and >>.",
        "Add a title written as <<title here>>.",
    ),
    "startend:quotation": (
        "Put the whole reply inside one pair of double quotes.",
        "Start your answer with a double quote character and end it with one.",
        "Enclose everything you write, first word to last, in double quotes.",
    ),
    "detectable_content:postscript": (
        "After the answer, add a note that begins with {postscript_marker}",
        "End with a postscript line starting with {postscript_marker}",
        "Finish by adding {postscript_marker} and one more short sentence.",
    ),
}


def describe(instruction_id: str, kwargs: dict) -> str:
    """The sentence that tells the model the rule in IFEval's own words: the dev suite's
    phrasing."""
    checker = instructions_registry.INSTRUCTION_DICT[instruction_id](instruction_id)
    return checker.build_description(**kwargs)


def draw(rng: random.Random, weights: dict[str, float] | None = None) -> dict:
    """One constraint: {"instruction_id", "kwargs", "phrasing", "description"}, stated in one of the
    kind's training phrasings; kinds in proportion to `weights` (every kind alike without them)."""
    kinds = sorted(KINDS)
    instruction_id = (
        rng.choices(kinds, [weights.get(k, 1.0) for k in kinds])[0]
        if weights
        else rng.choice(kinds)
    )
    kwargs = dict(rng.choice(KINDS[instruction_id]))
    phrasing = rng.randrange(len(PHRASINGS[instruction_id]))
    return {
        "instruction_id": instruction_id,
        "kwargs": kwargs,
        "phrasing": phrasing,
        "description": PHRASINGS[instruction_id][phrasing].format(**kwargs),
    }


def attach(task: dict, rng: random.Random | None, weights: dict[str, float] | None = None) -> dict:
    """`task` with a rule drawn for it (`rng` None: no rule) and the prompt the policy is sent:
    the request, then the rule's sentence."""
    task["constraint"] = draw(rng, weights) if rng is not None else None
    task["prompt"] = (
        f"{task['request']} {task['constraint']['description']}"
        if task["constraint"]
        else task["request"]
    )
    return task


# Every kind keeps at least this weight, so one the model never keeps is still seen (and its
# revisions tried), and one it learns to keep every time is still rewarded when it slips.
MIN_WEIGHT = 0.1


def separating_weights(tasks: list[dict], responses, samples: int) -> dict[str, float]:
    """Per kind, the chance that `samples` answers include one that keeps the rule and one that
    breaks it: 1 - p^n - (1-p)^n, with p the kind's keep rate over `responses` (smoothed,
    (k+1)/(n+2)).

    The chance that best-of-n makes a pair at all. Measured here at stage 1 (114 tasks, 4 samples):
    keep rates 0.00 (lowercase, quotation) to 0.83 (fewer than N words); drawn alike, 43% of tasks
    were separated; drawn by these weights, about 65% would be.
    """
    by_id = {t["id"]: t for t in tasks}
    kept: dict[str, list[int]] = {}
    for r in responses:
        task = by_id.get(r["task_id"])
        if r["ok"] and task and task.get("constraint"):
            tally = kept.setdefault(task["constraint"]["instruction_id"], [0, 0])
            tally[0] += bool(keeps(task["constraint"], task["prompt"], r["response"]))
            tally[1] += 1
    weights = {}
    for kind, (k, n) in kept.items():
        p = (k + 1) / (n + 2)
        weights[kind] = round(max(MIN_WEIGHT, 1 - p**samples - (1 - p) ** samples), 3)
    return weights


def known_rule(instruction_id: str, kwargs: dict) -> None:
    """Raise where `instruction_id` is not one of IFEval's checkers or `kwargs` are not its
    arguments: a principle's own rule is checked the way the IFEval suites are."""
    checker = instructions_registry.INSTRUCTION_DICT.get(instruction_id)
    if checker is None:
        raise ValueError(
            f"rule {instruction_id!r} is not an IFEval instruction id (one of: "
            + ", ".join(sorted(instructions_registry.INSTRUCTION_DICT))
            + ")"
        )
    instruction = checker(instruction_id)
    try:
        instruction.build_description(**kwargs)
    except TypeError as e:
        raise ValueError(
            f"rule {instruction_id!r}: kwargs {kwargs} are not its arguments ({e})"
        ) from None
    missing = [k for k in instruction.get_instruction_args_keys() if kwargs.get(k) is None]
    if missing:  # lm-eval draws a missing argument at random: a check that changes between calls
        raise ValueError(f"rule {instruction_id!r} needs kwargs {missing}")


def check_own_rules(principles, where: Path) -> None:
    """Every principle's own rule is one of IFEval's checkers, with its arguments (known_rule): one
    error naming the file and the principle otherwise. At load, before a run or a dry run starts."""
    for p in principles:
        if p.check is not None and p.check.rule is not None:
            try:
                known_rule(p.check.rule, p.check.kwargs)
            except ValueError as e:
                raise ConfigError(f"{where}: principle {p.id!r}: check: {e}") from None


def keeps(constraint: dict | None, prompt: str, response: str) -> bool | None:
    """Whether `response` keeps the constraint (strict IFEval check); None if there is none."""
    if not constraint:
        return None
    example = InputExample(
        key=0,
        instruction_id_list=[constraint["instruction_id"]],
        prompt=prompt,
        kwargs=[constraint["kwargs"]],
    )
    return bool(test_instruction_following_strict(example, response).follow_all_instructions)


def score_ifeval(doc: dict, response: str) -> dict:
    """lm-eval's IFEval scores for one item in IFEval's format (prompt- and instruction-level)."""
    return process_results(doc, [response])
