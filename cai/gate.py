"""The gate: a stage is promoted only if its scores hold against the last promoted stage.

A limit is a number (the most a score may fall, or rise, for a rate where lower is
better) or "interval": the score may not fall below (or rise above) the reference's
95% interval. The quality suites use the latter: a relevance drop larger than the
measurement's own noise stops a stage however much its compliance rose.

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
        if limit == "interval":
            bound = reference[name]["low"] if direction < 0 else reference[name]["high"]
            beyond = (now - bound) * direction > 1e-9
            allowed = f"within the reference's interval [{reference[name]['low']:.3f}, {reference[name]['high']:.3f}]"
        else:
            beyond = change * direction > limit + 1e-9
            allowed = f"{'drop' if direction < 0 else 'rise'} of {limit}"
        if beyond:
            verb = "fell" if change < 0 else "rose"
            failed.append(f"{name} {verb} from {before:.3f} to {now:.3f} (allowed: {allowed})")
    return failed, missing
