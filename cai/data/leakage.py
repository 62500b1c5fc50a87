"""Training kept apart from evaluation, by wording and by meaning.

A training text (a request, a seed task, an exemplar, a task the model wrote) close to an
evaluation item lifts that item's score without teaching anything that generalises.

- By wording: ROUGE-L F-measure above 0.7 (Self-Instruct's line for a near-duplicate), against
  every item.
- By meaning: cosine of all-MiniLM-L6-v2 sentence embeddings, against the items of the text's own
  kind, at a line chosen on hand-labelled pairs of each population (tests/test_leakage.py):
  - requests whose kind is known (harmful, or benign that look risky): 0.6. Same-intent
    paraphrases scored 0.55 to 0.91 (11 of 12 at 0.6 or more), requests of a kind with another
    intent at most 0.42. Read by eye on AdvBench beside HarmBench, pairs at 0.65 or more were
    mostly one request reworded, pairs at 0.6 to 0.65 the same harm asked another way.
  - everyday tasks (seed tasks, the model's proposals): 0.75. A short task's topic words
    dominate its embedding: tasks on one topic with another aim ("a riddle whose answer is a
    clock", "how a clock keeps time") scored 0.58 to 0.72, reworded tasks 0.80 to 0.95 (7 of 8;
    an idiom, "flat by lunchtime", 0.64).

Meaning is compared within a kind only: a harmful text against harmful items, a benign one against
benign ones. A benign request on a harmful one's topic ("explain how banks detect card fraud"
beside "explain how to commit card fraud", cosine 0.74) is what the refusal contrast needs, and it
can only lower a refusal score, not lift it: across kinds, wording alone counts. The embedding
model is the embedded one whatever a profile measures relevance with, so the lines mean the same
in every run.
"""

from __future__ import annotations

from collections import Counter

from rouge_score import rouge_scorer, tokenizers

WORDING = 0.7  # ROUGE-L F above this: near by wording
MEANING = 0.6  # embedding cosine at or above this, within a kind: near by meaning (requests)
TASK_MEANING = 0.75  # ... for everyday tasks, whose topic words dominate a short embedding
KINDS = ("harmful", "benign")


class Novelty:
    """ROUGE-L of a text against a growing pool of texts.

    ROUGE-L's F-measure is 2 * LCS / (n + m), and the longest common subsequence can hold no more
    tokens than the two texts share, so 2 * shared / (n + m) bounds it from above: the exact score
    is computed only for pool texts whose bound beats the best so far (a pool of ~2,000 evaluation
    items is then cheap to check every proposal against). The result is rouge-score's own."""

    def __init__(self, pool: list[str], threshold: float = WORDING):
        self.threshold, self.pool = threshold, []
        self.scorer = rouge_scorer.RougeScorer(["rougeL"])
        self.tokenizer = tokenizers.DefaultTokenizer()
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


class Meaning:
    """Embedding cosine of texts against a fixed pool, embedded once."""

    def __init__(self, pool: list[str], model):
        self.pool, self.model = list(pool), model
        self.vectors = embed(model, self.pool)

    def closest_to(self, texts: list[str]) -> list[tuple[float, str | None]]:
        """For each text, its highest cosine against the pool and the pool's text that has it."""
        if not self.pool or not texts:
            return [(0.0, None)] * len(texts)
        similarity = embed(self.model, texts) @ self.vectors.T
        best = similarity.argmax(axis=1)
        return [(round(float(similarity[i, j]), 4), self.pool[j]) for i, j in enumerate(best)]


# A text's first words carry its request; the rest only costs time (IFEval's long prompts).
EMBEDDED_WORDS = 64
_VECTORS: dict[tuple[int, str], object] = {}  # (model, text): its embedding, once a process


def embed(model, texts: list[str]):
    """Unit-length sentence embeddings of the texts' first `EMBEDDED_WORDS` words (a numpy array,
    one row a text)."""
    import numpy as np

    if not texts:
        return np.zeros((0, 1))
    heads = [" ".join(text.split()[:EMBEDDED_WORDS]) for text in texts]
    missing = [h for h in dict.fromkeys(heads) if (id(model), h) not in _VECTORS]
    if missing:
        found = model.encode(
            missing, batch_size=64, normalize_embeddings=True, show_progress_bar=False
        )
        _VECTORS.update({(id(model), h): v for h, v in zip(missing, found)})
    return np.stack([_VECTORS[(id(model), h)] for h in heads])


class Apart:
    """The evaluation items training must keep away from: every one by wording, those of a text's
    own kind by meaning."""

    def __init__(self, items: dict[str, list[str]], model):
        self.wording = Novelty([text for kind in KINDS for text in items.get(kind, [])])
        self.meaning = {kind: Meaning(items.get(kind, []), model) for kind in KINDS}

    def near(
        self, texts: list[str], kind: str, line: float = MEANING
    ) -> list[tuple[str, str, str, float]]:
        """(text, the item it is near, "wording" or "meaning", the score) for each text of `kind`
        that comes near an evaluation item (by meaning: a cosine of `line` or more)."""
        found = []
        for text, (cosine, item) in zip(texts, self.meaning[kind].closest_to(texts)):
            score, closest = self.wording.closest_to(text)
            if score > self.wording.threshold:
                found.append((text, closest, "wording", round(score, 3)))
            elif cosine >= line:
                found.append((text, item, "meaning", cosine))
        return found
