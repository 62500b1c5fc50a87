"""Pair building on fixture records: who decides, what is dropped, what is recorded."""

import math

import pytest

from cai.config.settings import PairFilters
from cai.data.pairs import build_pairs
from cai.data.verdicts import judge_preference, verdict_margin

NO_COMMA = {"instruction_id": "punctuation:no_comma", "kwargs": {}, "description": "Use no commas."}
PROVENANCE = {
    "stage",
    "task_id",
    "task_source",
    "source",
    "decided_by",
    "principle_id",
    "critique",
    "judge",
    "constraint",
    "guard",
    "quality",
    "contrast",
    "chosen",
    "rejected",
}
MESSAGES = [
    {"role": "system", "content": "sys"},
    {"role": "user", "content": "Name fruits. Use no commas."},
]


def task(tid="s1-seed00", constraint=NO_COMMA):
    return {
        "id": tid,
        "source": "seed",
        "request": "Name fruits.",
        "prompt": "Name fruits. Use no commas.",
        "constraint": constraint,
        "stage": 1,
    }


def response(tid, k, text):
    return {
        "id": f"{tid}-r{k}",
        "task_id": tid,
        "sample": k,
        "ok": True,
        "response": text,
        "messages": MESSAGES,
        "model": "stage0",
        "program": "stage1/respond",
    }


def chain(tid, original_id, revision, ab, ba):
    crit = {
        "id": f"{original_id}-c",
        "task_id": tid,
        "response_id": original_id,
        "principle_id": "follow-the-instruction",
        "ok": True,
        "critique": "It uses commas.",
        "program": "stage1/critique",
    }
    rev = {
        "id": f"{original_id}-v",
        "task_id": tid,
        "response_id": original_id,
        "critique_id": crit["id"],
        "principle_id": "follow-the-instruction",
        "ok": True,
        "revision": revision,
        "model": "stage0",
        "program": "stage1/revise",
    }
    judgments = [
        {"id": rev["id"] + "-ab", "ok": ab is not None, "better": ab},
        {"id": rev["id"] + "-ba", "ok": ba is not None, "better": ba},
    ]
    return [crit], [rev], judgments


def judged(better, p_a):
    """A judgment whose verdict token had probability p_a for A (and 1 - p_a for B)."""
    top = {"A": math.log(p_a), "B": math.log(1 - p_a)}
    return {"ok": True, "better": better, "logprobs": [{"token": better, "top": top}]}


def test_judge_must_agree_in_both_orders():
    assert (
        judge_preference({"ok": True, "better": "B"}, {"ok": True, "better": "A"})[0] == "revision"
    )
    assert (
        judge_preference({"ok": True, "better": "A"}, {"ok": True, "better": "B"})[0] == "original"
    )
    # position bias
    assert judge_preference({"ok": True, "better": "A"}, {"ok": True, "better": "A"}) == (
        None,
        "judge_tie",
    )
    assert judge_preference({"ok": False}, {"ok": True, "better": "A"}) == (None, "judge_unparsed")


def test_judge_margin_must_pass_in_both_orders():
    sure, unsure = judged("B", 0.1), judged("A", 0.55)  # margins 0.8 and 0.1
    assert verdict_margin(sure) == pytest.approx(0.8) and verdict_margin(unsure) == pytest.approx(
        0.1
    )
    assert judge_preference(sure, judged("A", 0.9), min_margin=0.5)[0] == "revision"
    assert judge_preference(sure, unsure, min_margin=0.5) == (None, "judge_margin")
    # no log-probabilities kept: the margin cannot be shown, so it does not pass
    assert judge_preference(
        {"ok": True, "better": "B"}, {"ok": True, "better": "A"}, min_margin=0.5
    ) == (None, "judge_margin")


def test_best_of_n_only_where_the_checker_separates():
    t = task()
    separated = [response(t["id"], 0, "apple, pear"), response(t["id"], 1, "apple and pear")]
    pairs, counts, _ = build_pairs(1, [t], separated, [], [], [])
    assert len(pairs) == 1 and pairs[0]["provenance"]["source"] == "best_of_n"
    assert (
        pairs[0]["chosen"][0]["content"] == "apple and pear"
        and pairs[0]["rejected"][0]["content"] == "apple, pear"
    )
    assert pairs[0]["provenance"]["constraint"] == {
        "id": "punctuation:no_comma",
        "description": "Use no commas.",
        "chosen_keeps": True,
        "rejected_keeps": False,
    }
    both_keep = [response(t["id"], 0, "apple"), response(t["id"], 1, "pear")]
    pairs, counts, _ = build_pairs(1, [t], both_keep, [], [], [])
    assert pairs == [] and counts["dropped_best_of_n_not_separated"] == 1


def test_constraint_overrides_the_judge():
    t = task()
    orig = response(t["id"], 0, "apple, pear")
    # judge prefers the original
    crit, rev, judg = chain(t["id"], orig["id"], "apple and pear", "A", "B")
    (pair,) = build_pairs(1, [t], [orig], crit, rev, judg)[0]
    assert pair["provenance"]["decided_by"] == "constraint"
    assert pair["chosen"][0]["content"] == "apple and pear"


def test_judge_decides_without_a_constraint_and_ties_are_dropped():
    t = task(constraint=None)
    orig = response(t["id"], 0, "apples")
    crit, rev, judg = chain(t["id"], orig["id"], "Apples and pears are fruits.", "B", "A")
    (pair,) = build_pairs(1, [t], [orig], crit, rev, judg)[0]
    assert pair["provenance"]["decided_by"] == "judge" and pair["chosen"][0]["content"].startswith(
        "Apples and"
    )
    crit, rev, judg = chain(t["id"], orig["id"], "Apples and pears are fruits.", "A", "A")
    pairs, counts, _ = build_pairs(1, [t], [orig], crit, rev, judg)
    assert pairs == [] and counts["dropped_judge_tie"] == 1


def all_kinds_of_pair():
    """Records that make one best-of-n pair and one revision pair, with guard verdicts on
    everything."""
    t = task()
    samples = [response(t["id"], 0, "apple, pear"), response(t["id"], 1, "apple and pear")]
    crit, rev, judg = chain(t["id"], samples[0]["id"], "pear and apple", "B", "A")
    safe = {"safe": True, "categories": [], "parsed": True}
    guard = [
        {"target": i, "verdict": safe}
        for i in (t["id"], samples[0]["id"], samples[1]["id"], rev[0]["id"])
    ]
    return t, samples, crit, rev, judg, guard


def test_every_pair_carries_every_provenance_field():
    t, samples, crit, rev, judg, guard = all_kinds_of_pair()
    pairs, counts, _ = build_pairs(1, [t], samples, crit, rev, judg, guard, guard_mode="self")
    assert sorted(p["provenance"]["source"] for p in pairs) == ["best_of_n", "revision"]
    for pair in pairs:
        assert pair["prompt"] == MESSAGES
        assert pair["chosen"][0]["role"] == pair["rejected"][0]["role"] == "assistant"
        prov = pair["provenance"]
        assert set(prov) == PROVENANCE
        assert set(prov["judge"]) == {"ab", "ba", "margin_ab", "margin_ba"}
        assert set(prov["constraint"]) == {"id", "description", "chosen_keeps", "rejected_keeps"}
        assert prov["guard"]["mode"] == "self" and all(
            prov["guard"][k]["safe"] for k in ("prompt", "chosen", "rejected")
        )
        for side in ("chosen", "rejected"):
            assert (
                prov[side]["record_id"]
                and prov[side]["model"] == "stage0"
                and prov[side]["program"].startswith("stage1/")
            )
    revision = next(p for p in pairs if p["provenance"]["source"] == "revision")
    assert (
        revision["provenance"]["principle_id"] == "follow-the-instruction"
        and revision["provenance"]["critique"]
    )


def test_nothing_the_guard_flags_reaches_the_pairs():
    t, samples, crit, rev, judg, guard = all_kinds_of_pair()
    flagged = {"safe": False, "categories": ["S1"], "parsed": True}
    guard = [g if g["target"] != rev[0]["id"] else {**g, "verdict": flagged} for g in guard]
    guard = [g for g in guard if g["target"] != samples[1]["id"]]  # no verdict at all: fail-closed
    pairs, counts, unsafe = build_pairs(1, [t], samples, crit, rev, judg, guard, guard_mode="self")
    assert pairs == [] and counts["dropped_unsafe"] == 2
    reasons = {u["pair"]["provenance"]["source"]: u["reason"] for u in unsafe}
    assert (
        reasons["revision"] == "chosen: unsafe (S1)" and "no guard verdict" in reasons["best_of_n"]
    )
    # with the guard off, the same records pass
    assert len(build_pairs(1, [t], samples, crit, rev, judg, guard, guard_mode="off")[0]) == 2


def signal(relevance, words=20, repetition=0.0, boilerplate=False):
    return {
        "relevance": relevance,
        "words": words,
        "repetition": repetition,
        "boilerplate": boilerplate,
        "empty": words == 0,
    }


def test_a_keeping_but_off_topic_sample_is_never_chosen():
    t = task()
    samples = [
        response(t["id"], 0, "I like trains and I like boats"),  # keeps the rule, off topic
        response(t["id"], 1, "apple and pear and plum"),  # keeps, on topic
        response(t["id"], 2, "apple, pear, plum"),  # breaks
        response(t["id"], 3, "well, trains"),
    ]  # breaks, off topic
    quality = {s["id"]: signal(r) for s, r in zip(samples, (0.05, 0.7, 0.72, 0.1))}
    pairs, _, _ = build_pairs(1, [t], samples, [], [], [], quality=quality, filters=PairFilters())
    assert [(p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in pairs] == [
        ("apple and pear and plum", "apple, pear, plum")
    ]
    assert pairs[0]["provenance"]["quality"] == {
        "chosen": quality[samples[1]["id"]],
        "rejected": quality[samples[2]["id"]],
    }
    # only the off-topic sample keeps the rule: no pair, and the filter that stopped it is counted
    only_off_topic = [samples[0], samples[2]]
    pairs, counts, _ = build_pairs(
        1, [t], only_off_topic, [], [], [], quality=quality, filters=PairFilters()
    )
    assert pairs == [] and counts["dropped_filter_relevance"] == 1
    # with the filters off the same records give the off-topic pair: the filters are what stop it
    pairs, _, _ = build_pairs(
        1, [t], only_off_topic, [], [], [], quality=quality, filters=PairFilters(enabled=False)
    )
    assert pairs[0]["chosen"][0]["content"] == "I like trains and I like boats"


def test_chosen_much_less_relevant_than_rejected_is_dropped():
    t = task()
    samples = [response(t["id"], 0, "fruit and more fruit"), response(t["id"], 1, "apple, pear")]
    quality = {samples[0]["id"]: signal(0.45), samples[1]["id"]: signal(0.8)}
    pairs, counts, _ = build_pairs(
        1, [t], samples, [], [], [], quality=quality, filters=PairFilters()
    )
    assert pairs == [] and counts["dropped_filter_relevance_margin"] == 1


@pytest.mark.parametrize(
    "constraint,kept",
    [
        (NO_COMMA, False),  # no rule about length: the shorter side may not win
        (
            {
                "instruction_id": "length_constraints:number_words",
                "kwargs": {"relation": "less than", "num_words": 5},
                "description": "Answer with less than 5 words.",
            },
            True,
        ),  # the rule asks for less: it may
    ],
)
def test_a_shorter_side_wins_only_where_a_length_rule_asks_for_it(constraint, kept):
    t = task(constraint=constraint)
    t["prompt"] = "Name fruits. " + constraint["description"]
    long_breaking = "apple, pear, plum, cherry, grape, melon, kiwi, lime, fig, date, peach, mango"
    short_keeping = "apple and pear"
    samples = [response(t["id"], 0, long_breaking), response(t["id"], 1, short_keeping)]
    quality = {samples[0]["id"]: signal(0.7, words=12), samples[1]["id"]: signal(0.7, words=3)}
    pairs, counts, _ = build_pairs(
        1, [t], samples, [], [], [], quality=quality, filters=PairFilters()
    )
    assert (len(pairs) == 1) is kept
    assert counts["dropped_filter_length"] == (0 if kept else 1)


@pytest.mark.parametrize(
    "bad,reason",
    [
        (signal(0.7, repetition=0.6), "repetition"),
        (signal(0.7, boilerplate=True), "boilerplate"),
        (signal(0.0, words=0), "boilerplate"),
    ],
)
def test_repetitive_boilerplate_or_empty_sides_are_never_chosen(bad, reason):
    t = task()
    samples = [response(t["id"], 0, "apple, pear"), response(t["id"], 1, "apple and pear")]
    quality = {samples[0]["id"]: signal(0.7), samples[1]["id"]: bad}
    pairs, counts, _ = build_pairs(
        1, [t], samples, [], [], [], quality=quality, filters=PairFilters()
    )
    assert pairs == [] and counts[f"dropped_filter_{reason}"] == 1


def test_revision_pairs_pass_the_same_filters():
    t, samples, crit, rev, judg, guard = all_kinds_of_pair()
    quality = {r["id"]: signal(0.7) for r in (*samples, *rev)}
    quality[rev[0]["id"]] = signal(0.1)  # the revision the checker prefers drifted off topic
    pairs, counts, _ = build_pairs(
        1,
        [t],
        samples,
        crit,
        rev,
        judg,
        guard,
        guard_mode="self",
        quality=quality,
        filters=PairFilters(),
    )
    assert [p["provenance"]["source"] for p in pairs] == ["best_of_n"] and counts[
        "dropped_filter_relevance"
    ] == 1


def test_the_stage_mix_decides_which_sources_make_pairs():
    t, samples, crit, rev, judg, guard = all_kinds_of_pair()
    pairs, counts, _ = build_pairs(
        1, [t], samples, crit, rev, judg, guard, guard_mode="self", sources=["revision"]
    )
    assert [p["provenance"]["source"] for p in pairs] == ["revision"]
    pairs, counts, _ = build_pairs(
        1, [t], samples, crit, rev, judg, guard, guard_mode="self", sources=["best_of_n"]
    )
    assert [p["provenance"]["source"] for p in pairs] == ["best_of_n"] and counts[
        "dropped_revision_not_a_source"
    ] == 1
    # a revision only the judge can decide: kept where the judge is a source, dropped and counted
    # where not
    t = task(constraint=None)
    orig = response(t["id"], 0, "apples")
    crit, rev, judg = chain(t["id"], orig["id"], "Apples and pears are fruits.", "B", "A")
    (pair,) = build_pairs(
        1, [t], [orig], crit, rev, judg, sources=["best_of_n", "revision", "judge"]
    )[0]
    assert pair["provenance"]["decided_by"] == "judge" and pair["provenance"]["judge"]["ab"] == "B"
    pairs, counts, _ = build_pairs(
        1, [t], [orig], crit, rev, judg, sources=["best_of_n", "revision"]
    )
    assert pairs == [] and counts["dropped_judge_not_trusted"] == 1
