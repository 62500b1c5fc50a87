"""Compile a program's prompt with a DSPy optimizer, measure it before and after, and
render the compiled prompts exactly as the adapter sends them.

Optimizers (curriculum.yaml `optimize.optimizer`): `bootstrap_fewshot` (the CPU
default: demos from the program's own runs that pass the metric),
`bootstrap_random_search`, `miprov2` (`auto="light"`), `gepa` (the current model as
reflection LM), or `none`.

A stage starts from the previous stage's compiled program where there is one (a warm
start: its demos lead the traces, and it is kept where the new program scores lower),
and measures the starting program on the dev set while the first traces run.
"""

from __future__ import annotations

import inspect
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import dspy
from dspy.utils.callback import BaseCallback
from dspy.utils.exceptions import AdapterParseError, LMInvalidRequestError

from cai.config.curriculum import StageConfig
from cai.config.settings import OptimizeSettings, Sampling
from cai.store import atomic_path
from programs.critique import Critic
from programs.critique_revise import CritiqueAndRevise
from programs.judge import Judge
from programs.propose import Propose
from programs.respond import Responder
from programs.revise import Reviser

# Every program whose prompt a stage may compile, by the name its file in stageN/programs/ has
PROGRAMS = {
    "propose": Propose,
    "respond": Responder,
    "critique": Critic,
    "revise": Reviser,
    "judge": Judge,
}
# programs compiled together, saved as their parts
PARTS = {"critique_revise": ("critique", "revise")}

# LM calls one optimization example costs: critique + revise, and the judge both ways where the
# checker is silent
CALLS_PER_EXAMPLE = {"propose": 1, "contrast": 2, "critique_revise": 4, "judge": 1}


@dataclass
class Compilable:
    """A program to compile: the program, the metric it is compiled against, its examples
    (train first, then dev) and how its LM samples."""

    program: dspy.Module
    metric: Callable
    examples: list[dspy.Example]
    sampling: Sampling


def planned_calls(st: StageConfig) -> int:
    """The LM calls a stage's propose, respond, critique and revise steps plan, at most."""
    tasks = st.counts.seeds_used + st.counts.proposed
    critiques = tasks if st.counts.critiques is None else min(tasks, st.counts.critiques)
    return st.counts.proposed + tasks * st.counts.samples + 2 * critiques


def slice_sizes(st: StageConfig, name: str) -> tuple[int, int, int]:
    """(train examples, dev examples, LM calls allowed) for compiling `name` at this stage: at most
    `call_share` of the calls the stage's other steps plan (and `max_calls`), the slice cut to
    fit."""
    calls = min(st.optimize.max_calls, int(st.optimize.call_share * planned_calls(st)))
    # contrast-<principle>: a contrast's
    per_example = calls // CALLS_PER_EXAMPLE[name.split("-")[0]]
    dev = min(st.optimize.devset, per_example // 3)
    return min(st.optimize.trainset, per_example - 2 * dev), dev, calls


class CallCounter(BaseCallback):
    """Counts the LM calls an optimization makes, and their tokens (its cost, for the manifest)."""

    def __init__(self):
        self.calls = 0
        self.seen: dict[int, tuple] = {}  # id(lm) -> (lm, its history length when first seen)

    def on_lm_start(self, call_id, instance, inputs):
        self.calls += 1
        self.seen.setdefault(id(instance), (instance, len(getattr(instance, "history", []))))

    def tokens(self) -> int:
        total = 0
        for lm, start in self.seen.values():
            for entry in getattr(lm, "history", [])[start:]:
                usage = entry.get("usage") or {}
                total += usage.get("prompt_tokens", 0) + usage.get("completion_tokens", 0)
        return total


class ConcurrentBootstrapFewShot(dspy.BootstrapFewShot):
    """DSPy's BootstrapFewShot with its traces run `wave` at a time instead of one by one (DSPy
    notes it cannot use Evaluate there because it traces each example): with a few requests
    in flight a CPU server idles. It stops once `max_bootstrapped_demos` traces passed the
    metric, or when a whole wave passed none: the first traces then say that no demo will
    pass (the 135M critique + revise, DESIGN.md), and the rest of the budget is not spent.
    Demos are taken in trainset order, so they do not depend on which request returned first.

    Our threads, each under the caller's DSPy context, not DSPy's ParallelExecutor: that one
    clears tqdm's global list of bars on entry, which raced with a second optimization
    running beside it (a KeyError in tqdm, seen here)."""

    def __init__(
        self,
        *,
        metric,
        max_bootstrapped_demos: int,
        max_labeled_demos: int,
        num_threads: int,
        wave: int,
    ):
        super().__init__(
            metric=metric,
            max_bootstrapped_demos=max_bootstrapped_demos,
            max_labeled_demos=max_labeled_demos,
            max_rounds=1,
        )
        self.num_threads, self.wave = num_threads, max(1, wave)
        self.stopped, self.traced, self.passed = "trainset exhausted", 0, 0

    def _bootstrap(self, *, max_bootstraps=None):
        wanted = max_bootstraps or self.max_bootstrapped_demos
        self.name2traces = {name: [] for name in self.name2predictor}
        context = {k: dspy.settings.get(k) for k in ("lm", "adapter", "callbacks")}
        passed = set()
        for start in range(0, len(self.trainset), self.wave):
            wave = list(enumerate(self.trainset))[start : start + self.wave]
            with ThreadPoolExecutor(max_workers=max(1, min(self.num_threads, len(wave)))) as pool:
                traced = list(pool.map(lambda item: self._trace(item[1], context), wave))
            self.traced += len(wave)
            for (index, _), traces in zip(wave, traced):
                if traces is not None:
                    passed.add(index)
                    for name, demos in traces.items():
                        self.name2traces[name].extend(demos)
            if len(passed) >= wanted:
                self.stopped = "enough demos"
                break
            if not any(traces is not None for traces in traced):
                self.stopped = f"none of {len(wave)} traces passed"
                break
        self.passed = len(passed)
        # Labeled demos fill the rest, from examples that carry every output (a seed task as the
        # proposer's)
        outputs = {
            name for _, p in self.student.named_predictors() for name in p.signature.output_fields
        }
        self.validation = [
            x for i, x in enumerate(self.trainset) if i not in passed and outputs <= set(x.keys())
        ]

    def _trace(self, example, context: dict) -> dict | None:
        """The teacher's trace of one example, as demos by predictor name, where it passes the
        metric. A copy of the teacher, without the example among its demos (it would copy it), per
        trace: the threads share nothing they change."""
        teacher = self.teacher.deepcopy()
        for _, predictor in teacher.named_predictors():
            predictor.demos = [d for d in predictor.demos if d != example]
        names = {id(predictor): name for name, predictor in teacher.named_predictors()}
        with dspy.context(**context, trace=[]):
            try:
                prediction = teacher(**example.inputs())
            # this reply or request, not the server
            except (AdapterParseError, LMInvalidRequestError):
                return None
            trace = list(dspy.settings.trace)
            if not self.metric(example, prediction, trace):
                return None
        demos: dict[str, list] = {}
        for predictor, inputs, outputs in trace:
            if (name := names.get(id(predictor))) is not None:
                # the last call of each predictor
                demos[name] = [dspy.Example(augmented=True, **inputs, **outputs)]
        return demos


def make_optimizer(settings: OptimizeSettings, metric, lm: dspy.LM, concurrency: int, seed: int):
    """The optimizer; `lm`, the current model, also writes MIPROv2's instructions and GEPA's
    reflections."""
    demos = settings.max_demos
    if settings.optimizer == "bootstrap_fewshot":
        return ConcurrentBootstrapFewShot(
            metric=metric,
            max_bootstrapped_demos=demos,
            max_labeled_demos=settings.max_labeled_demos,
            num_threads=concurrency,
            wave=settings.early_stop_after,
        )
    if settings.optimizer == "bootstrap_random_search":
        return dspy.BootstrapFewShotWithRandomSearch(
            metric=metric,
            max_bootstrapped_demos=demos,
            max_labeled_demos=0,
            num_candidate_programs=settings.candidates,
            num_threads=concurrency,
        )
    if settings.optimizer == "miprov2":
        return dspy.MIPROv2(
            metric=metric,
            prompt_model=lm,
            task_model=lm,
            auto="light",
            num_threads=concurrency,
            seed=seed,
            max_bootstrapped_demos=demos,
            max_labeled_demos=0,
        )
    if settings.optimizer == "gepa":

        def feedback_metric(gold, pred, trace=None, pred_name=None, pred_trace=None):
            return float(metric(gold, pred, None))

        return dspy.GEPA(
            metric=feedback_metric,
            max_metric_calls=settings.max_calls,
            reflection_lm=lm,
            num_threads=concurrency,
            seed=seed,
        )
    raise ValueError(f"unknown optimizer {settings.optimizer!r}")


def score(
    program: dspy.Module, devset: list[dspy.Example], metric, concurrency: int, context: dict
) -> float | None:
    """The metric's mean over `devset`, in [0, 1]; a reply that does not parse scores 0.

    Our threads, each under `context` (lm, adapter, callbacks), instead of dspy.Evaluate: its
    ParallelExecutor clears tqdm's global list of bars on entry, which raced with the traces'
    executor running beside it (a KeyError in tqdm, seen here).
    """
    if not devset:
        return None

    def one(example) -> float:
        with dspy.context(**context):
            try:
                return float(metric(example, program(**example.inputs())))
            # this reply or request, not the server
            except (AdapterParseError, LMInvalidRequestError):
                return 0.0

    with ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(devset)))) as pool:
        return round(sum(pool.map(one, devset)) / len(devset), 4)


def compile_program(
    program: dspy.Module,
    metric,
    trainset: list[dspy.Example],
    devset: list[dspy.Example],
    settings: OptimizeSettings,
    lm: dspy.LM,
    adapter: dspy.Adapter,
    concurrency: int,
    seed: int,
    start: dspy.Module | None = None,
) -> tuple[dspy.Module, dict]:
    """The compiled program, and what compiling it cost and changed on `devset`.

    `start`, the previous stage's compiled program (else `program` as it is), is what
    "before" measures, beside the first traces; it teaches the traces (the optimizer's
    teacher) and is kept where the new program scores lower on `devset`.
    """
    counter = CallCounter()
    began = time.perf_counter()
    warm = start is not None
    start = start or program.deepcopy()
    # the last stage's program, or a principle's exemplars
    teaches = warm or any(p.demos for _, p in start.named_predictors())
    if teaches:
        # a teacher as it is: DSPy would otherwise reset it and give it labeled demos
        start._compiled = True
    context = dict(lm=lm, adapter=adapter, callbacks=[counter])
    with dspy.context(**context), ThreadPoolExecutor(max_workers=1) as pool:
        # beside the first traces
        before = pool.submit(score, start, devset, metric, concurrency, context)
        optimizer = make_optimizer(settings, metric, lm, concurrency, seed)
        teacher = (
            {"teacher": start}
            if teaches and "teacher" in inspect.signature(optimizer.compile).parameters
            else {}
        )
        compiled = optimizer.compile(program, trainset=trainset, **teacher)
        before = before.result()
        # no trace passed: nothing new to measure, the start stays
        if getattr(optimizer, "passed", None) == 0:
            kept, after, how = start, before, "no trace passed: the start"
        else:
            after = score(compiled, devset, metric, concurrency, context)
            kept, how = compiled, "new"
    # never worse than what it replaces
    if kept is compiled and before is not None and after is not None and after < before:
        kept, after, how = start, before, "the start: it scored higher"
    demos = sum(len(p.demos) for _, p in kept.named_predictors())
    return kept, {
        "optimizer": settings.optimizer,
        "before": before,
        "after": after,
        "demos": demos,
        "warm_start": warm,
        "kept": how,
        "train": len(trainset),
        "dev": len(devset),
        "traced": getattr(optimizer, "traced", len(trainset)),
        "stopped": getattr(optimizer, "stopped", None),
        "lm_calls": counter.calls,
        "tokens": counter.tokens(),
        "seconds": round(time.perf_counter() - began, 1),
    }


def render(name: str, program: dspy.Module, adapter: dspy.Adapter) -> str:
    """The program's prompt as the adapter formats it: instructions, demos, and the input
    fields shown as {placeholders}."""
    parts = [f"## {name}", ""]
    for pred_name, predictor in program.named_predictors():
        signature = predictor.signature
        inputs = {field: f"{{{field}}}" for field in signature.input_fields}
        messages = adapter.format(signature, predictor.demos, inputs)
        parts += [f"### {pred_name} ({len(predictor.demos)} demos)", ""]
        for m in messages:
            content = m["content"] if isinstance(m["content"], str) else str(m["content"])
            parts += [f"**{m['role']}**", "", "```text", content, "```", ""]
    return "\n".join(parts)


def save(folder: Path, name: str, program: dspy.Module) -> None:
    """The compiled `program` as `folder/<name>.json` (critique + revise: as its two parts), each
    atomically."""
    for part, sub in zip(
        PARTS.get(name, (name,)), [program.critic, program.reviser] if name in PARTS else [program]
    ):
        with atomic_path(folder / f"{part}.json") as tmp:
            sub.save(str(tmp))


def saved(folder: Path, name: str, make_program=None) -> dspy.Module | None:
    """The program `save` wrote to `folder` under `name`, loaded (into `make_program()` where the
    name is not one of PROGRAMS: a principle's contrast); None where it wrote none."""
    parts = PARTS.get(name, (name,))
    if not all((folder / f"{part}.json").exists() for part in parts):
        return None
    if name in PARTS:
        program = CritiqueAndRevise()
        program.critic, program.reviser = (
            load(Critic, folder / "critique.json")(),
            load(Reviser, folder / "revise.json")(),
        )
        return program
    return load(make_program or PROGRAMS[name], folder / f"{name}.json")()


def compiled(run, n: int, make_program, name: str):
    """`make_program`, with the prompt stage n's optimize step compiled for `name` loaded, where it
    saved one."""
    return load(make_program, run.stage_dir(n) / "programs" / f"{name}.json")


def load(make_program, path: Path):
    """A factory for `make_program()` with the compiled state at `path` loaded, if there is one."""
    if not path.exists():
        return make_program

    def make():
        program = make_program()
        program.load(str(path))
        return program

    return make
