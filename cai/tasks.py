"""Self-instruct's bookkeeping: what the proposer is shown, and which new tasks are kept.

As in Self-Instruct, a proposer prompt mixes seed tasks with tasks the model wrote
earlier (from an earlier round of the same stage), and a new task is kept only if its
ROUGE-L against every task in the pool stays at or below a threshold (0.7 there).
"""

from __future__ import annotations

import random

from rouge_score import rouge_scorer


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
