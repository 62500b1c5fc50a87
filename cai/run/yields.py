"""What each pair source and each principle of the constitution yielded, stage by stage: the
report's "Pairs by source and by principle" and "Principles" sections."""

from __future__ import annotations

from collections import Counter

from cai.store import Run


def principle_rates(data: dict) -> dict[str, dict]:
    """Per principle: critiques written, and revision pairs in which its revision was chosen
    (stages whose critiques are on disk)."""
    written, won = Counter(), Counter()
    for recs in data["critiques"].values():
        written.update(c["principle_id"] for c in recs if c.get("ok"))
    for n, recs in data["pairs"].items():
        if n not in data["critiques"]:
            continue
        for p in recs:
            prov = p["provenance"]
            if prov["source"] == "revision" and prov["chosen"]["record_id"].endswith("-v"):
                won[prov["principle_id"]] += 1
    return {
        pid: {
            "critiques": written[pid],
            "revision_chosen": won[pid],
            "rate": round(won[pid] / written[pid], 3) if written[pid] else 0.0,
        }
        for pid in sorted(written)
    }


def by_principle(run: Run, data: dict, stage_info: dict, trained: list[int]) -> list[str]:
    """The pairs by source and by principle, stage by stage: each principle's contrast yield
    (requests answered, pairs its check confirmed, pairs kept after the filters and the guard), its
    revisions kept, and why a principle of the stage made none."""
    pairs = [p for n in trained for p in data["pairs"].get(n, [])]
    from_principles = sum(p["provenance"]["source"] in ("contrast", "revision") for p in pairs)
    lines = [
        "",
        "## Pairs by source and by principle",
        "",
        f"Of {len(pairs)} pairs, {from_principles} ({from_principles / len(pairs):.0%}) come from "
        "a principle of the constitution (its contrast, or a revision by it); the rest are "
        "best-of-n samples a rule checker separated."
        if pairs
        else "No pair was kept.",
        "",
        "| stage | principle | contrast requests | its check separated | kept (contrast) | kept "
        "(revision) | why none |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    constitution = run.manifest.get("snapshot", {}).get("constitution", {}).get("principles", [])
    for n in trained:
        counts, made = stage_info.get(f"stage{n}", {}).get("steps", {}), data["pairs"].get(n, [])
        asked = Counter(r["principle_id"] for r in run.read(n, "contrasts") if r.get("ok"))
        pair_counts = counts.get("pairs", {})
        for principle in [c["id"] for c in constitution if n in c["stages"]]:
            kept = sum(
                p["provenance"]["source"] == "contrast"
                and p["provenance"]["principle_id"] == principle
                for p in made
            )
            revised = sum(
                p["provenance"]["source"] == "revision"
                and p["provenance"]["principle_id"] == principle
                for p in made
            )
            separated = (
                asked[principle] - pair_counts.get(f"contrast_{principle}_not_separated", 0)
                if asked[principle]
                else 0
            )
            why = counts.get("contrast", {}).get(f"{principle}_makes_none", "")
            why = why or pair_counts.get(f"{principle}_made_none", "")  # with its figures
            if not why and asked[principle] and not kept:
                why = (
                    "its check separated none of the two answers"
                    if not separated
                    else "the quality filters or the guard dropped every pair its check confirmed"
                )
            lines.append(
                f"| {n} | {principle} | {asked[principle] or '-'} | "
                f"{separated if asked[principle] else '-'} | {kept} | {revised} | "
                f"{why or ('-' if kept or revised else 'no revision became a pair')} |"
            )
    by_source = Counter(p["provenance"]["source"] for p in pairs)
    return (
        lines
        + [
            "",
            "By source over the run: "
            + ", ".join(f"{k} {v}" for k, v in sorted(by_source.items()))
            + ".",
        ]
        if pairs
        else lines
    )
