"""Pair building on fixture records: who decides, what is dropped, what is recorded."""

from cai.pairs import build_pairs, judge_preference

NO_COMMA = {"instruction_id": "punctuation:no_comma", "kwargs": {}, "description": "Use no commas."}
MESSAGES = [{"role": "system", "content": "sys"}, {"role": "user", "content": "Name fruits. Use no commas."}]


def task(tid="s1-seed00", constraint=NO_COMMA):
    return {"id": tid, "source": "seed", "request": "Name fruits.", "prompt": "Name fruits. Use no commas.", "constraint": constraint, "stage": 1}


def response(tid, k, text):
    return {"id": f"{tid}-r{k}", "task_id": tid, "sample": k, "ok": True, "response": text, "messages": MESSAGES,
            "model": "stage0", "program": "stage1/respond"}


def chain(tid, original_id, revision, ab, ba):
    crit = {"id": f"{original_id}-c", "task_id": tid, "response_id": original_id, "principle_id": "follow-the-instruction",
            "ok": True, "critique": "It uses commas.", "program": "stage1/critique"}
    rev = {"id": f"{original_id}-v", "task_id": tid, "response_id": original_id, "critique_id": crit["id"],
           "principle_id": "follow-the-instruction", "ok": True, "revision": revision, "model": "stage0", "program": "stage1/revise"}
    judgments = [{"id": rev["id"] + "-ab", "ok": ab is not None, "better": ab}, {"id": rev["id"] + "-ba", "ok": ba is not None, "better": ba}]
    return [crit], [rev], judgments


def test_judge_must_agree_in_both_orders():
    assert judge_preference({"ok": True, "better": "B"}, {"ok": True, "better": "A"}) == "revision"
    assert judge_preference({"ok": True, "better": "A"}, {"ok": True, "better": "B"}) == "original"
    assert judge_preference({"ok": True, "better": "A"}, {"ok": True, "better": "A"}) is None  # position bias
    assert judge_preference({"ok": False}, {"ok": True, "better": "A"}) is None


def test_best_of_n_only_where_the_checker_separates():
    t = task()
    separated = [response(t["id"], 0, "apple, pear"), response(t["id"], 1, "apple and pear")]
    pairs, counts = build_pairs(1, [t], separated, [], [], [])
    assert len(pairs) == 1 and pairs[0]["provenance"]["source"] == "best_of_n"
    assert pairs[0]["chosen"][0]["content"] == "apple and pear" and pairs[0]["rejected"][0]["content"] == "apple, pear"
    both_keep = [response(t["id"], 0, "apple"), response(t["id"], 1, "pear")]
    assert build_pairs(1, [t], both_keep, [], [], [])[0] == []


def test_constraint_overrides_the_judge():
    t = task()
    orig = response(t["id"], 0, "apple, pear")
    crit, rev, judg = chain(t["id"], orig["id"], "apple and pear", "A", "B")  # judge prefers the original
    pairs, counts = build_pairs(1, [t], [orig], crit, rev, judg)
    (pair,) = pairs
    assert pair["provenance"]["decided_by"] == "constraint"
    assert pair["chosen"][0]["content"] == "apple and pear"


def test_judge_decides_without_a_constraint_and_ties_are_dropped():
    t = task(constraint=None)
    orig = response(t["id"], 0, "apples")
    crit, rev, judg = chain(t["id"], orig["id"], "Apples and pears are fruits.", "B", "A")
    (pair,) = build_pairs(1, [t], [orig], crit, rev, judg)[0]
    assert pair["provenance"]["decided_by"] == "judge" and pair["chosen"][0]["content"].startswith("Apples and")
    crit, rev, judg = chain(t["id"], orig["id"], "Apples and pears are fruits.", "A", "A")
    pairs, counts = build_pairs(1, [t], [orig], crit, rev, judg)
    assert pairs == [] and counts["dropped_judge_tie"] == 1


def test_pairs_are_trl_conversational_with_provenance():
    t = task()
    orig = response(t["id"], 0, "apple, pear")
    crit, rev, judg = chain(t["id"], orig["id"], "apple and pear", "B", "A")
    (pair,) = build_pairs(1, [t], [orig], crit, rev, judg)[0]
    assert pair["prompt"] == MESSAGES
    assert pair["chosen"][0]["role"] == pair["rejected"][0]["role"] == "assistant"
    prov = pair["provenance"]
    for key in ("stage", "task_id", "task_source", "source", "principle_id", "critique", "judge", "constraint_kept", "sides", "programs", "models"):
        assert prov[key] is not None, key
