"""contrast: each principle answers requests under its positive and its negative instruction."""

from __future__ import annotations

from functools import partial

from cai.config.curriculum import StageConfig
from cai.data import contrast as contrasts, contrast_yield, quality
from cai.prompts.optimize import compiled
from programs.respond import turn


def contrast(ctx, st: StageConfig, policy: str, tasks: list[dict]) -> dict:
    """The constitution writes pairs: each principle of the stage that can (cai/data/contrast.py)
    answers its requests under its positive and its negative instruction, one seed a request; where
    the principle's check does not separate the two, the request is answered again, both sides, up
    to `counts.contrast_samples` times (best-of-n on the principle's own signal). The pairs step
    keeps, of each request's samples, the pair its check separates most widely, with the bare
    request as the prompt."""
    n, endpoint = st.number, ctx.endpoint(policy)
    judge_trusted = "judge" in ctx.trusted(st)[0]
    principles = ctx.constitution.for_stage(n)
    # the pair's prompt: the bare request in the one turn the policy is trained and measured in
    jobs, why_not = contrasts.contrast_jobs(
        ctx.seed,
        n,
        tasks,
        principles,
        st.counts.contrasts,
        judge_trusted,
        partial(turn, system_prompt=ctx.system_prompt),
    )
    makes = {
        p.id: compiled(ctx.run, n, contrasts.program(p, ctx.system_prompt), f"contrast-{p.id}")
        for p in ctx.contrasting(st)
    }
    call = contrasts.dispatch(
        makes, principles, endpoint, st.generation.contrast, f"stage{n}/contrast"
    )
    out, embedder = ctx.run.records(n, "contrasts"), quality.embedder(ctx.embedding_model)
    stats = contrast_yield.answer(
        jobs, call, out, principles, st, embedder, ctx.concurrency, ctx.seed, f"stage{n}"
    )
    return {**stats, **{f"{pid}_makes_none": why for pid, why in why_not.items()}}
