"""quality: every answer's relevance, repetition, length and boilerplate, measured once."""

from __future__ import annotations

from cai.config.curriculum import StageConfig
from cai.data import quality
from cai.store import write_jsonl_atomic


def measure_quality(ctx, st: StageConfig, tasks: list[dict]) -> dict:
    """Every answer's, revision's and contrast side's quality signals: the pair filters and the
    report read them."""
    answers = [ctx.run.records(st.number, name) for name in ("responses", "revisions", "contrasts")]
    rows = quality.measure(tasks, *answers, quality.embedder(ctx.embedding_model))
    write_jsonl_atomic(ctx.run.stage_dir(st.number) / "quality.jsonl", rows)
    return quality.summary(rows)
