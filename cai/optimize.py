"""Compile a program's prompt with a DSPy optimizer, measure it before and after, and
render the compiled prompts exactly as the adapter sends them.

Optimizers (curriculum.yaml `optimize.optimizer`): `bootstrap_fewshot` (the CPU
default: demos from the program's own runs that pass the metric),
`bootstrap_random_search`, `miprov2` (`auto="light"`), `gepa` (the current model as
reflection LM), or `none`.
"""

from __future__ import annotations

import time
from pathlib import Path

import dspy
from dspy.utils.callback import BaseCallback

from cai.config import OptimizeSettings


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


def make_optimizer(settings: OptimizeSettings, metric, lm: dspy.LM, concurrency: int, seed: int):
    """The optimizer; `lm`, the current model, also writes MIPROv2's instructions and GEPA's reflections."""
    demos = settings.max_demos
    if settings.optimizer == "bootstrap_fewshot":
        return dspy.BootstrapFewShot(metric=metric, max_bootstrapped_demos=demos, max_labeled_demos=0, max_rounds=1)
    if settings.optimizer == "bootstrap_random_search":
        return dspy.BootstrapFewShotWithRandomSearch(metric=metric, max_bootstrapped_demos=demos, max_labeled_demos=0,
                                                     num_candidate_programs=settings.candidates, num_threads=concurrency)
    if settings.optimizer == "miprov2":
        return dspy.MIPROv2(metric=metric, prompt_model=lm, task_model=lm, auto="light", num_threads=concurrency, seed=seed,
                            max_bootstrapped_demos=demos, max_labeled_demos=0)
    if settings.optimizer == "gepa":
        def feedback_metric(gold, pred, trace=None, pred_name=None, pred_trace=None):
            return float(metric(gold, pred, None))

        return dspy.GEPA(metric=feedback_metric, max_metric_calls=settings.max_calls, reflection_lm=lm,
                         num_threads=concurrency, seed=seed)
    raise ValueError(f"unknown optimizer {settings.optimizer!r}")


def score(program: dspy.Module, devset: list[dspy.Example], metric, concurrency: int) -> float | None:
    """The metric's mean over `devset`, in [0, 1]."""
    if not devset:
        return None
    result = dspy.Evaluate(devset=devset, metric=metric, num_threads=concurrency, display_progress=False,
                           provide_traceback=False, max_errors=len(devset) + 1)(program)
    return round(float(result.score) / 100, 4)


def compile_program(program: dspy.Module, metric, trainset: list[dspy.Example], devset: list[dspy.Example],
                    settings: OptimizeSettings, lm: dspy.LM, adapter: dspy.Adapter, concurrency: int, seed: int
                    ) -> tuple[dspy.Module, dict]:
    """The compiled program, and what compiling it cost and changed on `devset`."""
    counter = CallCounter()
    start = time.perf_counter()
    with dspy.context(lm=lm, adapter=adapter, callbacks=[counter]):
        before = score(program, devset, metric, concurrency)
        optimizer = make_optimizer(settings, metric, lm, concurrency, seed)
        compiled = optimizer.compile(program, trainset=trainset)
        after = score(compiled, devset, metric, concurrency)
    demos = sum(len(p.demos) for _, p in compiled.named_predictors())
    return compiled, {"optimizer": settings.optimizer, "before": before, "after": after, "demos": demos,
                      "train": len(trainset), "dev": len(devset), "lm_calls": counter.calls, "tokens": counter.tokens(),
                      "seconds": round(time.perf_counter() - start, 1)}


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


def load(make_program, path: Path):
    """A factory for `make_program()` with the compiled state at `path` loaded, if there is one."""
    if not path.exists():
        return make_program

    def make():
        program = make_program()
        program.load(str(path))
        return program

    return make
