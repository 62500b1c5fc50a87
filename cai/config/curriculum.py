"""curriculum.yaml, typed and strict: unknown keys, wrong types and inconsistent values are
refused with one line that names the file and the field.

`curriculum.yaml` holds `defaults` (what every stage shares), `profiles` (model, serving and
counts per hardware profile) and six `stages` that state only what differs. `resolve_stage`
merges the three for one stage, in that order. The settings themselves are cai/config/settings.py's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from cai.config.constitution import Constitution
from cai.config.machine import GPUPlan, GuardSettings, ServeConfig, Speed
from cai.config.settings import (
    PAIR_SOURCES,
    STAGE_TYPES,
    ConfigError,
    Counts,
    Gate,
    Generation,
    OptimizeSettings,
    PairFilters,
    Strict,
    SuiteSettings,
    TrainSettings,
    read_yaml,
    sha256,
    validate,
)


class StageSettings(Strict):
    """What a stage may override; anything left out comes from profile, then defaults."""

    counts: Counts | None = None
    train: TrainSettings | None = None
    generation: Generation | None = None
    constraints: bool | None = None  # attach an IFEval-checkable constraint to each task
    dedupe_threshold: float | None = Field(None, gt=0, le=1)  # ROUGE-L above this drops a task
    # the judge's least margin, in each order, to keep its pair
    judge_margin: float | None = Field(None, ge=0, lt=1)
    pair_sources: list[Literal[PAIR_SOURCES]] | None = None  # the mix of pairs this stage trains on
    # judge pairs only where its measured agreement reaches this
    judge_min_agreement: float | None = Field(None, ge=0, le=1)
    pair_filters: PairFilters | None = None
    suites: SuiteSettings | None = None
    gate: Gate | None = None
    optimize: OptimizeSettings | None = None


class Stage(StageSettings):
    type: Literal[STAGE_TYPES]
    description: str = Field(min_length=10)  # the kind of task, as the proposer is told
    seeds: list[str] = Field(min_length=1)

    @field_validator("seeds")
    @classmethod
    def _no_empty_seed(cls, v: list[str]) -> list[str]:
        if any(not s.strip() for s in v):
            raise ValueError("a seed task is empty")
        return v


class Profile(StageSettings):
    model: str  # a folder, a hub name, or embedded:smollm2-135m-instruct
    adapter: Literal["plain", "chat"] = "plain"  # plain: PlainAdapter for small models
    concurrency: int = Field(16, ge=1)  # requests in flight, so the engine batches them
    # a request longer than this counts as a hung server
    request_timeout_s: float = Field(300, gt=0)
    # restarts of a dead or hung server, per stage, before the run stops
    server_restarts: int = Field(2, ge=0)
    trust_remote_code: bool = False
    # The system message of every turn the policy is trained and measured in: the pairs' prompt, the
    # dev suites, the test set (programs/respond.py). None: the chat template's own default, what
    # lm-eval's tasks and a chat client send.
    system_prompt: str | None = Field(None, min_length=1)
    serve: ServeConfig = ServeConfig()
    guard: GuardSettings = GuardSettings()
    # relevance (cai/data/quality.py): a sentence-transformers folder or hub name
    embedding_model: str = "embedded:all-minilm-l6-v2"
    # the GPU machine's memory, price and throughputs: the memory plan and the cost plan
    gpu: GPUPlan | None = None
    # without a gpu section: the throughputs the expected duration is estimated from
    speed: Speed | None = None


class Defaults(Strict):
    counts: Counts = Counts()
    train: TrainSettings = TrainSettings()
    generation: Generation = Generation()
    constraints: bool = True
    dedupe_threshold: float = Field(0.7, gt=0, le=1)  # as Self-Instruct did
    judge_margin: float = Field(0.2, ge=0, lt=1)
    pair_sources: list[Literal[PAIR_SOURCES]] = ["best_of_n", "revision"]
    judge_min_agreement: float = Field(0.75, ge=0, le=1)
    pair_filters: PairFilters = PairFilters()
    suites: SuiteSettings = SuiteSettings()
    gate: Gate = Gate()
    optimize: OptimizeSettings = OptimizeSettings()


class Curriculum(Strict):
    seed: int = 0
    defaults: Defaults = Defaults()
    profiles: dict[str, Profile] = Field(min_length=1)
    stages: list[Stage] = Field(min_length=6, max_length=6)

    @model_validator(mode="after")
    def _stage_order(self) -> "Curriculum":
        types = tuple(s.type for s in self.stages)
        if types != STAGE_TYPES:
            raise ValueError(f"stages must be, in order: {', '.join(STAGE_TYPES)}")
        return self


class StageConfig(Strict):
    """One stage with defaults, profile and stage overrides merged: what the steps read."""

    number: int
    type: str
    description: str
    seeds: list[str]
    counts: Counts
    train: TrainSettings
    generation: Generation
    constraints: bool
    dedupe_threshold: float
    judge_margin: float
    pair_sources: list[str]
    judge_min_agreement: float
    pair_filters: PairFilters
    suites: SuiteSettings
    gate: Gate
    optimize: OptimizeSettings


def _merge(base: BaseModel, *overrides: BaseModel | None) -> BaseModel:
    """`base` with the fields each override sets explicitly, nested models merged too."""

    def deep(into: dict, update: dict) -> dict:
        for k, v in update.items():
            into[k] = (
                deep(into[k], v) if isinstance(v, dict) and isinstance(into.get(k), dict) else v
            )
        return into

    merged = base.model_dump()
    for o in overrides:
        if o is not None:
            merged = deep(merged, o.model_dump(exclude_unset=True))
    return type(base).model_validate(merged)


def resolve_stage(cur: Curriculum, profile: Profile, number: int) -> StageConfig:
    stage = cur.stages[number - 1]
    d = cur.defaults

    def pick(name):
        for source in (stage, profile):
            value = getattr(source, name)
            if value is not None:
                return value
        return getattr(d, name)

    return StageConfig(
        number=number,
        type=stage.type,
        description=stage.description,
        seeds=stage.seeds,
        counts=_merge(d.counts, profile.counts, stage.counts),
        train=_merge(d.train, profile.train, stage.train),
        generation=_merge(d.generation, profile.generation, stage.generation),
        constraints=pick("constraints"),
        dedupe_threshold=pick("dedupe_threshold"),
        judge_margin=pick("judge_margin"),
        pair_sources=pick("pair_sources"),
        judge_min_agreement=pick("judge_min_agreement"),
        pair_filters=_merge(d.pair_filters, profile.pair_filters, stage.pair_filters),
        suites=_merge(d.suites, profile.suites, stage.suites),
        gate=_merge(d.gate, profile.gate, stage.gate),
        optimize=_merge(d.optimize, profile.optimize, stage.optimize),
    )


# --- loading -----------------------------------------------------------------------


def load_curriculum(path: Path) -> tuple[Curriculum, str]:
    data, text = read_yaml(path)
    return validate(Curriculum, data, path), sha256(text)


def check_together(con: Constitution, cur: Curriculum, con_path: Path) -> None:
    """Every stage needs at least one principle to critique against."""
    for n in range(1, len(cur.stages) + 1):
        if not con.for_stage(n):
            raise ConfigError(f"{con_path}: principles: no principle lists stage {n} in its stages")
