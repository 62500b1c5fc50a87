"""Which side of a pair wins: the rule checker's verdict where it decides, else the judge's,
asked in both orders, with its margin read from the verdict token's log-probabilities."""

from __future__ import annotations

import math

from cai.data.constraints import keeps

SIDES = ("A", "B")


def verdict_margin(judgment: dict) -> float | None:
    """How sure the judge was: |P(A) - P(B)|, renormalised over the two, at its verdict token.

    None where the record kept no log-probabilities for a verdict token.
    """
    for position in judgment.get("logprobs") or []:
        if position["token"].strip() in SIDES:
            p = {
                s: sum(math.exp(lp) for tok, lp in position["top"].items() if tok.strip() == s)
                for s in SIDES
            }
            total = p["A"] + p["B"]
            return abs(p["A"] - p["B"]) / total if total else None
    return None


def judge_preference(
    ab: dict | None, ba: dict | None, min_margin: float = 0.0
) -> tuple[str | None, str]:
    """('revision' | 'original' | None, why).

    `ab` showed the original as A and the revision as B; `ba` the other way round. A
    preference needs both verdicts, the same side named in both orders, and a margin of
    at least `min_margin` in each.
    """
    if not (ab and ba and ab["ok"] and ba["ok"]):
        return None, "judge_unparsed"
    first = "revision" if ab["better"] == "B" else "original"
    second = "revision" if ba["better"] == "A" else "original"
    if first != second:
        return None, "judge_tie"
    if min_margin > 0:
        margins = [verdict_margin(ab), verdict_margin(ba)]
        if any(m is None or m < min_margin for m in margins):
            return None, "judge_margin"
    return first, "judge"


def checker_verdict(task: dict, original: str, revision: str) -> str | None:
    """'revision' or 'original' where the task's checker keeps exactly one of them, else None.

    The checker overrides the judge wherever it decides, so the judge step asks only
    where this is None.
    """
    kept_o = keeps(task.get("constraint"), task["prompt"], original)
    kept_r = keeps(task.get("constraint"), task["prompt"], revision)
    if kept_o is None or kept_o == kept_r:
        return None
    return "revision" if kept_r else "original"
