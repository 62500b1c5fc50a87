"""Self-instruct's bookkeeping: what the proposer is shown, and which new tasks are kept.

As in Self-Instruct, a proposer prompt mixes seed tasks with tasks the model wrote
earlier (from an earlier round of the same stage), and a new task is kept only if its
ROUGE-L against every task in the pool stays at or below a threshold (0.7 there).
A generated task near an evaluation item, dev or test, by wording or by meaning
(cai/data/leakage.py), is dropped; tests/test_leakage.py holds the shipped seed tasks,
rule phrasings, request sets and exemplars to the same lines.
"""

from __future__ import annotations

import random
from collections import Counter

from cai.data import constraints
from cai.data.leakage import TASK_MEANING, Apart, Novelty
from cai.serving.lm import Job, seeded
from programs.propose import clean_task


def proposer_examples(
    rng: random.Random, seeds: list[str], generated: list[str], shown: int, from_pool: int
) -> str:
    """`shown` numbered example requests: up to `from_pool` written by the model, the rest seeds."""
    mine = rng.sample(generated, min(from_pool, len(generated), shown))
    picked = rng.sample(seeds, min(shown - len(mine), len(seeds))) + mine
    rng.shuffle(picked)
    return "\n".join(f"{k + 1}. {s}" for k, s in enumerate(picked))


def proposal_rounds(proposed: int, rounds: int) -> list[range]:
    """The proposal indices of each round: `proposed` split into `rounds` (the last may be
    short)."""
    per_round = -(-proposed // rounds)
    return [
        range(first, min(first + per_round, proposed)) for first in range(0, proposed, per_round)
    ]


def proposal_jobs(
    seed: int,
    n: int,
    indices: range,
    kind: str,
    seeds: list[str],
    generated: list[str],
    shown: int,
    from_pool: int,
) -> list[Job]:
    """One proposer request a proposal: the stage's kind of task and `shown` examples, up to
    `from_pool` of them written by the model in an earlier round."""
    return [
        Job(
            f"s{n}-p{i:04d}",
            {
                "kind": kind,
                "examples": proposer_examples(
                    seeded(seed, f"s{n}-p{i}"), seeds, generated, shown, from_pool
                ),
            },
        )
        for i in indices
    ]


def admit(
    jobs: list[Job], records, novelty: Novelty, stats: Counter, evaluation: Apart | None = None
) -> list[dict]:
    """The new tasks in the proposer's replies to `jobs`, in job order (so the kept set does not
    depend on completion order): unusable replies, tasks near an evaluation item (a task is a
    benign request) and near-duplicates dropped and counted."""
    requests = {}
    for job in jobs:
        rec = records.get(job.id)
        requests[job.id] = clean_task(rec["request"]) if rec["ok"] else None
    usable = [r for r in requests.values() if r is not None]
    near = {t for t, *_ in evaluation.near(usable, "benign", TASK_MEANING)} if evaluation else set()
    kept = []
    for job in jobs:
        request = requests[job.id]
        if request is None:
            stats["dropped_unusable"] += 1
            continue
        if request in near:
            stats["dropped_near_evaluation"] += 1
            continue
        novel, closest = novelty.admit(request)
        if not novel:
            stats["dropped_duplicate"] += 1
            continue
        kept.append(
            {
                "id": job.id.replace("-p", "-gen"),
                "source": "generated",
                "request": request,
                "proposal_id": job.id,
                "rouge_l_closest": round(closest, 3),
            }
        )
    return kept


def with_rules(
    tasks: list[dict], n: int, seed: int, weights: dict[str, float], enabled: bool
) -> list[dict]:
    """Stage n's tasks, each with a checkable rule drawn for it (cai/data/constraints.py; none where
    the stage sets `constraints: false`) and the prompt the policy is sent."""
    for task in tasks:
        task["stage"] = n
        constraints.attach(task, seeded(seed, task["id"]) if enabled else None, weights)
    return tasks
