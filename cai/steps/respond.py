"""respond: the current policy answers the tasks, several samples each (best-of-n)."""

from __future__ import annotations

import math
from collections import Counter
from functools import partial

from cai.config.curriculum import StageConfig
from cai.data import constraints, quality
from cai.data.pairs import best_of_n_count
from cai.serving.lm import Job
from programs.respond import Responder


def respond(ctx, st: StageConfig, policy: str, tasks: list[dict]) -> dict:
    """Answer the tasks `samples` times each, `respond_batch` tasks at a time, the tasks whose rule
    best-of-n separates best (on the answers so far) first, until they hold `target_pairs` filtered
    best-of-n pairs. A task's first sample goes before any second: the rest hit the prefix cache."""
    n, c, out = st.number, st.counts, ctx.run.records(st.number, "responses")
    earlier_tasks, earlier = ctx.run.read(n - 1, "tasks"), ctx.run.read(n - 1, "responses")
    stats, answered, remaining, found, signals = Counter(), [], list(tasks), None, {}
    while remaining:
        weights = constraints.separating_weights(
            earlier_tasks + answered, earlier + list(out), c.samples
        )
        # stable: ties keep task order
        remaining.sort(
            key=lambda t: -weights.get((t.get("constraint") or {}).get("instruction_id"), 1.0)
        )
        size = c.respond_batch
        # near the target, only as many tasks as the yield so far says it needs (more pairs cost
        # training time)
        if found:
            size = min(
                size, max(8, math.ceil(1.2 * (c.target_pairs - found) * len(answered) / found))
            )
        batch, remaining = remaining[:size], remaining[size:]
        jobs = [
            Job(f"{t['id']}-r{k}", {"request": t["prompt"]}, {"task_id": t["id"], "sample": k})
            for k in range(c.samples)
            for t in batch
        ]
        label = f"stage{n} respond, tasks {len(answered) + 1}-{len(answered) + len(batch)} of {len(tasks)}"
        stats.update(
            ctx.jobs(
                jobs,
                partial(Responder, ctx.system_prompt),
                "response",
                policy,
                st.generation.respond,
                out,
                f"stage{n}/respond",
                label,
            )
        )
        answered += batch
        if c.target_pairs:
            embedder = quality.embedder(ctx.embedding_model)
            found = best_of_n_count(n, answered, out, signals, st.pair_filters, embedder)
        if found is not None and found >= c.target_pairs:
            break
    return {**stats, "tasks_answered": len(answered), "candidate_pairs": found}
