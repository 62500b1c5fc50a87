"""The quality filters: what keeps a pair from teaching a shortcut.

A loop that trains on its checkers' verdicts is satisfied by saying less and drifting off topic
(DESIGN.md). The chosen side must be relevant to the request (cai/data/quality.py's signals,
thresholds in `pair_filters`), not much less relevant than the rejected side, not much shorter
(unless a length rule asks for less), and neither repetitive nor boilerplate."""

from __future__ import annotations

from cai.config.settings import PairFilters


def acceptable(q: dict | None, filters: PairFilters, spared: tuple[str, ...] = ()) -> str | None:
    """Why an answer with signals `q` may not be a chosen side (a filter's name), or None; `spared`
    filters do not apply (a contrast's check may make them moot: cai/data/contrast.py)."""
    if q is None:
        return "unmeasured"
    if q["empty"] or q["boilerplate"]:
        return "boilerplate"
    if q["repetition"] > filters.max_repetition:
        return "repetition"
    if q["relevance"] < filters.min_relevance and "relevance" not in spared:
        return "relevance"
    return None


def filter_reason(
    chosen: dict | None,
    rejected: dict | None,
    constraint_id: str | None,
    filters: PairFilters,
    spared: tuple[str, ...] = (),
) -> str | None:
    """Which quality filter drops the pair (chosen's signals against rejected's), or None."""
    if not filters.enabled:
        return None
    if reason := acceptable(chosen, filters, spared):
        return reason
    if rejected is None:
        return "unmeasured"
    if (
        chosen["relevance"] < rejected["relevance"] - filters.max_relevance_drop
        and "relevance_margin" not in spared
    ):
        return "relevance_margin"
    asks_for_less = (constraint_id or "").startswith("length_constraints:") or "length" in spared
    if not asks_for_less and chosen["words"] < filters.min_length_ratio * rejected["words"]:
        return "length"
    return None


def best_of_n_sides(
    keeping: list[dict],
    breaking: list[dict],
    quality: dict,
    filters: PairFilters,
    constraint_id: str | None = None,
) -> tuple[dict, dict]:
    """(chosen, rejected): of the keeping x breaking combinations the quality filters let through,
    the one with the most relevant chosen side, then the most relevant rejected side (so the pair
    differs mainly in the rule); where none passes, the most relevant of each (which the filters
    then drop, and count). Without filters, the first of each.

    Taking the first passing combination rather than the two most relevant samples: on the first
    two stage-1 runs here, the most relevant breaking sample was often longer or more relevant than
    every keeping one, and the filters dropped half the candidates."""
    if not filters.enabled:
        return keeping[0], breaking[0]
    relevance = lambda s: (quality.get(s["id"]) or {}).get("relevance", -1.0)  # noqa: E731
    combos = sorted(
        ((c, r) for c in keeping for r in breaking),
        key=lambda cr: (-relevance(cr[0]), -relevance(cr[1])),
    )
    for chosen, rejected in combos:
        if (
            filter_reason(
                quality.get(chosen["id"]), quality.get(rejected["id"]), constraint_id, filters
            )
            is None
        ):
            return chosen, rejected
    fit = [s for s in keeping if acceptable(quality.get(s["id"]), filters) is None]
    return max(fit or keeping, key=relevance), max(breaking, key=relevance)
