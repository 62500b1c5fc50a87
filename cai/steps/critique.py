"""critique: first answers critiqued against a principle, where a revision can become a pair."""

from __future__ import annotations

from cai.config.curriculum import StageConfig
from cai.data import principles
from cai.prompts.optimize import compiled
from programs.critique import Critic


def critique(ctx, st: StageConfig, policy: str, tasks: list[dict]) -> dict:
    """Critique first answers against the principle drawn for each task, where the revision can
    become a pair (cai/data/principles.py), at most `counts.critiques`."""
    n, make = st.number, compiled(ctx.run, st.number, Critic, "critique")
    yields = principles.revision_yields(
        *(ctx.run.earlier(n, name) for name in ("tasks", "revisions", "pairs"))
    )
    responses, drawn_from = ctx.run.records(n, "responses"), ctx.constitution.for_stage(n)
    judge_trusted = "judge" in ctx.trusted(st)[0]
    jobs, skipped = principles.critique_jobs(
        tasks, responses, drawn_from, ctx.seed, yields, judge_trusted, st.counts.critiques
    )
    out = ctx.run.records(n, "critiques")
    stats = ctx.jobs(
        jobs, make, "critique", policy, st.generation.critique, out, f"stage{n}/critique"
    )
    return {**stats, **skipped}
