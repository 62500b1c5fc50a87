"""pairs: the stage's records become preference pairs, less what the guard flagged."""

from __future__ import annotations

from cai.config.curriculum import StageConfig
from cai.data import contrast_yield, quality
from cai.data.pairs import build_pairs
from cai.store import write_jsonl_atomic


def make_pairs(ctx, st: StageConfig, tasks: list[dict]) -> dict:
    """The candidates less what the guard flagged: pairs.jsonl, and the flagged ones in
    safety.jsonl."""
    guard_records = list(ctx.run.records(st.number, "guard"))
    pairs, counts, unsafe = stage_pairs(ctx, st, tasks, guard_records)
    write_jsonl_atomic(ctx.run.stage_dir(st.number) / "safety.jsonl", unsafe)
    write_jsonl_atomic(ctx.run.stage_dir(st.number) / "pairs.jsonl", pairs)
    sources, trust = ctx.trusted(st)
    found = contrast_yield.yields(
        list(ctx.run.records(st.number, "contrasts")),
        ctx.constitution.for_stage(st.number),
        quality.by_id(ctx.run.read(st.number, "quality")),
        st.pair_filters,
    )
    none = {
        f"{pid}_made_none": contrast_yield.why_no_pair(f)
        for pid, f in found.items()
        if not counts.get(f"contrast_{pid}_kept")
    }
    return {**counts, "sources": sources, **trust, "yields": found, **none}


def stage_pairs(ctx, st: StageConfig, tasks: list[dict], guard_records: list[dict] | None):
    """build_pairs over the stage's records: with `guard_records` None, the candidates the guard is
    to see."""
    n, (sources, _) = st.number, ctx.trusted(st)
    names = ("responses", "critiques", "revisions", "judgments")
    records = [list(ctx.run.records(n, name)) for name in names]
    return build_pairs(
        n,
        tasks,
        *records,
        guard_records or (),
        guard_mode="off" if guard_records is None else ctx.guard.mode,
        judge_margin=st.judge_margin,
        quality=quality.by_id(ctx.run.read(n, "quality")),
        filters=st.pair_filters,
        sources=sources,
        contrasts=list(ctx.run.records(n, "contrasts")),
        principles={p.id: p for p in ctx.constitution.principles},
    )
