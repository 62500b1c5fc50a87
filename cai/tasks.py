"""Self-instruct's bookkeeping: what the proposer is shown, and which new tasks are kept.

As in Self-Instruct, a proposer prompt mixes seed tasks with tasks the model wrote
earlier (from an earlier round of the same stage), and a new task is kept only if its
ROUGE-L against every task in the pool stays at or below a threshold (0.7 there).
"""

from __future__ import annotations

import random
from collections import Counter

from rouge_score import rouge_scorer

from cai import constraints
from cai.lm import Job, seeded
from programs.propose import clean_task


class Novelty:
    """ROUGE-L of a text against a growing pool of tasks."""

    def __init__(self, pool: list[str], threshold: float):
        self.pool, self.threshold = list(pool), threshold
        self.scorer = rouge_scorer.RougeScorer(["rougeL"])

    def closest(self, text: str) -> float:
        """The highest ROUGE-L F-measure of `text` against the pool (0 for an empty pool)."""
        return max((self.scorer.score(p, text)["rougeL"].fmeasure for p in self.pool), default=0.0)

    def admit(self, text: str) -> tuple[bool, float]:
        """Add `text` to the pool unless it is a near-duplicate; (admitted, closest score)."""
        score = self.closest(text)
        if score > self.threshold:
            return False, score
        self.pool.append(text)
        return True, score


def proposer_examples(rng: random.Random, seeds: list[str], generated: list[str], shown: int, from_pool: int) -> str:
    """`shown` numbered example requests: up to `from_pool` written by the model, the rest seeds."""
    mine = rng.sample(generated, min(from_pool, len(generated), shown))
    picked = rng.sample(seeds, min(shown - len(mine), len(seeds))) + mine
    rng.shuffle(picked)
    return "\n".join(f"{k + 1}. {s}" for k, s in enumerate(picked))


def proposal_rounds(proposed: int, rounds: int) -> list[range]:
    """The proposal indices of each round: `proposed` split into `rounds` (the last may be short)."""
    per_round = -(-proposed // rounds)
    return [range(first, min(first + per_round, proposed)) for first in range(0, proposed, per_round)]


def proposal_jobs(seed: int, n: int, indices: range, kind: str, seeds: list[str], generated: list[str], shown: int,
                  from_pool: int) -> list[Job]:
    """One proposer request a proposal: the stage's kind of task and `shown` examples, up to
    `from_pool` of them written by the model in an earlier round."""
    return [Job(f"s{n}-p{i:04d}", {"kind": kind, "examples": proposer_examples(seeded(seed, f"s{n}-p{i}"), seeds, generated,
                                                                              shown, from_pool)})
            for i in indices]


def admit(jobs: list[Job], records, novelty: Novelty, stats: Counter) -> list[dict]:
    """The new tasks in the proposer's replies to `jobs`, in job order (so the kept set does not
    depend on completion order): unusable replies and near-duplicates dropped and counted."""
    kept = []
    for job in jobs:
        rec = records.get(job.id)
        request = clean_task(rec["request"]) if rec["ok"] else None
        if request is None:
            stats["dropped_unusable"] += 1
            continue
        novel, closest = novelty.admit(request)
        if not novel:
            stats["dropped_duplicate"] += 1
            continue
        kept.append({"id": job.id.replace("-p", "-gen"), "source": "generated", "request": request,
                     "proposal_id": job.id, "rouge_l_closest": round(closest, 3)})
    return kept


def with_rules(tasks: list[dict], n: int, seed: int, weights: dict[str, float], enabled: bool) -> list[dict]:
    """Stage n's tasks, each with a checkable rule drawn for it (cai/constraints.py; none where the
    stage sets `constraints: false`) and the prompt the policy is sent."""
    for task in tasks:
        task["stage"] = n
        constraints.attach(task, seeded(seed, task["id"]) if enabled else None, weights)
    return tasks
