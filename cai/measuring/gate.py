"""The gate: a stage is promoted only if its scores hold against the last promoted stage.

A limit is a number (the most a score may fall, or rise, for a rate where lower is
better) or "interval": the score may not fall (or rise) by more than the measurement's
own noise. Where both stages' answers to the held-out items are on record, that is read
from the paired difference, item by item (cai/measuring/intervals.py, `difference`): the stage fails
when its 95% interval lies wholly on the wrong side of zero. Otherwise the score may not
fall below (or rise above) the reference's 95% interval. The quality suites use
"interval": a relevance drop the measurement can tell from noise stops a stage however
much its compliance rose.

bootstrap.py checks a stage against the last promoted stage's `eval.json` and against
the base's, so a run of small regressions cannot add up unnoticed across stages that
each passed.
"""

from __future__ import annotations

import json

from cai.config.settings import Gate
from cai.measuring.intervals import difference
from cai.store import BASE_NAME, Run, StageError, stage_number


def failures(
    scores: dict, reference: dict, gate: Gate, paired: dict | None = None
) -> tuple[list[str], list[str]]:
    """(why the stage fails, scores the gate names that were not measured). `paired`: score name to
    its paired difference from the reference ({score, low, high, n}), where the items' records
    allow."""
    failed, missing, paired = [], [], paired or {}
    rules = [(name, limit, -1) for name, limit in gate.max_drop.items()] + [
        (name, limit, 1) for name, limit in gate.max_rise.items()
    ]
    for name, limit, direction in rules:
        if name not in scores or name not in reference:
            missing.append(name)
            continue
        now, before = scores[name]["score"], reference[name]["score"]
        change = now - before
        if limit == "interval" and name in paired:
            d = paired[name]
            beyond = (d["high"] if direction < 0 else -d["low"]) < -1e-9
            allowed = (
                f"no {'drop' if direction < 0 else 'rise'} beyond noise; paired difference "
                f"{d['score']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}] over {d['n']} items"
            )
        elif limit == "interval":
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


def paired_differences(
    run: Run, now: int, then: int, scores: dict, reference: dict, gate: Gate
) -> dict:
    """The paired differences (stage `now` minus stage `then`) of the scores the gate limits by
    "interval", where both stages' per-item records are at hand."""
    paired = {}
    for name, limit in {**gate.max_drop, **gate.max_rise}.items():
        if limit == "interval" and name in scores and name in reference:
            diff, how = difference(name, (run, now), (run, then), (scores[name], reference[name]))
            if how == "paired":
                paired[name] = diff
    return paired


def decide(run: Run, n: int, reference: str, gate: Gate) -> list[str]:
    """Stage n's eval.json against the last promoted stage's (`reference`) and the base's: why it
    fails, against which (empty: promoted). The verdict goes to the manifest; where it fails and
    `on_fail` is stop, the run stops there (StageError), the verdict saved."""
    scores = json.loads((run.stage_dir(n) / "eval.json").read_text())
    failed, missing = [], []
    for name in dict.fromkeys([reference, BASE_NAME]):
        m = stage_number(name)
        against = json.loads((run.stage_dir(m) / "eval.json").read_text())
        more_failed, more_missing = failures(
            scores, against, gate, paired_differences(run, n, m, scores, against, gate)
        )
        failed += [f"{f} (against {name})" for f in more_failed]
        missing += [x for x in more_missing if x not in missing]
    run.stage(n).update(
        promoted=not failed, gate={"against": reference, "failed": failed, "not_measured": missing}
    )
    if failed and gate.on_fail == "stop":
        run.save()
        raise StageError(
            f"stage{n}: gate: not promoted ({'; '.join(failed)}); gate.on_fail is stop. Relax the "
            "gate in curriculum.yaml under a new --run name to go on."
        )
    return failed
