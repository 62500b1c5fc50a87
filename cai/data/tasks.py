"""Self-instruct's bookkeeping: what the proposer is shown, and which new tasks are kept.

As in Self-Instruct, a proposer prompt mixes seed tasks with tasks the model wrote
earlier (from an earlier round of the same stage), and a new task is kept only if its
ROUGE-L against every task in the pool stays at or below a threshold (0.7 there).
The same measure keeps training away from the evaluation: a generated task within
ROUGE-L 0.7 of any evaluation item (dev or test) is dropped, and tests/test_leakage.py
holds the shipped seed tasks and rule phrasings to the same line.
"""

from __future__ import annotations

import random
from collections import Counter

from rouge_score import rouge_scorer, tokenizers

from cai.data import constraints
from cai.serving.lm import Job, seeded
from programs.propose import clean_task

LEAK_THRESHOLD = 0.7  # ROUGE-L to an evaluation item above which a training text counts as leaked


class Novelty:
    """ROUGE-L of a text against a growing pool of texts.

    ROUGE-L's F-measure is 2 * LCS / (n + m), and the longest common subsequence can hold no more
    tokens than the two texts share, so 2 * shared / (n + m) bounds it from above: the exact score
    is computed only for pool texts whose bound beats the best so far (a pool of ~1,300 evaluation
    items is then cheap to check every proposal against). The result is rouge-score's own."""

    def __init__(self, pool: list[str], threshold: float):
        self.threshold, self.pool = threshold, []
        self.scorer, self.tokenizer = (
            rouge_scorer.RougeScorer(["rougeL"]),
            tokenizers.DefaultTokenizer(),
        )
        for text in pool:
            self.add(text)

    def add(self, text: str) -> None:
        tokens = Counter(self.tokenizer.tokenize(text))
        self.pool.append((text, tokens, sum(tokens.values())))

    def closest_to(self, text: str) -> tuple[float, str | None]:
        """The highest ROUGE-L F-measure of `text` against the pool, and the pool's text that has
        it."""
        tokens = Counter(self.tokenizer.tokenize(text))
        n = sum(tokens.values())
        bounds = sorted(
            (
                (2 * sum((tokens & other).values()) / (n + m) if n + m else 0.0, i)
                for i, (_, other, m) in enumerate(self.pool)
            ),
            reverse=True,
        )
        best, where = 0.0, None
        for bound, i in bounds:
            if bound <= best:
                break
            score = self.scorer.score(self.pool[i][0], text)["rougeL"].fmeasure
            if score > best:
                best, where = score, self.pool[i][0]
        return best, where

    def closest(self, text: str) -> float:
        """The highest ROUGE-L F-measure of `text` against the pool (0 for an empty pool)."""
        return self.closest_to(text)[0]

    def admit(self, text: str) -> tuple[bool, float]:
        """Add `text` to the pool unless it is a near-duplicate; (admitted, closest score)."""
        score = self.closest(text)
        if score > self.threshold:
            return False, score
        self.add(text)
        return True, score


def leaks(texts: list[str], evaluation: Novelty) -> list[tuple[str, str, float]]:
    """(text, the evaluation item it is close to, ROUGE-L) for every text within `evaluation`'s
    threshold."""
    found = [(text, *evaluation.closest_to(text)[::-1]) for text in texts]
    return [
        (text, item, round(score, 3)) for text, item, score in found if score > evaluation.threshold
    ]


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
    jobs: list[Job], records, novelty: Novelty, stats: Counter, evaluation: Novelty | None = None
) -> list[dict]:
    """The new tasks in the proposer's replies to `jobs`, in job order (so the kept set does not
    depend on completion order): unusable replies, tasks near an evaluation item and near-duplicates
    dropped and counted."""
    kept = []
    for job in jobs:
        rec = records.get(job.id)
        request = clean_task(rec["request"]) if rec["ok"] else None
        if request is None:
            stats["dropped_unusable"] += 1
            continue
        if evaluation is not None and evaluation.closest(request) > evaluation.threshold:
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
