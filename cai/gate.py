"""The gate: a stage is promoted only if its scores hold against the last promoted stage.

bootstrap.py checks a stage against the last promoted stage's `eval.json` and against
the base's, so a run of small regressions cannot add up unnoticed across stages that
each passed.
"""

from __future__ import annotations

from cai.config import Gate


def failures(scores: dict, reference: dict, gate: Gate) -> tuple[list[str], list[str]]:
    """(why the stage fails, scores the gate names that were not measured)."""
    failed, missing = [], []
    rules = [(name, limit, -1) for name, limit in gate.max_drop.items()] + [(name, limit, 1) for name, limit in gate.max_rise.items()]
    for name, limit, direction in rules:
        if name not in scores or name not in reference:
            missing.append(name)
            continue
        now, before = scores[name]["score"], reference[name]["score"]
        change = now - before
        if change * direction > limit + 1e-9:
            verb = "fell" if change < 0 else "rose"
            failed.append(f"{name} {verb} from {before:.3f} to {now:.3f} (allowed: {'drop' if direction < 0 else 'rise'} of {limit})")
    return failed, missing
