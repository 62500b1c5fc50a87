"""The per-stage suites, answered by the stage's served model, scored, written to eval.json.

The first suite is instruction following: held-out prompts in IFEval's format
(`suites/instruction_following.jsonl`, written for this project, never shown to the
proposer), answered greedily through the respond program, scored with lm-eval's
IFEval checkers. Each score carries a 95% Wilson interval.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from cai.config import Sampling
from cai.constraints import score_ifeval
import programs
from cai.lm import Endpoint, Job, program_call, run_jobs
from cai.store import Records
from programs.respond import Responder

SUITES = Path(__file__).resolve().parent.parent / "suites"


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return 0.0, 0.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def proportion(successes: int, n: int) -> dict:
    low, high = wilson(successes, n)
    return {"score": round(successes / n, 4) if n else 0.0, "low": round(low, 4), "high": round(high, 4), "n": n}


def load_suite(name: str, limit: int) -> list[dict]:
    path = SUITES / f"{name}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()][:limit]


def instruction_following(endpoint: Endpoint, out: Records, items: int, sampling: Sampling, concurrency: int, seed: int) -> dict:
    docs = load_suite("instruction_following", items)
    jobs = [Job(f"if-{d['key']}", {"request": d["prompt"]}, {"key": d["key"]}) for d in docs]
    stats = run_jobs(jobs, program_call(Responder, "response", endpoint, sampling), out, concurrency, seed,
                     programs.version(Responder, "evaluate/respond"))
    prompt_strict = prompt_loose = 0
    inst_strict: list[bool] = []
    for d in docs:
        rec = out.get(f"if-{d['key']}")
        scores = score_ifeval(d, rec["response"] if rec["ok"] else "")
        prompt_strict += scores["prompt_level_strict_acc"]
        prompt_loose += scores["prompt_level_loose_acc"]
        inst_strict += scores["inst_level_strict_acc"]
    return {
        "instruction_following": proportion(prompt_strict, len(docs)),
        "instruction_following_loose": proportion(prompt_loose, len(docs)),
        "instruction_following_inst_level": proportion(sum(inst_strict), len(inst_strict)),
    }, stats
