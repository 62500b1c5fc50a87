"""guard: the safety filter classifies the prompt and both sides of every candidate pair."""

from __future__ import annotations

from cai.config.curriculum import StageConfig
from cai.data import guard
from cai.serving.lm import Job, run_jobs
from cai.steps.pairs import stage_pairs


def safety_check(ctx, st: StageConfig, tasks: list[dict]) -> dict:
    """The guard on the prompt and both sides of every candidate pair: nothing else can reach
    training."""
    if ctx.guard.mode == "off":
        return {"mode": "off", "checked": 0}
    candidates, _, _ = stage_pairs(ctx, st, tasks, guard_records=None)
    jobs, out = guard.items_to_check(candidates), ctx.run.records(st.number, "guard")
    stats = classify(ctx, jobs, out, f"stage{st.number} guard")
    unsafe = [j for j in jobs if not out.get(j.id)["verdict"]["safe"]]
    return {
        "mode": ctx.guard.mode,
        "candidates": len(candidates),
        **stats,
        "unsafe": len(unsafe),
        "unsafe_prompts": sum(j.meta["role"] == "user" for j in unsafe),
    }


def classify(ctx, jobs: list[Job], out, label: str) -> dict:
    """The guard's verdict on each job; the first of each role goes ahead (its instructions lead
    the rest)."""
    jobs, primers = guard.one_of_each_role_first(jobs)
    with guard.checker(
        ctx.guard,
        ctx.server,
        ctx.swap,
        ctx.run.root,
        ctx.seed,
        ctx.timeout_s,
        ctx.trust_remote_code,
    ) as check:
        return run_jobs(
            jobs,
            check,
            out,
            ctx.concurrency,
            ctx.seed,
            guard.version(ctx.guard.mode),
            progress=label,
            prime=primers,
        )
