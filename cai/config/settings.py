"""The typed settings the two config files are made of, and how a YAML file becomes them.

Every model is strict: an unknown key, a wrong type or an inconsistent value is refused with one
line that names the file and the field (`ConfigError`). cai/config/curriculum.py puts them together
into curriculum.yaml's defaults, profiles and stages; cai/config/constitution.py into the
principles.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

STAGE_TYPES = (
    "explicit_instructions",
    "implicit_instructions",
    "generation_tasks",
    "evaluation_tasks",
    "revision_tasks",
    "constitutional",
)


# the dev set: the project's own suites
SUITES = ("instruction_following", "harmlessness", "over_refusal", "helpfulness")
# the test set: outside yardsticks (cai/measuring/benchmarks.py)
BENCHMARKS = ("ifeval", "harmbench", "rho_overrefusal")
# Where a pair's verdict comes from: best-of-n samples the checker separates, a revision
# the checker prefers (or not), a revision the judge prefers where the checker is silent.
PAIR_SOURCES = ("best_of_n", "revision", "judge", "contrast")
# What evaluate writes to eval.json (besides `lm_eval:<task>:<metric>` for added lm-eval tasks).
SCORES = (
    "instruction_following",
    "instruction_following_loose",
    "instruction_following_inst_level",
    "harmlessness_refusal",
    "harmlessness_refusal_prefixes",
    "harmlessness_unsafe",
    "over_refusal",
    "over_refusal_prefixes",
    "win_rate_vs_previous",
    "win_rate_vs_base",
    # the quality suites, on the answers to the instruction-following and helpfulness requests
    "relevance",
    "off_topic",
    "repetition",
    "length_words",
    "boilerplate",
)


class ConfigError(Exception):
    """A config file is missing or wrong; str() is one line naming file and field."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TrainSettings(Strict):
    """How each stage's adapter is trained (TRL DPOTrainer, or ORPO)."""

    method: Literal["dpo", "orpo"] = "dpo"
    epochs: float = Field(1.0, gt=0)
    learning_rate: float = Field(5e-5, gt=0)
    beta: float = Field(0.1, gt=0)  # DPO's KL weight (ORPO's lambda)
    # DPO only: this weight times the chosen side's negative log-likelihood added to DPO's loss
    # (TRL's loss_type [sigmoid, sft]; RPO, Pang et al. 2024), so the chosen answer's own
    # probability rises, not only the margin: DPO alone can widen the margin by making the rejected
    # side less likely
    sft_weight: float = Field(0.0, ge=0)
    batch_size: int = Field(4, ge=1)
    grad_accum: int = Field(1, ge=1)
    max_length: int = Field(512, ge=32)  # prompt + response tokens; longer pairs are dropped
    lora_r: int = Field(8, ge=1)
    lora_alpha: int = Field(16, ge=1)
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    bf16: bool = False  # float32 on the CPU: bf16 learned less per epoch (PITFALLS.md)
    # recompute activations: memory for time; the GPU profile's 32B needs it, a 135M model does not
    gradient_checkpointing: bool = False
    # nf4: QLoRA, the base in bitsandbytes 4-bit NF4 (for the GPU; runs, slowly, on the CPU)
    quantization: Literal["none", "nf4"] = "none"
    # unsloth: its FastLanguageModel under TRL's trainer (GPU only, pip install -e .[unsloth])
    backend: Literal["trl", "unsloth"] = "trl"
    # with fewer pairs than this the stage is not trained: the policy stays
    min_pairs: int = Field(1, ge=1)
    # a loss above this (or NaN) stops training: the stage keeps the previous adapter
    max_loss: float = Field(10.0, gt=0)
    # Training runs as its own process through `accelerate launch` (cai/training/process.py): this
    # many processes, one a GPU (batch_size is per process: the global batch is batch_size x
    # processes x grad_accum)
    processes: int = Field(1, ge=1)
    # none: each process holds the model (DDP); fsdp, zero3: sharded over them
    sharding: Literal["none", "fsdp", "zero3"] = "none"
    # the user's Accelerate / DeepSpeed config file, passed to `accelerate launch --config_file`
    accelerate_config: str | None = None

    @model_validator(mode="after")
    def _one_process_for_unsloth(self):
        if self.backend == "unsloth" and (self.processes > 1 or self.sharding != "none"):
            raise ValueError(
                "backend 'unsloth' trains on one GPU: set processes 1 and sharding none, or "
                "backend trl"
            )
        return self


class Sampling(Strict):
    temperature: float = Field(0.7, ge=0)
    max_tokens: int = Field(128, ge=1)
    # keep the first token's alternatives (the judge's margin)
    top_logprobs: int | None = Field(None, ge=1, le=20)


class Generation(Strict):
    """Sampling per program; the judge decodes greedily."""

    propose: Sampling = Sampling(temperature=1.0, max_tokens=80)
    respond: Sampling = Sampling(temperature=0.8, max_tokens=128)
    critique: Sampling = Sampling(temperature=0.7, max_tokens=96)
    revise: Sampling = Sampling(temperature=0.7, max_tokens=160)
    # both sides alike, one seed a request
    contrast: Sampling = Sampling(temperature=0.8, max_tokens=128)
    judge: Sampling = Sampling(temperature=0.0, max_tokens=4, top_logprobs=5)
    evaluate: Sampling = Sampling(temperature=0.0, max_tokens=128)  # the suites decode greedily


class Counts(Strict):
    """How much each stage makes; profiles scale these."""

    proposed: int = Field(8, ge=0)  # new tasks the model writes
    seeds_used: int = Field(8, ge=0)  # seed tasks answered as they are
    samples: int = Field(2, ge=1)  # responses per task (best-of-n)
    # at most this many critiques (and revisions) a stage; None: wherever one can decide
    critiques: int | None = Field(None, ge=0)
    # requests each of the stage's principles answers under its two instructions (the contrast step)
    contrasts: int = Field(8, ge=0)
    # ... each answered at most this many times, both sides, while its check separates no pair of
    # its samples that the quality filters pass (best-of-n on the principle's own signal)
    contrast_samples: int = Field(1, ge=1)
    # respond stops once the answers hold this many filtered best-of-n pairs
    target_pairs: int | None = Field(None, ge=1)
    # ... checking after every this many tasks (None target: every task is answered)
    respond_batch: int = Field(48, ge=1)
    eval_items: int = Field(40, ge=1)  # held-out items per suite (the first ones), at each stage
    # at stage 0 and stage 6, where the run's verdict is read (None: eval_items)
    final_eval_items: int | None = Field(None, ge=1)
    examples_shown: int = Field(4, ge=1)  # examples in each proposer prompt
    # of those, how many the model wrote (from an earlier round)
    pool_examples: int = Field(1, ge=0)
    proposal_rounds: int = Field(2, ge=1)  # proposals come in rounds; later rounds see earlier ones


class RepetitionStop(Strict):
    """vLLM's repetition stop (`repetition_detection`, its names): an answer ends once its last
    `min_count` runs of some pattern length between the two sizes (in tokens) are alike."""

    min_pattern_size: int = Field(4, ge=1)
    max_pattern_size: int = Field(128, ge=1)
    min_count: int = Field(3, ge=2)

    @model_validator(mode="after")
    def _sizes_in_order(self) -> "RepetitionStop":
        if self.min_pattern_size > self.max_pattern_size:
            raise ValueError(
                f"min_pattern_size {self.min_pattern_size} is over max_pattern_size "
                f"{self.max_pattern_size}"
            )
        return self


class SuiteSettings(Strict):
    """What evaluates a run. The dev set (`run`, suites/): every stage, the gate, every choice of a
    setting. The test set (`test`, cai/measuring/benchmarks.py): the base and the final policy only,
    where the run's verdict is read; the gate and the settings never read it."""

    run: list[Literal[SUITES]] = list(SUITES)
    # A dev suite's own cap on new tokens, where it is not `generation.evaluate`'s: a refusal shows in
    # an answer's first sentence, as HarmBench's generation caps it
    run_max_tokens: dict[Literal[SUITES], int] = {}
    test: list[Literal[BENCHMARKS]] = list(BENCHMARKS)
    # the first this many of each benchmark (None: all of them)
    test_items: int | None = Field(None, ge=1)
    # The test set's caps on new tokens: IFEval as lm-eval runs it; each cap is reached by the share
    # of answers eval.json records
    test_max_tokens: dict[Literal[BENCHMARKS], int] = {
        "ifeval": 1280,
        "harmbench": 512,
        "rho_overrefusal": 512,
    }
    # An evaluation answer that loops ends where the loop shows (vLLM's repetition stop), not at the
    # cap: base and policy are answered alike, and every answer's ending is recorded (None: only the
    # cap ends one)
    repetition: RepetitionStop | None = None
    # e.g. arc_challenge, mmlu: needs their data in the local HF cache
    lm_eval_tasks: list[str] = []
    # The win rate's judge is first asked about this many items in both orders; where it names the
    # same position both times for more than max_position_bias of them, the win rate is not
    # measured.
    position_check_items: int = Field(8, ge=1)
    max_position_bias: float = Field(0.5, ge=0, le=1)


class OptimizeSettings(Strict):
    """How a stage compiles its programs' prompts before generating at scale
    (cai/prompts/optimize.py)."""

    optimizer: Literal[
        "none", "bootstrap_fewshot", "bootstrap_random_search", "miprov2", "gepa"
    ] = "bootstrap_fewshot"
    # contrast: one program a principle of the stage that makes pairs, compiled against its contrast
    # yield
    programs: list[Literal["propose", "contrast", "critique_revise", "judge"]] = [
        "propose",
        "contrast",
        "critique_revise",
    ]
    trainset: int = Field(4, ge=1)  # seed tasks the optimizer learns from
    devset: int = Field(4, ge=0)  # other seed tasks the metric is measured on, before and after
    max_demos: int = Field(2, ge=0)  # demos bootstrapped from the program's own passing runs
    # ... and labeled ones filling up to this many, from examples that carry their answer: seed
    # tasks as the proposer's requests (a 135M proposer shown none answered like an assistant
    # instead: README)
    max_labeled_demos: int = Field(3, ge=0)
    candidates: int = Field(4, ge=1)  # bootstrap_random_search: programs tried
    max_calls: int = Field(400, ge=1)  # the cap on LM calls a program's optimization may make
    # ... and on its calls as a share of those the stage's other steps plan
    call_share: float = Field(0.1, gt=0, le=1)
    # bootstrap_fewshot: traces run this many at a time; a wave that passes none stops it
    early_stop_after: int = Field(4, ge=1)

    @model_validator(mode="after")
    def _within_cap(self) -> "OptimizeSettings":
        if (
            self.optimizer in ("bootstrap_fewshot",)
            and 5 * (self.trainset + 2 * self.devset) > self.max_calls
        ):
            raise ValueError(
                f"trainset {self.trainset} and devset {self.devset} need up to "
                f"{5 * (self.trainset + 2 * self.devset)} LM calls, over max_calls {self.max_calls}"
            )
        return self


class PairFilters(Strict):
    """What keeps a pair from teaching a shortcut (cai/data/quality.py's signals,
    cai/data/pairs.py)."""

    # false: pairs as the checker and judge decide them (to measure what the filters do)
    enabled: bool = True
    # the chosen side's relevance to the request, at least
    min_relevance: float = Field(0.35, ge=0, le=1)
    # chosen may be less relevant than rejected by at most this
    max_relevance_drop: float = Field(0.05, ge=0, le=1)
    # chosen words / rejected words, at least (unless a length rule asks for less)
    min_length_ratio: float = Field(0.6, ge=0)
    # a side repeating more of itself than this is never chosen
    max_repetition: float = Field(0.3, ge=0, le=1)
    # pairs of a stage whose chosen side is one and the same text, at most: a stage's refusals all
    # "I'm afraid I can't help with injury prevention." teach one string, not to decline the request
    max_same_chosen: int = Field(4, ge=1)


# A gate limit: a number (the most a score may move), or "interval": it may not move past
# the reference's 95% interval.
Limit = float | Literal["interval"]


class Gate(Strict):
    """What a stage must hold, against the last promoted stage and against the base, to be
    promoted."""

    max_drop: dict[str, Limit] = {}  # a score that may fall at most this much (higher is better)
    max_rise: dict[str, Limit] = {}  # a rate that may rise at most this much (lower is better)
    # continue: the next stage starts from the last promoted adapter
    on_fail: Literal["continue", "stop"] = "continue"

    @model_validator(mode="after")
    def _known_scores(self) -> "Gate":
        for name in (*self.max_drop, *self.max_rise):
            if name not in SCORES and not name.startswith("lm_eval:"):
                raise ValueError(
                    f"unknown score {name!r} (known: {', '.join(SCORES)}, or "
                    "lm_eval:<task>:<metric>)"
                )
        return self


def read_yaml(path: Path) -> tuple[dict, str]:
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(
            f"{path}:{where} is not valid YAML ({getattr(e, 'problem', e)})"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data, text


def validate(model: type[BaseModel], data: dict, path: Path):
    try:
        return model.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"]) or "(top level)"
        more = f" (and {len(e.errors()) - 1} more)" if len(e.errors()) > 1 else ""
        value = (
            f" (got {err['input']!r})"
            if err["type"] != "missing" and not isinstance(err["input"], (dict, list))
            else ""
        )
        msg = err["msg"].removeprefix("Value error, ")
        raise ConfigError(f"{path}: {where}: {msg}{value}{more}") from None


def sha256(text: str | bytes) -> str:
    data = text.encode() if isinstance(text, str) else text
    return hashlib.sha256(data).hexdigest()
