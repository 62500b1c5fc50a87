"""Turn a stage's records into preference pairs, each with where it came from.

Three sources:
- `contrast`: a principle's two answers to the same request, under its positive and its negative
  instruction (cai/data/contrast.py), where the principle's check separates them its way; the chosen
  side is the positive one, the prompt the bare request.
- `revision`: the original answer against its constitutional revision. A checkable
  constraint decides where exactly one side keeps it; otherwise the judge decides
  (where the stage trusts it: `judge` among its `pair_sources` and its measured
  agreement high enough), and only where it names the same side in both orders with at
  least `judge_margin` of probability between its two answers each time.
- `best_of_n`: two samples of the same task that the constraint checker separates
  (one keeps the rule, one breaks it): of the combinations the quality filters let
  through, the most relevant keeping sample against the most relevant breaking one, so
  the pair differs mainly in the rule it teaches.

Then the quality filters (cai/data/quality.py's signals, thresholds in `pair_filters`): the
chosen side must be relevant to the request, not much less relevant than the rejected
side, not much shorter (unless a length rule asks for less), and neither repetitive
nor boilerplate. Without them the checkers are satisfied by saying less and drifting
off topic (DESIGN.md).

Then the guard: a pair whose prompt or either side was flagged, or has no verdict, is
dropped and written to `safety.jsonl` with the reason instead.

Pairs are in TRL's conversational format: `prompt` is the exact messages the policy
was sent, `chosen`/`rejected` one assistant message each. Every pair carries the same
provenance fields (None where a field does not apply), so the set loads as one table.
"""

from __future__ import annotations

from collections import Counter, defaultdict

from cai.config.settings import PAIR_SOURCES, PairFilters
from cai.data.constraints import keeps
from cai.data.contrast import FILTERS_SPARED, best_sides, contrast_groups
from cai.data.filters import best_of_n_sides, filter_reason
from cai.data.quality import signals as quality_signals
from cai.data.verdicts import checker_verdict, judge_preference, verdict_margin


def build_pairs(
    stage: int,
    tasks,
    responses,
    critiques,
    revisions,
    judgments,
    guard_records=(),
    guard_mode: str = "off",
    judge_margin: float = 0.0,
    quality: dict | None = None,
    filters: PairFilters = PairFilters(enabled=False),
    sources=PAIR_SOURCES,
    contrasts=(),
    principles: dict | None = None,
) -> tuple[list[dict], Counter, list[dict]]:
    """The stage's pairs (the contrasts' first, then the tasks' in task order), counts of what was
    kept or dropped, and the pairs the guard dropped.

    `quality` maps each response, revision and contrast side (`<id>:positive`, `<id>:negative`) to
    its signals (cai/data/quality.py); the filters need it. `sources` is the stage's mix (`judge`
    only where it is trusted); `principles` the constitution's, by id, that the contrasts were made
    under.
    """
    if filters.enabled and quality is None:
        raise ValueError("pair filters need the quality signals")
    quality = quality or {}
    counts: Counter = Counter()
    candidates: list[dict] = []
    samples_of, revisions_of = defaultdict(list), defaultdict(list)
    for r in sorted(responses, key=lambda r: r["sample"]):
        if r["ok"]:
            samples_of[r["task_id"]].append(r)
    for r in revisions:
        revisions_of[r["task_id"]].append(r)
    by_id = {r["id"]: r for r in (*responses, *critiques, *judgments)}
    for samples in contrast_groups(contrasts if "contrast" in sources else ()):
        first = samples[0]  # the request's first sample: the pair is named after it
        p = (principles or {}).get(first["principle_id"])
        usable = [r for r in samples if r["ok"]]
        if p is None or p.check is None or not usable:
            counts[f"contrast_{first['principle_id']}_unusable"] += 1
            continue

        def judged(rid):
            return by_id.get(f"{rid}-ab"), by_id.get(f"{rid}-ba")

        found = best_sides(p, usable, quality, judged, judge_margin, filters)
        if found is None:
            counts[f"contrast_{p.id}_not_separated"] += 1
            continue
        positive, negative, signals = found
        request = {
            "id": first["request_id"],
            "source": first["requests"],
            "constraint": first.get("constraint"),
            "prompt": first["request"],
        }
        sides = [
            {"id": f"{rec['id']}:{side}", "model": rec.get("model"), "program": rec.get("program")}
            for rec, side in ((positive, "positive"), (negative, "negative"))
        ]
        candidates.append(
            _pair(
                f"{first['id']}-pair",
                stage,
                request,
                "contrast",
                p.check.signal,
                *sides,
                (positive["positive"], negative["negative"]),
                (signals["chosen"]["keeps_rule"], signals["rejected"]["keeps_rule"]),
                principle_id=p.id,
                prompt=first["pair_prompt"],
                quality=quality,
                contrast={
                    "requests": first["requests"],
                    "positive": p.contrast.positive,
                    "negative": p.contrast.negative,
                    "signal": p.check.signal,
                    "at_most": p.check.at_most,
                    "margin": p.check.margin,
                    "samples": len(usable),
                    **signals,
                },
            )
        )
    for task in tasks:
        samples = samples_of[task["id"]]
        constraint = task.get("constraint")
        # the stage had its pairs before it answered this task (respond's target_pairs)
        if not samples:
            counts["unanswered"] += 1
            continue

        # best-of-n: the checker separates a keeping sample from a breaking one
        if "best_of_n" in sources and constraint and len(samples) >= 2:
            verdicts = [keeps(constraint, task["prompt"], s["response"]) for s in samples]
            keeping = [s for s, ok in zip(samples, verdicts) if ok]
            breaking = [s for s, ok in zip(samples, verdicts) if not ok]
            if keeping and breaking:
                chosen, rejected = best_of_n_sides(
                    keeping, breaking, quality, filters, constraint.get("instruction_id")
                )
                candidates.append(
                    _pair(
                        f"{task['id']}-best_of_n",
                        stage,
                        task,
                        "best_of_n",
                        "constraint",
                        chosen,
                        rejected,
                        (chosen["response"], rejected["response"]),
                        (True, False),
                        quality=quality,
                    )
                )
            else:
                counts["dropped_best_of_n_not_separated"] += 1

        # revision against original
        for rev in revisions_of[task["id"]]:
            if not rev["ok"]:
                counts["dropped_revision_unparseable"] += 1
                continue
            original, critique = by_id[rev["response_id"]], by_id[rev["critique_id"]]
            if rev["revision"].strip() == original["response"].strip():
                counts["dropped_revision_unchanged"] += 1
                continue
            ab, ba = by_id.get(rev["id"] + "-ab"), by_id.get(rev["id"] + "-ba")
            winner = checker_verdict(task, original["response"], rev["revision"])
            decided_by = "constraint"
            if winner is not None and "revision" not in sources:
                counts["dropped_revision_not_a_source"] += 1
                continue
            if winner is None and "judge" not in sources:
                counts["dropped_judge_not_trusted"] += 1
                continue
            if winner is None:
                winner, decided_by = judge_preference(ab, ba, judge_margin)
            if winner is None:
                counts[f"dropped_{decided_by}"] += 1
                continue
            sides = (rev, original) if winner == "revision" else (original, rev)
            texts = tuple(s.get("revision", s.get("response")) for s in sides)
            candidates.append(
                _pair(
                    f"{rev['id']}-pair",
                    stage,
                    task,
                    "revision",
                    decided_by,
                    *sides,
                    texts,
                    tuple(keeps(constraint, task["prompt"], t) for t in texts),
                    principle_id=rev["principle_id"],
                    critique=critique.get("critique"),
                    judge={
                        "ab": ab and ab.get("better"),
                        "ba": ba and ba.get("better"),
                        "margin_ab": ab and verdict_margin(ab),
                        "margin_ba": ba and verdict_margin(ba),
                    },
                    prompt=original.get("messages"),
                    quality=quality,
                )
            )

    pairs, unsafe, chosen_texts = [], [], Counter()
    verdict_of = {g["target"]: g["verdict"] for g in guard_records}
    for pair in candidates:
        p = pair["provenance"]
        counts[f"candidates_{p['source']}"] += 1
        signal = (p["contrast"] or {}).get("signal")
        if reason := filter_reason(
            p["quality"]["chosen"],
            p["quality"]["rejected"],
            p["constraint"]["id"],
            filters,
            FILTERS_SPARED.get(signal, ()) if p["source"] == "contrast" else (),
        ):
            counts[f"dropped_filter_{reason}"] += 1
            continue
        if guard_mode != "off":
            found = {
                "prompt": verdict_of.get(p["task_id"]),
                "chosen": verdict_of.get(p["chosen"]["record_id"]),
                "rejected": verdict_of.get(p["rejected"]["record_id"]),
            }
            p["guard"] = {"mode": guard_mode, **found}
            # A refusal pair answers a request for harm, and its rejected side complies by design:
            # what it teaches is the chosen side, which must be safe; otherwise all three must be.
            # No verdict: unsafe (fail-closed).
            checked = ("chosen",) if signal == "refusal" else tuple(found)
            flagged = [k for k in checked if found[k] is None or not found[k]["safe"]]
            if flagged:
                counts["dropped_unsafe"] += 1
                unsafe.append(
                    {
                        "id": pair["id"],
                        "task_id": p["task_id"],
                        "stage": stage,
                        "flagged": flagged,
                        "reason": "; ".join(_why(k, found[k]) for k in flagged),
                        "guard": p["guard"],
                        "pair": pair,
                    }
                )
                continue
        same = " ".join(pair["chosen"][0]["content"].lower().split())
        if filters.enabled and chosen_texts[same] >= filters.max_same_chosen:
            counts["dropped_filter_same_chosen"] += 1  # one answer learned for many requests
            continue
        chosen_texts[same] += 1
        counts[f"kept_{p['source']}_by_{p['decided_by']}"] += 1
        if p["source"] == "contrast":
            counts[f"contrast_{p['principle_id']}_kept"] += 1
        pairs.append(pair)

    counts["pairs"] = len(pairs)
    return pairs, counts, unsafe


def _why(side: str, verdict: dict | None) -> str:
    if verdict is None:
        return f"{side}: no guard verdict"
    if not verdict["parsed"]:
        return f"{side}: guard verdict did not parse"
    return f"{side}: unsafe ({','.join(verdict['categories']) or 'no category given'})"


def _pair(
    pair_id: str,
    stage: int,
    task: dict,
    source: str,
    decided_by: str,
    chosen: dict,
    rejected: dict,
    texts: tuple[str, str],
    kept: tuple[bool | None, bool | None],
    principle_id: str | None = None,
    critique: str | None = None,
    judge: dict | None = None,
    prompt: list | None = None,
    quality: dict | None = None,
    contrast: dict | None = None,
) -> dict:
    constraint = task.get("constraint") or {}
    quality = quality or {}
    return {
        "id": pair_id,
        "prompt": prompt or chosen.get("messages") or [{"role": "user", "content": task["prompt"]}],
        "chosen": [{"role": "assistant", "content": texts[0]}],
        "rejected": [{"role": "assistant", "content": texts[1]}],
        "provenance": {
            "stage": stage,
            "task_id": task["id"],
            "task_source": task["source"],
            "source": source,
            "decided_by": decided_by,
            "principle_id": principle_id,
            "critique": critique,
            "judge": judge or {"ab": None, "ba": None, "margin_ab": None, "margin_ba": None},
            "constraint": {
                "id": constraint.get("instruction_id"),
                "description": constraint.get("description"),
                "chosen_keeps": kept[0],
                "rejected_keeps": kept[1],
            },
            "guard": {"mode": "off", "prompt": None, "chosen": None, "rejected": None},
            "quality": {
                "chosen": quality.get(chosen["id"]),
                "rejected": quality.get(rejected["id"]),
            },
            # the instructions, the check and both sides' propositions (contrast pairs only)
            "contrast": contrast,
            "chosen": _side(chosen),
            "rejected": _side(rejected),
        },
    }


def _side(record: dict) -> dict:
    """Which record, adapter and prompt version produced a side of the pair."""
    return {
        "record_id": record["id"],
        "model": record.get("model"),
        "program": record.get("program"),
    }


def trusted_sources(st, optimized: dict) -> tuple[list[str], dict]:
    """Stage `st`'s pair sources as far as they are trusted: `judge` only where the judge, compiled
    this stage, agreed with the checker on held-out pairs (`optimized`: the optimize step's stats,
    its dev set) at least `judge_min_agreement` of the time. At 135M it does not (DESIGN.md)."""
    sources, agreement = list(st.pair_sources), optimized.get("judge_after")
    if "judge" in sources and (agreement is None or agreement < st.judge_min_agreement):
        sources.remove("judge")
    return sources, {
        "judge_agreement": agreement,
        "judge_agreement_n": optimized.get("judge_dev"),
        "judge_trusted": "judge" in sources,
    }


def best_of_n_count(
    stage: int, tasks: list[dict], responses, signals: dict, filters: PairFilters, embedder
) -> int:
    """Best-of-n pairs the answers to `tasks` hold that pass the quality filters (what respond aims
    at); `signals` keeps each answer's quality signals (cai/data/quality.py, under `embedder`) from
    one call to the next."""
    by_task = {t["id"]: t for t in tasks}
    answers = [r for r in responses if r["ok"] and r["task_id"] in by_task]
    new = [r for r in answers if r["id"] not in signals]
    found = quality_signals(
        [by_task[r["task_id"]]["request"] for r in new], [r["response"] for r in new], embedder
    )
    signals.update({r["id"]: q for r, q in zip(new, found)})
    return build_pairs(
        stage, tasks, answers, [], [], [], quality=signals, filters=filters, sources=["best_of_n"]
    )[1]["pairs"]
