"""optimize: compile the programs' prompts with a DSPy optimizer before generating at scale."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from functools import partial

from cai.config.curriculum import StageConfig
from cai.data import contrast as contrasts, quality
from cai.prompts import examples
from cai.prompts.optimize import (
    PROGRAMS,
    compile_program,
    compiled,
    render,
    save as save_compiled,
    saved,
    slice_sizes,
)
from cai.serving.lm import Job, request_seed
from cai.store import policy_name
from programs.judge import asker
from programs.respond import Responder


def optimize(ctx, st: StageConfig, policy: str) -> dict:
    """Compile the programs' prompts side by side (cai/prompts/examples.py's metrics), save them,
    render prompts.md."""
    n, stats = st.number, {"optimizer": st.optimize.optimizer}
    names = []
    if st.optimize.optimizer != "none":
        if "contrast" in st.optimize.programs:
            names += [f"contrast-{p.id}" for p in ctx.contrasting(st)]
        names += [name for name in st.optimize.programs if name != "contrast"]
    ctx.endpoint(policy)  # the policy's weights in place before the threads ask for them
    with ThreadPoolExecutor(max_workers=max(1, len(names))) as pool:
        for found in pool.map(lambda name: optimize_program(ctx, st, policy, name), names):
            stats.update(found)
    shown = {
        **PROGRAMS,
        **{
            f"contrast-{p.id}": contrasts.program(p, ctx.system_prompt) for p in ctx.contrasting(st)
        },
    }
    adapter = ctx.endpoint(policy).dspy_adapter()
    prompts = [
        render(name, compiled(ctx.run, n, make, name)(), adapter) for name, make in shown.items()
    ]
    (ctx.run.stage_dir(n) / "prompts.md").write_text(
        f"# Prompts of stage {n}\n\n" + "\n".join(prompts)
    )
    return stats


def optimize_program(ctx, st: StageConfig, policy: str, name: str) -> dict:
    """Compile one program within its share of the stage's LM calls, from the last stage's; its
    stats."""
    n, folder = st.number, ctx.run.stage_dir(st.number) / "programs"
    adapter = ctx.endpoint(policy).dspy_adapter()
    # None: one of PROGRAMS; else the principle's contrast
    make = next(
        (
            contrasts.program(p, ctx.system_prompt)
            for p in ctx.contrasting(st)
            if name == f"contrast-{p.id}"
        ),
        None,
    )
    if (
        saved(folder, name, make) is not None
    ):  # compiled before this step was cut short, or reused by a rerun
        return {f"{name}_reused": True}
    train, dev, calls = slice_sizes(st, name)
    if train <= 0:
        return {f"{name}_skipped": f"the budget ({calls} LM calls) allows no example"}
    answered = judge_lm = None
    if (
        name == "critique_revise"
    ):  # twice the seeds asked for, answered once each: those that break their rule go first
        seeds = examples.seed_slice(ctx.seed, st, 2 * (train + dev))
        answered = seeds, ctx.run.records(n, "optimize_responses")
        jobs = [Job(f"{t['id']}-r0", {"request": t["prompt"]}, {"task_id": t["id"]}) for t in seeds]
        ctx.jobs(
            jobs,
            partial(Responder, ctx.system_prompt),
            "response",
            policy,
            st.generation.respond,
            answered[1],
            f"stage{n}/respond",
            f"stage{n} optimize: answers",
        )
        judge_lm = ctx.endpoint(policy).lm(
            st.generation.judge, request_seed(ctx.seed, f"stage{n}-optimize-judge")
        )
    principles = ctx.constitution.for_stage(n)
    target = examples.compilable(
        name,
        ctx.seed,
        st,
        ctx.run,
        principles,
        train + dev,
        answered,
        judge_lm and asker(judge_lm, adapter),
        quality.embedder(ctx.embedding_model),
        make,
    )
    if not target.examples:
        return {f"{name}_skipped": "no examples"}
    lm = ctx.endpoint(policy).lm(
        target.sampling, request_seed(ctx.seed, f"stage{n}-optimize-{name}")
    )
    previous = saved(ctx.run.root / policy_name(n - 1) / "programs", name, make) if n > 1 else None
    start = examples.warm_start(previous, make)
    trainset, devset = target.examples[:train], target.examples[train : train + dev]
    result, summary = compile_program(
        target.program,
        target.metric,
        trainset,
        devset,
        st.optimize,
        lm,
        adapter,
        ctx.concurrency,
        ctx.seed,
        start=start,
    )
    save_compiled(folder, name, result)
    figures = {f"{name}_{k}": v for k, v in summary.items() if k != "optimizer"}
    return {**figures, f"{name}_budget": calls}
