"""The contrast step's machinery: the constitution writes the pairs.

For each principle of a stage that has a `contrast` (constitution.yaml), requests are answered
twice, under its positive instruction and under its negative one (RLCD, Yang et al. 2023), with the
same seed so the two answers differ as little as the instructions allow. The pair's label comes
from how it was made; the principle's `check` must confirm it (where the instructions induced no
gap the label would be a coin flip): `separates` says whether it does, and records both sides'
signals. The pair's prompt is the bare request, without the instruction, so the behaviour moves
into the weights (principle engraving, Sun et al. 2023).

A principle's requests are the stage's own tasks, or one of the project's sets whose kind the set
says (requests/harmful.txt: the positive side refuses; requests/benign.txt, requests that only look
risky: the positive side helps). Of each set, the first `HELD_OUT` in the run's order are the
optimizer's examples and never a pair's; each stage takes its own slice of the rest.
"""

from __future__ import annotations

import programs
from cai import ROOT
from cai.config.constitution import Principle
from cai.data.constraints import keeps
from cai.data.refusal import propositions
from cai.serving.lm import Job, program_call, seeded
from programs.contrast import Contrast

REQUESTS_DIR = ROOT / "requests"
HELD_OUT = 12  # of each known-kind set: the optimizer's examples


def known_requests(kind: str) -> list[dict]:
    """requests/<kind>.txt as requests, one a line, each with a stable id."""
    lines = [
        line.strip()
        for line in (REQUESTS_DIR / f"{kind}.txt").read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    return [
        {"id": f"{kind}-{i:03d}", "request": line, "prompt": line} for i, line in enumerate(lines)
    ]


def ordered(seed: int, kind: str) -> list[dict]:
    """The set in the run's order: the first HELD_OUT are the optimizer's."""
    rows = known_requests(kind)
    seeded(seed, f"requests-{kind}").shuffle(rows)
    return rows


def stage_requests(seed: int, kind: str, n: int, count: int) -> list[dict]:
    """Stage n's `count` requests of a known-kind set: its own slice of what the optimizer does not
    hold, round the set if it must."""
    rest = ordered(seed, kind)[HELD_OUT:]
    return [rest[((n - 1) * count + i) % len(rest)] for i in range(min(count, len(rest)))]


def held_out(seed: int, kind: str, count: int) -> list[dict]:
    return ordered(seed, kind)[: min(count, HELD_OUT)]


def contrast_jobs(
    seed: int,
    n: int,
    tasks: list[dict],
    drawn_from: list[Principle],
    per_principle: int,
    judge_trusted: bool,
    prompt_of,
) -> tuple[list[Job], dict[str, str]]:
    """One job a (request, principle) for the stage's principles that can make pairs,
    `per_principle` requests each, and why each other principle makes none. A principle answering
    the stage's tasks takes every k-th of them (k the number of such principles), so no two answer
    the same task. `prompt_of(request)` is what the policy is sent for the bare request: the pair's
    prompt."""
    jobs, why_not = [], {}
    on_tasks = [
        p
        for p in drawn_from
        if p.contrast and p.contrast.requests == "tasks" and usable(p, judge_trusted)
    ]
    for p in drawn_from:
        if not p.contrast:
            why_not[p.id] = "no contrast in the constitution: it drives critique and revision only"
            continue
        if not usable(p, judge_trusted):
            why_not[p.id] = "its check is the judge, which this stage does not trust"
            continue
        if p.contrast.requests == "tasks":
            k = on_tasks.index(p)
            requests = [
                {"id": t["id"], "request": t["request"], "prompt": t["prompt"], "task": t}
                for t in tasks[k :: len(on_tasks)]
            ]
        else:
            requests = stage_requests(seed, p.contrast.requests, n, per_principle)
        for r in requests[:per_principle]:
            jobs.append(
                Job(
                    f"{r['id']}-x-{p.id}",
                    {"request": r["prompt"]},
                    {
                        "principle_id": p.id,
                        "requests": p.contrast.requests,
                        "request_id": r["id"],
                        "request": r["request"],
                        "constraint": (r.get("task") or {}).get("constraint"),
                        "pair_prompt": prompt_of(r["prompt"]),
                    },
                )
            )
    return jobs, why_not


def usable(p: Principle, judge_trusted: bool) -> bool:
    return p.check is not None and (p.check.signal != "judge" or judge_trusted)


def contrasting(drawn_from: list[Principle], judge_trusted: bool) -> list[Principle]:
    """The principles whose contrast a stage can run (one its judge checks only where the judge is
    trusted)."""
    return [p for p in drawn_from if p.contrast and usable(p, judge_trusted)]


def program(p: Principle):
    """A factory of principle `p`'s Contrast, its two instructions and its exemplars in place (what
    its compiled file loads into: the optimizer's demos then replace the exemplars)."""
    c = p.contrast
    return lambda: Contrast(c.positive, c.negative, c.demos("positive"), c.demos("negative"))


def separates(
    p: Principle, record: dict, q_positive: dict | None, q_negative: dict | None
) -> tuple[bool, dict]:
    """Whether the principle's check tells the positive answer from the negative one in the
    principle's direction, and each side's propositions and rule check (for the provenance)."""
    check, pos, neg = p.check, record["positive"], record["negative"]

    def rule(text: str) -> bool | None:
        constraint = record.get("constraint")
        return keeps(constraint, record["request"], text) if constraint else None

    signals = {
        side: {**propositions(text), "keeps_rule": rule(text)}
        for side, text in (("chosen", pos), ("rejected", neg))
    }
    chosen, rejected = signals["chosen"], signals["rejected"]
    if check.signal == "refusal":
        return chosen["good_refusal"] and not rejected["refuses"], signals
    if check.signal == "compliance":
        return not chosen["refuses"] and rejected["refuses"], signals
    if check.signal == "rule":
        return chosen["keeps_rule"] is True and rejected["keeps_rule"] is False, signals
    if q_positive is None or q_negative is None:
        return False, signals
    if check.signal == "words":
        short, long = q_positive["words"], q_negative["words"]
        ok = short <= check.at_most < long if check.at_most else short < long * (1 - check.margin)
        return ok, signals
    if check.signal == "relevance":
        return q_positive["relevance"] >= q_negative["relevance"] + max(check.margin, 1e-9), signals
    if check.signal == "repetition":
        return q_positive["repetition"] + max(check.margin, 1e-9) <= q_negative[
            "repetition"
        ], signals
    if check.signal == "boilerplate":
        return not q_positive["boilerplate"] and q_negative["boilerplate"], signals
    return False, signals  # judge: where it is trusted, cai/data/pairs.py asks its verdicts


# The quality filters a contrast's chosen side is spared (cai/data/pairs.py): a good refusal is
# short and not about the request's topic by design; a shorter answer is the point of the words
# check.
FILTERS_SPARED = {"refusal": ("relevance", "relevance_margin", "length"), "words": ("length",)}


def dispatch(makes: dict, endpoint, sampling, label: str):
    """A `run_jobs` call that answers each job with its principle's program (`makes`: principle id
    to a factory of its compiled Contrast), both sides, and records which prompt version did."""
    calls = {
        pid: (
            program_call(make, ("positive", "negative"), endpoint, sampling),
            programs.version(make, f"{label}-{pid}"),
        )
        for pid, make in makes.items()
    }

    def call(job: Job, seed: int) -> dict:
        answer, version = calls[job.meta["principle_id"]]
        return {**answer(job, seed), "program": version}

    return call
