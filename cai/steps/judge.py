"""judge: original against revision, and the two sides of a contrast whose principle's check is
the judge, in both orders, where the judge is trusted."""

from __future__ import annotations

from cai.config.curriculum import StageConfig
from cai.data import contrast as contrasts, principles
from cai.prompts.optimize import compiled
from programs.judge import Judge


def judge(ctx, st: StageConfig, policy: str, tasks: list[dict]) -> dict:
    """Original against revision, and a judge-checked principle's two answers, in both orders; not
    where the checker decides, nor where the judge is untrusted: on the CPU these long prompts are
    the slowest of the stage."""
    sources, trust = ctx.trusted(st)
    if "judge" not in sources:  # its verdicts would not be used: don't spend the CPU
        return {"skipped": "the judge is not a trusted pair source at this stage", **trust}
    n, make = st.number, compiled(ctx.run, st.number, Judge, "judge")
    revisions, responses = ctx.run.records(n, "revisions"), ctx.run.records(n, "responses")
    jobs, decided = principles.judge_jobs(revisions, responses, tasks, ctx.constitution.principles)
    jobs += contrasts.judge_jobs(ctx.run.records(n, "contrasts"), ctx.constitution.principles)
    out = ctx.run.records(n, "judgments")
    stats = ctx.jobs(jobs, make, "better", policy, st.generation.judge, out, f"stage{n}/judge")
    return {**stats, "skipped_checker_decides": decided, **trust}
