"""The scores of a stage's answers, each with its 95% interval: lm-eval's per-item metrics, the
quality suites on the answers they read, how each answer ended (its cap, a loop), and eval.json."""

from __future__ import annotations

from cai.data import quality
from cai.data.constraints import KINDS as TRAINED_KINDS, score_ifeval
from cai.data.refusal import is_refusal
from cai.measuring.intervals import (
    QUALITY_ON,
    REFUSAL_SCORES,
    mean_interval,
    mean_with_stderr,
    proportion,
)


def quality_scores(found: list[dict], off_topic_below: float) -> dict:
    """The quality suites from per-answer signals (cai/data/quality.py), each with its interval."""
    n = len(found)
    return {
        "relevance": mean_interval([q["relevance"] for q in found]),
        "off_topic": proportion(sum(q["relevance"] < off_topic_below for q in found), n),
        "repetition": mean_interval([q["repetition"] for q in found]),
        "length_words": mean_interval([q["words"] for q in found]),
        "boilerplate": proportion(sum(q["boilerplate"] or q["empty"] for q in found), n),
    }


def cap_shares(samples: dict[str, list[dict]], plan: list) -> dict:
    """Per suite: its cap, how many of its answers reached it or stopped on repetition, and how many
    of those that reached it would score otherwise cut at half their length (the cap's effect on the
    score: where none changes, where an answer is cut does not decide its item)."""
    cap_of = {s: b.cap for b in plan for s in b.suites}
    shares = {}
    for suite, rows in samples.items():
        reached, looped = (
            sum(r.get("finish") == how for r in rows) for how in ("cap", "repetition")
        )
        changed = [
            r["id"]
            for r in rows
            if r.get("finish") == "cap"
            and item_score(suite, r, r["response"][: len(r["response"]) // 2])
            != item_score(suite, r, r["response"])
        ]
        shares[suite] = {
            "cap": cap_of.get(suite),
            "n": len(rows),
            "reached_cap": reached,
            "stopped_repeating": looped,
            "share_reached_cap": round(reached / len(rows), 4) if rows else 0.0,
            "changed_if_cut_at_half": len(changed),
        }
    return shares


def item_score(suite: str, row: dict, text: str):
    """The item's score for `text` as its suite scores it (rule suites: prompt-level strict; refusal
    suites: refused)."""
    if suite in ("instruction_following", "ifeval"):
        return bool(score_ifeval(row["doc"], text)["prompt_level_strict_acc"])
    return is_refusal(text) if suite in REFUSAL_SCORES else None


def all_scores(samples: dict[str, list[dict]]) -> dict:
    """The suites' scores and the quality suites on the answers they read, each with its
    interval."""
    scores = score_suites(samples)
    if read := [r["quality"] for suite in QUALITY_ON for r in samples.get(suite, [])]:
        scores.update(quality_scores(read, quality.OFF_TOPIC_BELOW))
    return scores


def eval_record(
    policy: str,
    which: str,
    guard_mode: str,
    scores: dict,
    caps: dict,
    not_measured: dict,
    optimized: dict,
    programs: list[str],
) -> dict:
    """eval.json (dev) or test.json (test): the policy, the set, the guard's mode, every score, each
    suite's cap and the answers that reached it; what was not measured and why; and each compiled
    program's metric before and after compiling (from the optimize step's stats), where any."""
    record = {"model": policy, "set": which, "guard": guard_mode, **scores, "caps": caps}
    if not_measured:
        record["not_measured"] = not_measured
    if metrics := {
        name: {"before": optimized.get(f"{name}_before"), "after": optimized.get(f"{name}_after")}
        for name in programs
        if f"{name}_before" in optimized
    }:
        record["prompt_metrics"] = metrics
    return record


def score_suites(samples: dict[str, list[dict]]) -> dict:
    """The scores lm-eval's per-item metrics give, with intervals."""
    scores = {}
    if rows := samples.get("instruction_following"):
        for metric, name in [
            ("prompt_level_strict_acc", "instruction_following"),
            ("prompt_level_loose_acc", "instruction_following_loose"),
        ]:
            scores[name] = proportion(sum(bool(r["metrics"][metric]) for r in rows), len(rows))
        per_rule = [bool(x) for r in rows for x in r["metrics"]["inst_level_strict_acc"]]
        scores["instruction_following_inst_level"] = proportion(sum(per_rule), len(per_rule))
    for suite, name in REFUSAL_SCORES.items():  # the project's check, and Zou et al.'s strings
        if rows := samples.get(suite):
            for metric, suffix in (("refusal", ""), ("refusal_prefixes", "_prefixes")):
                refused = sum(r["metrics"][metric] for r in rows)
                scores[name + suffix] = proportion(refused, len(rows))
    # lm-eval's four IFEval figures, and instruction-level strict per rule kind
    if rows := samples.get("ifeval"):
        for metric, name in [
            ("prompt_level_strict_acc", "ifeval_prompt_strict"),
            ("prompt_level_loose_acc", "ifeval_prompt_loose"),
        ]:
            scores[name] = proportion(sum(bool(r["metrics"][metric]) for r in rows), len(rows))
        for metric, name in [
            ("inst_level_strict_acc", "ifeval_inst_strict"),
            ("inst_level_loose_acc", "ifeval_inst_loose"),
        ]:
            kept = [bool(x) for r in rows for x in r["metrics"][metric]]
            scores[name] = proportion(sum(kept), len(kept))
        kinds = {}
        for r in rows:
            for kind, kept in zip(
                r["doc"]["instruction_id_list"], r["metrics"]["inst_level_strict_acc"]
            ):
                kinds.setdefault(kind, []).append(bool(kept))
        scores["ifeval_by_kind"] = {
            kind: {**proportion(sum(v), len(v)), "trained": kind in TRAINED_KINDS}
            for kind, v in sorted(kinds.items())
        }
    return scores


def extra_task_scores(output: dict) -> dict:
    """`lm_eval:<task>:<metric>` for every metric of every task lm-eval ran."""
    scores = {}
    for task, metrics in output.get("results", {}).items():
        n = (output.get("n-samples", {}).get(task) or {}).get("effective", 0)
        for key, value in metrics.items():
            metric, _, filt = key.partition(",")
            if (
                metric.endswith("_stderr")
                or metric in ("alias", "sample_len")
                or not isinstance(value, (int, float))
            ):
                continue
            stderr = metrics.get(f"{metric}_stderr,{filt}")
            scores[f"lm_eval:{task}:{metric}"] = mean_with_stderr(float(value), stderr, n)
    return scores
