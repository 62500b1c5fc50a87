"""How much a principle's contrast yields: each request answered again, both sides, while the
principle's check separates no pair of its samples (best-of-n on the principle's own signal), and
the figures of what it made: what the contrast step runs, what the dry run of a constitution prints
(`bootstrap.py principles`), and what the manifest and the report say of a principle that made no
pair."""

from __future__ import annotations

import json
from collections import Counter

from cai.config.constitution import Principle
from cai.data.constraints import keeps
from cai.data.contrast import (
    FILTERS_SPARED,
    SIDES,
    best_sides,
    contrast_groups,
    no_verdicts,
)
from cai.data.filters import filter_reason
from cai.data.quality import signals as quality_signals
from cai.data.refusal import is_refusal
from cai.serving.lm import Job, run_jobs


def answer(
    jobs: list[Job],
    call,
    out,
    principles: list[Principle],
    st,
    embedder,
    concurrency: int,
    seed: int,
    label: str,
) -> Counter:
    """Each job answered, both sides, once; then again, up to `st.counts.contrast_samples` times,
    each request whose samples so far hold no pair its principle's check separates and the quality
    filters pass. Returns `run_jobs`' counts and how many requests each round asked."""
    stats, signals, pending = Counter(), {}, jobs
    for k in range(st.counts.contrast_samples):
        if k:  # another sample of each request its samples do not yet separate
            found = unseparated(jobs, out, principles, signals, embedder, st.pair_filters)
            pending = [resample(job, k) for job in found]
        progress = f"{label} contrast" + (f", sample {k + 1}" if k else "")
        stats.update(
            run_jobs(pending, call, out, concurrency, seed, f"{label}/contrast", progress=progress)
        )
        stats[f"sample_{k + 1}_requests"] = len(pending)
    return stats


def resample(job: Job, k: int) -> Job:
    """The request's k-th further sample: its own id, hence its own seed."""
    return Job(f"{job.id}-s{k}", job.inputs, {**job.meta, "sample": k})


def unseparated(
    jobs: list[Job], out, principles: list[Principle], signals: dict, embedder, filters
) -> list[Job]:
    """The requests (their first job) whose samples so far hold no pair that the principle's check
    separates and the quality filters pass; a judge's check is not read before the judge step, so
    its requests are never sampled again. `signals` keeps each side's quality signals from one
    call to the next."""
    by_id, pending = {p.id: p for p in principles}, []
    for job in jobs:
        p = by_id[job.meta["principle_id"]]
        samples = [r for r in samples_of(job.id, out) if r["ok"]]
        if p.check.signal == "judge":
            continue
        sides = [(f"{r['id']}:{s}", r["request"], r[s]) for r in samples for s in SIDES]
        new = [side for side in sides if side[0] not in signals]
        if new:
            requests, texts = [r for _, r, _ in new], [text for *_, text in new]
            found = quality_signals(requests, texts, embedder)
            signals.update({rid: q for (rid, _, _), q in zip(new, found)})
        if not best_sides(p, samples, signals, no_verdicts, filters=filters, passing_only=True):
            pending.append(job)
    return pending


def samples_of(first_id: str, out) -> list[dict]:
    """A request's contrast records so far: its first, then each further sample in order."""
    found = []
    while (rec := out.get(first_id if not found else f"{first_id}-s{len(found)}")) is not None:
        found.append(rec)
    return found


def check_text(p: Principle) -> str:
    """The principle's check in words: `words at most 40`, `relevance by 0.1`, `refusal`."""
    c = p.check
    if c.signal == "words":
        return f"words at most {c.at_most}" if c.at_most else f"words shorter by {c.margin:.0%}"
    if c.rule:
        return f"rule {c.rule} {json.dumps(c.kwargs)}" if c.kwargs else f"rule {c.rule}"
    return f"{c.signal} by {c.margin:g}" if c.margin else c.signal


def yields(
    records, principles: list[Principle], quality: dict, filters, judged=no_verdicts
) -> dict:
    """Per principle: the requests it answered and their samples, how many its check separates
    (`separated`) and how many of those the quality filters pass (`passing`), and each side's signals
    over its samples (mean words and relevance; shares refused and keeping the task's rule): what
    the dry run prints and the report says of a principle that made no pair."""
    by_id, found = {p.id: p for p in principles}, {}
    for group in contrast_groups(records):
        p, samples = by_id.get(group[0]["principle_id"]), [r for r in group if r["ok"]]
        if p is None or p.check is None or not samples:
            continue
        f = found.setdefault(p.id, {"check": check_text(p), "requests": 0, "samples": 0})
        f.update(separated=f.get("separated", 0), passing=f.get("passing", 0))
        f["requests"] += 1
        f["samples"] += len(samples)
        separated = best_sides(p, samples, quality, judged)
        passing = best_sides(p, samples, quality, judged, filters=filters, passing_only=True)
        f["separated"] += separated is not None
        f["passing"] += passing is not None
        if separated and not passing:  # the filter that dropped its best pair
            pos, neg, _ = separated
            q = quality.get(f"{pos['id']}:positive"), quality.get(f"{neg['id']}:negative")
            rule = (pos.get("constraint") or {}).get("instruction_id")
            spared = FILTERS_SPARED.get(p.check.signal, ())
            reason = filter_reason(*q, rule, filters, spared)
            f.setdefault("filtered", {}).setdefault(reason, 0)
            f["filtered"][reason] += 1
        for side in SIDES:
            texts = [(r[side], quality.get(f"{r['id']}:{side}"), r) for r in samples]
            signals = f.setdefault(
                side, {"words": [], "relevance": [], "refused": [], "keeps_rule": []}
            )
            signals["words"] += [q["words"] for _, q, _ in texts if q]
            signals["relevance"] += [q["relevance"] for _, q, _ in texts if q]
            signals["refused"] += [is_refusal(text) for text, _, _ in texts]
            rules = [
                keeps(r["constraint"], r["request"], t) for t, _, r in texts if r.get("constraint")
            ]
            signals["keeps_rule"] += rules
    for f in found.values():
        for side in SIDES:
            f[side] = {k: round(sum(v) / len(v), 3) if v else None for k, v in f[side].items()}
    return found


def sides_text(f: dict) -> str:
    """A principle's two sides in figures: `positive 24 words, relevance 0.61, refused 0%; ...`."""

    def one(s: dict) -> str:
        parts = [f"{s['words']:.0f} words" if s["words"] is not None else "no words measured"]
        parts += [f"relevance {s['relevance']:.2f}"] if s["relevance"] is not None else []
        parts += [f"refused {s['refused']:.0%}"]
        parts += [f"rule kept {s['keeps_rule']:.0%}"] if s["keeps_rule"] is not None else []
        return ", ".join(parts)

    return f"positive {one(f['positive'])}; negative {one(f['negative'])}"


def why_no_pair(f: dict) -> str:
    """Why a principle's contrast made no pair, with the figures the dry run prints."""
    asked = f"{f['requests']} requests, {f['samples']} samples"
    if not f["separated"]:
        return f"its check ({f['check']}) separated none of {asked}: {sides_text(f)}"
    if not f["passing"]:
        why = ", ".join(f"{k} {v}" for k, v in f.get("filtered", {}).items())
        return f"the quality filters ({why}) dropped all {f['separated']} pairs its check separated"
    return (
        f"the guard or the cap on one chosen text dropped all {f['passing']} pairs left ({asked})"
    )
