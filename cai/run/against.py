"""A rerun beside the run it came from: the report's "Against" section, this run's scores minus
the original's at the stage it reran, paired item by item, and the pairs by principle."""

from __future__ import annotations

from collections import Counter

from cai.measuring.intervals import difference
from cai.measuring.verdict import TEST, read_json as _read_json
from cai.store import Run


def side_by_side(run: Run, original: Run, origin: dict, names: list[str]) -> list[str]:
    """This rerun's scores next to the run it came from, at the stage it reran: the dev suites, the
    test set where both tested there, and the pairs by principle."""
    n = origin["stage"]
    lines = [
        f"## Against `{original.root.name}`",
        "",
        f"This run reran stage {n} of `{origin['run']}` under a changed "
        f"{'; '.join(origin.get('changed', ['constitution']))}, from its "
        f"`{origin.get('first_step', 'contrast')}` step on; the stages before it, and the steps "
        "before that, are shared. The difference is this run's minus the original's, paired item "
        "by item where the records are at hand.",
        "",
        f"| stage {n} | this run | original | difference |",
        "| --- | --- | --- | --- |",
    ]
    for file, shown in (("eval.json", names), ("test.json", list(TEST))):
        ours, theirs = _read_json(run.stage_dir(n) / file), _read_json(original.stage_dir(n) / file)
        for name in (s for s in shown if s in ours or s in theirs):
            cells = [
                f"{e[name]['score']:.2f} [{e[name]['low']:.2f}, {e[name]['high']:.2f}]"
                if name in e
                else "-"
                for e in (ours, theirs)
            ]
            if name in ours and name in theirs:
                diff, how = difference(name, (run, n), (original, n), (ours[name], theirs[name]))
                cells.append(
                    f"{diff['score']:+.3f} [{diff['low']:+.3f}, {diff['high']:+.3f}] ({how})"
                )
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    counts = [r.stage(n).get("steps", {}).get("pairs", {}) for r in (run, original)]
    lines.append("| pairs | " + " | ".join(str(c.get("pairs", "-")) for c in counts) + " | |")
    lines.append(
        "| dropped by quality filters | "
        + " | ".join(
            str(sum(v for k, v in c.items() if k.startswith("dropped_filter"))) for c in counts
        )
        + " | |"
    )
    made = [
        Counter(
            p["provenance"]["principle_id"] or f"({p['provenance']['source']}, no principle)"
            for p in r.read(n, "pairs")
        )
        for r in (run, original)
    ]
    for principle in sorted(set(made[0]) | set(made[1])):
        lines.append(f"| pairs: {principle} | {made[0][principle]} | {made[1][principle]} | |")
    return lines + [""]
