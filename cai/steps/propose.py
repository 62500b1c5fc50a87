"""propose: self-instruct, new tasks of the stage's kind, each with a checkable rule."""

from __future__ import annotations

from collections import Counter

from cai.config.curriculum import StageConfig
from cai.data import constraints, requests, tasks as proposals
from cai.data.leakage import Novelty
from cai.prompts.optimize import compiled
from cai.serving.lm import seeded
from cai.store import StageError, write_jsonl_atomic
from programs.propose import Propose


def propose(ctx, st: StageConfig, policy: str) -> dict:
    """Seed tasks plus new ones the model writes in rounds (later rounds see earlier ones),
    near-duplicates dropped; each gets a rule, drawn where best-of-n separates samples."""
    n, c = st.number, st.counts
    records, make = ctx.run.records(n, "proposals"), compiled(ctx.run, n, Propose, "propose")
    seeds = seeded(ctx.seed, f"stage{n}-seeds").sample(st.seeds, min(c.seeds_used, len(st.seeds)))
    earlier = [t["request"] for t in ctx.run.earlier(n, "tasks")]
    novelty = Novelty(list(st.seeds) + earlier, st.dedupe_threshold)
    held_out = requests.evaluation(ctx.seed)  # no task near an evaluation item, dev or test
    generated = []
    stats = Counter(
        dropped_unusable=0, dropped_near_evaluation=0, dropped_duplicate=0
    )  # each recorded, 0 too
    for r, indices in enumerate(proposals.proposal_rounds(c.proposed, c.proposal_rounds)):
        shown = [t["request"] for t in generated]
        jobs = proposals.proposal_jobs(
            ctx.seed, n, indices, st.description, st.seeds, shown, c.examples_shown, c.pool_examples
        )
        label = f"stage{n} propose, round {r + 1}"
        # prime=1: the demos lead every prompt
        stats.update(
            ctx.jobs(
                jobs,
                make,
                "request",
                policy,
                st.generation.propose,
                records,
                f"stage{n}/propose",
                label,
                prime=1,
            )
        )
        generated += proposals.admit(jobs, records, novelty, stats, held_out)
    tasks = [
        {"id": f"s{n}-seed{k:02d}", "source": "seed", "request": s} for k, s in enumerate(seeds)
    ]
    tasks += generated
    if not tasks:
        raise StageError(
            f"stage{n}: propose: no task (seeds_used={c.seeds_used}; of {c.proposed} proposals "
            f"{stats['dropped_unusable']} unusable, {stats['dropped_duplicate']} near-duplicates); "
            f"see {records.path}"
        )
    last = ctx.run.read(n - 1, "tasks"), ctx.run.read(n - 1, "responses")
    weights = constraints.separating_weights(*last, c.samples)
    ruled = proposals.with_rules(tasks, n, ctx.seed, weights, st.constraints)
    write_jsonl_atomic(ctx.run.stage_dir(n) / "tasks.jsonl", ruled)
    return {
        **stats,
        "proposed": c.proposed,
        "kept": len(generated),
        "seeds": len(seeds),
        "tasks": len(tasks),
        "constraint_weights": weights,
    }
