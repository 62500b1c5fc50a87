"""The evaluation signals the programs' prompts are compiled against (DSPy metrics).

Each metric is `metric(example, prediction, trace=None)`: a score in [0, 1] when a
program is evaluated, pass or fail (`trace` given) while an optimizer picks demos.
"""

from __future__ import annotations

from typing import Callable

from cai.data.verdicts import checker_verdict
from programs.judge import both_orders
from programs.propose import clean_task


def proposal_metric(closest: Callable[[str], float], min_novelty: float = 0.3):
    """Self-instruct: the reply holds a usable task, and it is novel (1 - max ROUGE-L against the
    pool)."""

    def metric(example, prediction, trace=None):
        request = clean_task(prediction.request or "")
        novelty = 0.0 if request is None else 1.0 - closest(request)
        return novelty >= min_novelty if trace is not None else round(novelty, 4)

    return metric


def revision_metric(judge: Callable[..., str | None] | None):
    """Critique + revise: the revision changes the answer and keeps the task's rule where the
    checker decides (else the judge prefers it to the original in both orders).
    `judge(**inputs)` (the Judge program's inputs) returns "A", "B" or None. Safety is the
    guard's, where data enters training (the pairs step), not the metric's."""

    def metric(example, prediction, trace=None):
        revision = (prediction.revision or "").strip()
        ok = bool(revision) and revision != example.response.strip()
        if ok:
            task = {"prompt": example.request, "constraint": example.constraint}
            verdict = checker_verdict(task, example.response, revision)
            if verdict is None and judge is not None:
                asked = both_orders(
                    {"request": example.request, "principle": example.principle},
                    example.response,
                    revision,
                )
                verdict = (
                    "revision"
                    if (judge(**asked["ab"]), judge(**asked["ba"])) == ("B", "A")
                    else None
                )
            ok = verdict == "revision"
        return ok if trace is not None else float(ok)

    return metric


def judge_metric(example, prediction, trace=None):
    """The judge names the side known to be better (the one that keeps a checkable rule the other
    breaks)."""
    right = prediction.better == example.better
    return right if trace is not None else float(right)
