"""A rerun beside the run it came from: the report's "Against" section, this run's scores minus
the original's at the stage it reran, paired item by item, the pairs by principle, and each
principle the rerun added, dropped or changed beside the measure its check reads (for a words
check, the geometric mean's ratio too: the mean of words swings with the few answers that loop to
their cap, by tens of words at 40 items)."""

from __future__ import annotations

import math
from collections import Counter

from cai.config.constitution import Constitution
from cai.data.constraints import keeps
from cai.data.contrast_yield import check_text
from cai.measuring.intervals import difference, mean_interval, paired
from cai.measuring.verdict import TEST, read_json as _read_json
from cai.store import Run, read_jsonl


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
    return lines + [""] + changed_principles(run, original, n, made)


# The dev score each check's signal moves, and which way the principle moves it
CHECK_MEASURE = {
    "words": "length_words",
    "refusal": "harmlessness_refusal",
    "compliance": "over_refusal",
    "rule": "instruction_following",
    "relevance": "relevance",
    "repetition": "repetition",
    "boilerplate": "boilerplate",
}


def own_rule_moved(rule: dict, run: Run, original: Run, n: int) -> str:
    """How often the instruction-following dev answers keep a principle's own rule, which their
    requests never asked for (items asking for a rule of its kind left out), this run minus the
    original, paired item by item."""

    def kept(r: Run) -> dict[str, float]:
        path = r.stage_dir(n) / "eval" / "instruction_following.jsonl"
        rows = read_jsonl(path) if path.exists() else []
        return {
            row["id"]: float(keeps(rule, row["doc"]["prompt"], row["response"]))
            for row in rows
            if rule["instruction_id"] not in row["doc"]["instruction_id_list"]
        }

    ours, theirs = kept(run), kept(original)
    shared = sorted(set(ours) & set(theirs))
    if not shared:
        return "-"
    diff = mean_interval([ours[k] - theirs[k] for k in shared])
    share = sum(ours[k] for k in shared) / len(shared), sum(theirs[k] for k in shared) / len(shared)
    return (
        f"keeps {rule['instruction_id']} {share[0]:.2f} against {share[1]:.2f} of {len(shared)} "
        f"instruction-following answers, {diff['score']:+.3f} [{diff['low']:+.3f}, "
        f"{diff['high']:+.3f}] (paired)"
    )


def changed_principles(run: Run, original: Run, n: int, made: list[Counter]) -> list[str]:
    """Each principle of stage n the rerun added, dropped or changed: the pairs it made in each run
    and the paired difference of the dev score its check reads (this run minus the original)."""
    ours, theirs = (
        {
            p.id: p
            for p in Constitution.model_validate(r.manifest["snapshot"]["constitution"]).for_stage(
                n
            )
        }
        for r in (run, original)
    )
    rows = []
    for pid in sorted(set(ours) | set(theirs)):
        p, q = ours.get(pid), theirs.get(pid)
        if p == q:
            continue
        how = "added" if q is None else "dropped" if p is None else "changed"
        check = (p or q).check
        measure = CHECK_MEASURE.get(check.signal) if check else None
        moved = "-"
        scores = [_read_json(r.stage_dir(n) / "eval.json") for r in (run, original)]
        if check and check.rule:
            moved = own_rule_moved(check.own_rule(), run, original, n)
        elif measure and all(measure in s for s in scores):
            diff, kind = difference(
                measure, (run, n), (original, n), (scores[0][measure], scores[1][measure])
            )
            moved = (
                f"{measure} {diff['score']:+.3f} [{diff['low']:+.3f}, {diff['high']:+.3f}] ({kind})"
            )
        if (
            check
            and check.signal == "words"
            and (log := paired("length_log", (run, n), (original, n)))
        ):
            low, score, high = (math.exp(log[k]) for k in ("low", "score", "high"))
            moved += f"; length x{score:.2f} [x{low:.2f}, x{high:.2f}] (geometric mean, paired)"
        rows.append(
            f"| {how}: {pid} | {check_text(p or q) if check else 'no check'} | {made[0][pid]} | "
            f"{made[1][pid]} | {moved} |"
        )
    if not rows:
        return []
    return [
        "What each principle the rerun added, dropped or changed made, and the dev score its check "
        "reads, this run minus the original, paired:",
        "",
        "| principle | check | pairs (this run) | pairs (original) | its measure moved |",
        "| --- | --- | --- | --- | --- |",
        *rows,
        "",
    ]
