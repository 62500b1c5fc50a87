"""The contrast step's machinery: the constitution writes the pairs.

For each principle of a stage that has a `contrast` (constitution.yaml), requests are answered
twice, under its positive instruction and under its negative one (RLCD, Yang et al. 2023), with the
same seed so the two answers differ as little as the instructions allow. The pair's label comes
from how it was made; the principle's `check` must confirm it (where the instructions induced no
gap the label would be a coin flip): `separates` says whether it does, and records both sides'
signals. The pair's prompt is the bare request, without the instruction, so the behaviour moves
into the weights (principle engraving, Sun et al. 2023).

A principle's requests are the stage's own tasks, or a set whose kind is known
(cai/data/requests.py: AdvBench's harmful behaviours, which the positive side refuses; benign
requests in their register, which it helps with): each stage its own slice, never the optimizer's
held-out examples, never one another stage had.
"""

from __future__ import annotations

import programs
from cai.config.constitution import Principle
from cai.config.settings import PairFilters, Sampling
from cai.data.constraints import keeps
from cai.data.filters import filter_reason
from cai.data.refusal import propositions
from cai.data.requests import stage_requests
from cai.data.verdicts import judge_preference
from cai.serving.lm import Job, program_call, seeded
from programs.contrast import Contrast
from programs.judge import both_orders


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
    the stage's tasks draws them by its own id and the run's seed, whatever other principles the
    constitution holds: a rerun that adds or drops a principle leaves every other principle's
    requests as they were, so the difference it makes is its own (two principles may answer one
    task). A principle with a rule of its own checks it on every request, in place of the task's.
    `prompt_of(request)` is what the policy is sent for the bare request: the pair's prompt."""
    jobs, why_not = [], {}
    for p in drawn_from:
        if not p.contrast:
            why_not[p.id] = "no contrast in the constitution: it drives critique and revision only"
            continue
        if not usable(p, judge_trusted):
            why_not[p.id] = "its check is the judge, which this stage does not trust"
            continue
        own_rule = p.check.own_rule()
        if p.contrast.requests == "tasks":
            # a principle's own rule is one the tasks do not already ask for (two rules of a kind
            # would ask for different things)
            kind = (own_rule or {}).get("instruction_id")
            open_to = [
                t
                for t in tasks
                if not kind or (t.get("constraint") or {}).get("instruction_id") != kind
            ]
            drawn = seeded(seed, f"stage{n}-contrast-{p.id}").sample(
                open_to, min(per_principle, len(open_to))
            )
            requests = [
                {"id": t["id"], "request": t["request"], "prompt": t["prompt"], "task": t}
                for t in drawn
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
                        "constraint": own_rule or (r.get("task") or {}).get("constraint"),
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


def program(p: Principle, system_prompt: str | None = None):
    """A factory of principle `p`'s Contrast, its two instructions and its exemplars in place (what
    its compiled file loads into: the optimizer's demos then replace the exemplars); a plain
    negative side is the turn under `system_prompt`."""
    c = p.contrast
    return lambda: Contrast(
        c.positive, c.negative, c.demos("positive"), c.demos("negative"), system_prompt
    )


def separates(
    p: Principle,
    record: dict,
    q_positive: dict | None,
    q_negative: dict | None,
    judged: tuple[dict | None, dict | None] = (None, None),
    judge_margin: float = 0.0,
) -> tuple[bool, dict]:
    """Whether the principle's check tells the positive answer from the negative one in the
    principle's direction, and each side's propositions and rule check (for the provenance).
    `judged`: the judge's verdicts on the pair in both orders (`judge_jobs`), for a judge check."""
    check, pos, neg = p.check, record["positive"], record["negative"]

    def rule(text: str) -> bool | None:
        constraint = record.get("constraint")
        return keeps(constraint, record["request"], text) if constraint else None

    signals = {
        side: {**propositions(text, record["request"]), "keeps_rule": rule(text)}
        for side, text in (("chosen", pos), ("rejected", neg))
    }
    chosen, rejected = signals["chosen"], signals["rejected"]
    if check.signal == "refusal":
        return chosen["good_refusal"] and not rejected["refuses"], signals
    if check.signal == "compliance":
        return not chosen["refuses"] and rejected["refuses"], signals
    if check.signal == "rule":
        return chosen["keeps_rule"] is True and rejected["keeps_rule"] is False, signals
    if check.signal == "judge":  # the negative side shown first as A: "revision" is the positive
        winner, why = judge_preference(*judged, judge_margin)
        ab, ba = ((verdict or {}).get("better") for verdict in judged)
        signals["judge"] = {"ab": ab, "ba": ba, "decided": why}
        return winner == "revision", signals
    if q_positive is None or q_negative is None:
        return False, signals
    if check.signal == "words":
        short, long = q_positive["words"], q_negative["words"]
        ok = short <= check.at_most < long if check.at_most else short < long * (1 - check.margin)
        return ok, signals
    if check.signal == "relevance":
        return q_positive["relevance"] >= q_negative["relevance"] + max(check.margin, 1e-9), signals
    if check.signal == "repetition":
        less = q_positive["repetition"] + max(check.margin, 1e-9) <= q_negative["repetition"]
        return less, signals
    if check.signal == "boilerplate":
        return not q_positive["boilerplate"] and q_negative["boilerplate"], signals
    return False, signals


# The quality filters a contrast's chosen side is spared (cai/data/pairs.py): a good refusal is
# short and not about the request's topic by design; a shorter answer is the point of the words
# check; an answer that repeats itself is long by what it repeats (in the dry run of say-it-once
# at 256 tokens, the length filter dropped 2 of the 3 pairs its check separated).
FILTERS_SPARED = {
    "refusal": ("relevance", "relevance_margin", "length"),
    "words": ("length",),
    "repetition": ("length",),
}


def no_verdicts(record_id: str) -> tuple[None, None]:
    return None, None


SIDES = ("positive", "negative")


def contrast_groups(records) -> list[list[dict]]:
    """The contrast records by request and principle, each group's samples in order (the first
    sample's record has no `sample`)."""
    groups: dict[tuple, list[dict]] = {}
    for rec in records:
        groups.setdefault((rec["request_id"], rec["principle_id"]), []).append(rec)
    return [sorted(g, key=lambda r: r.get("sample", 0)) for g in groups.values()]


def gap(p: Principle, q_positive: dict, q_negative: dict) -> float:
    """How far apart two sides stand in the check's direction (0 for a yes-or-no check)."""
    signal = p.check.signal
    if signal == "words":
        return q_negative["words"] - q_positive["words"]
    if signal in ("relevance", "repetition"):
        ahead = q_positive[signal] - q_negative[signal]
        return ahead if signal == "relevance" else -ahead
    return 0.0


def best_sides(
    p: Principle,
    samples: list[dict],
    quality: dict,
    judged,
    judge_margin: float = 0.0,
    filters: PairFilters = PairFilters(enabled=False),
    passing_only: bool = False,
) -> tuple[dict, dict, dict] | None:
    """(positive record, negative record, signals): of every positive answer against every negative
    one among a request's samples, the pair the principle's check separates with the widest gap in
    its direction, those the quality filters pass first (`passing_only`: only those); None where no
    pair separates. `judged(id)`: the judge's two verdicts on a sample's own pair (a judge check
    reads no other)."""
    spared = FILTERS_SPARED.get(p.check.signal, ())
    found = []
    for pos in samples:
        for neg in samples:
            if p.check.signal == "judge" and pos is not neg:
                continue
            q = quality.get(f"{pos['id']}:positive"), quality.get(f"{neg['id']}:negative")
            ok, signals = separates(
                p, {**pos, "negative": neg["negative"]}, *q, judged(pos["id"]), judge_margin
            )
            if not ok:
                continue
            rule = (pos.get("constraint") or {}).get("instruction_id")
            passes = filter_reason(*q, rule, filters, spared) is None
            width = gap(p, *q) if None not in q else 0.0
            found.append((passes, width, pos, neg, signals))
    found = [f for f in found if f[0] or not passing_only]
    if not found:
        return None
    _, _, pos, neg, signals = max(found, key=lambda f: (f[0], f[1]))  # ties: the first in order
    return pos, neg, signals


def judge_jobs(contrasts, principles: list[Principle]) -> list[Job]:
    """The judge's questions on each contrast whose principle's check is the judge: which answer
    follows the principle's positive instruction better, asked in both orders (the negative side as
    A first), so a judge that names a position agrees with itself only by chance."""
    by_id, jobs = {p.id: p for p in principles}, []
    for rec in contrasts:
        p = by_id.get(rec["principle_id"])
        if not rec["ok"] or p is None or p.check is None or p.check.signal != "judge":
            continue
        common = {"request": rec["request"], "principle": p.contrast.positive}
        asked = both_orders(common, rec["negative"], rec["positive"])
        jobs += [
            Job(f"{rec['id']}-{order}", i, {"contrast_id": rec["id"]}) for order, i in asked.items()
        ]
    return jobs


def sampling_for(p: Principle, stage_sampling: Sampling) -> Sampling:
    """How principle `p`'s contrast is sampled: the stage's, with the principle's own cap where it
    sets one."""
    if p.contrast.max_tokens is None:
        return stage_sampling
    return stage_sampling.model_copy(update={"max_tokens": p.contrast.max_tokens})


def dispatch(makes: dict, principles: list[Principle], endpoint, sampling: Sampling, label: str):
    """A `run_jobs` call that answers each job with its principle's program (`makes`: principle id
    to a factory of its compiled Contrast), both sides, sampled as the stage says (`sampling`) with
    the principle's own cap, and records which prompt version did."""
    by_id = {p.id: p for p in principles}
    calls = {
        pid: (
            program_call(
                make, ("positive", "negative"), endpoint, sampling_for(by_id[pid], sampling)
            ),
            programs.version(make, f"{label}-{pid}"),
        )
        for pid, make in makes.items()
    }

    def call(job: Job, seed: int) -> dict:
        answer, version = calls[job.meta["principle_id"]]
        return {**answer(job, seed), "program": version}

    return call
