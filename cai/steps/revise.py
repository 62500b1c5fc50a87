"""revise: each critiqued answer rewritten to fix what its critique found."""

from __future__ import annotations

from cai.config.curriculum import StageConfig
from cai.data import principles
from cai.prompts.optimize import compiled
from programs.revise import Reviser


def revise(ctx, st: StageConfig, policy: str, tasks: list[dict]) -> dict:
    """Rewrite each critiqued answer by the principle's revision request."""
    n, make = st.number, compiled(ctx.run, st.number, Reviser, "revise")
    critiques, responses = ctx.run.records(n, "critiques"), ctx.run.records(n, "responses")
    jobs = principles.revision_jobs(critiques, responses, tasks, ctx.constitution.principles)
    out = ctx.run.records(n, "revisions")
    return ctx.jobs(jobs, make, "revision", policy, st.generation.revise, out, f"stage{n}/revise")
