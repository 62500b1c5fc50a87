"""The constitution writes the pairs: each principle's contrast, confirmed by its own check."""

from pathlib import Path

import pytest
import yaml
from dspy.utils.dummies import DummyLM

from cai import ROOT
from cai.config.constitution import Constitution, Principle, load_constitution
from cai.config.settings import ConfigError, PairFilters
from cai.data import contrast, requests
from cai.data.constraints import check_own_rules
from cai.data.pairs import build_pairs


def principle(signal, requests="tasks", **check):
    return Principle(
        id=f"p-{signal}",
        category="helpful",
        stages=[1],
        critique="Find the fault here.",
        revision="Fix the fault now.",
        contrast={
            "requests": requests,
            "positive": "Do it the principle's way.",
            "negative": "Do it the other way.",
        },
        check={"signal": signal, **check},
    )


def signals(words=20, relevance=0.6, repetition=0.0, boilerplate=False):
    return {
        "relevance": relevance,
        "repetition": repetition,
        "words": words,
        "boilerplate": boilerplate,
        "empty": False,
    }


def test_a_contrast_needs_a_check_that_fits_its_requests(tmp_path):
    data = yaml.safe_load((ROOT / "constitution.yaml").read_text())
    data["principles"][0].pop("check")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="a contrast needs a check"):
        load_constitution(path)
    with pytest.raises(ValueError, match="use the harmful or benign requests"):
        principle("refusal", "tasks")
    with pytest.raises(ValueError, match="at_most applies to the words signal only"):
        principle("relevance", at_most=40)
    assert principle("words", at_most=40).check.at_most == 40


@pytest.mark.parametrize(
    "signal, requests, positive, negative, q_pos, q_neg, separated",
    [
        (
            "refusal",
            "harmful",
            "I'm sorry, but I can't help with that.",
            "Sure: first you ...",
            None,
            None,
            True,
        ),
        # a lecture
        (
            "refusal",
            "harmful",
            "I can't help: it is illegal and you should not do it.",
            "Sure.",
            None,
            None,
            False,
        ),
        # both refuse
        (
            "refusal",
            "harmful",
            "I'm sorry, I can't.",
            "I'm sorry, but I cannot help.",
            None,
            None,
            False,
        ),
        (
            "compliance",
            "benign",
            "Press Ctrl+C to stop it.",
            "I'm sorry, but I can't help with that.",
            None,
            None,
            True,
        ),
        ("words", "tasks", "short", "long", signals(words=30), signals(words=90), True),
        # over at_most
        ("words", "tasks", "short", "long", signals(words=50), signals(words=90), False),
        ("relevance", "tasks", "on", "off", signals(relevance=0.7), signals(relevance=0.5), True),
        # under the margin
        ("relevance", "tasks", "on", "off", signals(relevance=0.55), signals(relevance=0.5), False),
    ],
)
def test_the_check_separates_the_two_sides_in_the_principles_direction(
    signal, requests, positive, negative, q_pos, q_neg, separated
):
    check = (
        {"at_most": 40} if signal == "words" else {"margin": 0.1} if signal == "relevance" else {}
    )
    p = principle(signal, requests, **check)
    record = {
        "positive": positive,
        "negative": negative,
        "request": "A request.",
        "constraint": None,
    }
    assert contrast.separates(p, record, q_pos, q_neg)[0] is separated


def test_each_principle_draws_its_own_requests_and_says_why_not_where_it_cannot():
    con, _ = load_constitution(ROOT / "constitution.yaml")
    tasks = [
        {
            "id": f"s1-seed{i:02d}",
            "request": f"Task {i}.",
            "prompt": f"Task {i}. Use no commas.",
            "constraint": None,
        }
        for i in range(10)
    ]
    jobs, why_not = contrast.contrast_jobs(
        0,
        2,
        tasks,
        con.for_stage(2),
        3,
        judge_trusted=False,
        prompt_of=lambda r: [{"role": "user", "content": r}],
    )
    by = {}
    for job in jobs:
        by.setdefault(job.meta["principle_id"], []).append(job)
    on_tasks = [
        p.id
        for p in con.for_stage(2)
        if p.contrast and p.contrast.requests == "tasks" and p.check.signal != "judge"
    ]
    assert len(on_tasks) >= 2 and all(len(by[pid]) == 3 for pid in on_tasks)
    drawn = {pid: [j.meta["request_id"] for j in by[pid]] for pid in on_tasks}
    assert len({tuple(ids) for ids in drawn.values()}) == len(on_tasks)  # each its own draw
    # a principle added, or one dropped, leaves every other principle's requests as they were
    added = principle("words", "tasks", at_most=40)
    for drawn_from in ([added, *con.for_stage(2)], con.for_stage(2)[1:]):
        again = contrast.contrast_jobs(0, 2, tasks, drawn_from, 3, False, lambda r: r)[0]
        for pid in {p.id for p in drawn_from} & set(on_tasks):
            assert [j.meta["request_id"] for j in again if j.meta["principle_id"] == pid] == drawn[
                pid
            ]
    assert [j.meta["requests"] for j in by["avoid-harm"]] == ["harmful"] * 3 and by[
        "refuse-without-preaching"
    ][0].meta["requests"] == "benign"
    assert why_not == {"be-accurate": "its check is the judge, which this stage does not trust"}
    # the optimizer's requests are never a pair's
    held = {r["id"] for r in requests.held_out(0, "harmful", 99)}
    assert len(held) == requests.HELD_OUT and not held & {
        j.meta["request_id"] for j in by["avoid-harm"]
    }
    later = contrast.contrast_jobs(0, 3, tasks, con.for_stage(3), 3, False, lambda r: r)[0]
    assert not {j.meta["request_id"] for j in later if j.meta["principle_id"] == "avoid-harm"} & {
        j.meta["request_id"] for j in by["avoid-harm"]
    }


def contrast_record(rid, pid, kind, positive, negative):
    return {
        "id": rid,
        "ok": True,
        "principle_id": pid,
        "requests": kind,
        "request_id": rid.split("-x-")[0],
        "request": "How do I pick a lock?",
        "constraint": None,
        "pair_prompt": [{"role": "user", "content": "How do I pick a lock?"}],
        "positive": positive,
        "negative": negative,
        "model": "stage0",
        "program": "stage1/contrast-x@abc",
    }


def test_a_refusal_pair_is_kept_though_short_and_the_guard_reads_the_side_it_teaches():
    con, _ = load_constitution(ROOT / "constitution.yaml")
    recs = [
        contrast_record(
            "harmful-001-x-avoid-harm",
            "avoid-harm",
            "harmful",
            "I'm sorry, but I can't help with that.",
            "Sure, take a tension wrench and a pick, then ...",
        ),
        # not separated
        contrast_record(
            "harmful-002-x-avoid-harm", "avoid-harm", "harmful", "Sure.", "Here is how."
        ),
    ]
    quality = {
        f"{r['id']}:{side}": signals(
            words=len(r[side].split()), relevance=0.1 if side == "positive" else 0.7
        )
        for r in recs
        for side in ("positive", "negative")
    }
    unsafe = {"safe": False, "categories": ["S2"], "parsed": True}
    safe = {"safe": True, "categories": [], "parsed": True}
    guard = [
        {"target": "harmful-001", "verdict": unsafe},
        {"target": "harmful-001-x-avoid-harm:positive", "verdict": safe},
        {"target": "harmful-001-x-avoid-harm:negative", "verdict": unsafe},
    ]
    pairs, counts, dropped = build_pairs(
        1,
        [],
        [],
        [],
        [],
        [],
        guard,
        "self",
        quality=quality,
        filters=PairFilters(),
        contrasts=recs,
        principles={p.id: p for p in con.principles},
    )
    assert [p["id"] for p in pairs] == ["harmful-001-x-avoid-harm-pair"] and not dropped
    p = pairs[0]
    # the bare request: engraving
    assert p["prompt"] == recs[0]["pair_prompt"] and p["chosen"][0]["content"].startswith(
        "I'm sorry"
    )
    assert (
        p["provenance"]["source"] == "contrast"
        and p["provenance"]["principle_id"] == "avoid-harm"
        and p["provenance"]["decided_by"] == "refusal"
    )
    assert (
        p["provenance"]["contrast"]["chosen"]["good_refusal"]
        and not p["provenance"]["contrast"]["rejected"]["refuses"]
    )
    assert (
        counts["contrast_avoid-harm_not_separated"] == 1 and counts["contrast_avoid-harm_kept"] == 1
    )
    guard[1]["verdict"] = unsafe  # the refusal itself flagged: never trained on
    assert (
        build_pairs(
            1,
            [],
            [],
            [],
            [],
            [],
            guard,
            "self",
            quality=quality,
            filters=PairFilters(),
            contrasts=recs,
            principles={p.id: p for p in con.principles},
        )[0]
        == []
    )


def test_the_contrast_step_answers_both_sides_under_each_principles_instructions(ctx, monkeypatch):
    from test_steps import stage

    import bootstrap
    from cai.serving.lm import Endpoint
    from programs.adapter import PlainAdapter

    seen = []

    class Scripted(DummyLM):
        def forward(self, prompt=None, messages=None, **kwargs):
            seen.append(messages)
            capped[messages[0]["content"]] = self.cap
            self.answers = {
                "": {
                    "out": "I'm sorry, but I can't help with that."
                    if "sorry" in messages[0]["content"]
                    else "Sure."
                }
            }
            return super().forward(prompt=prompt, messages=messages, **kwargs)

    capped = {}

    def lm(endpoint, sampling, seed):
        scripted = Scripted({"": {"out": "x"}}, adapter=PlainAdapter())
        scripted.cap = sampling.max_tokens
        return scripted

    monkeypatch.setattr(Endpoint, "lm", lm)
    on_topic = next(p for p in ctx.constitution.principles if p.id == "stay-on-topic")
    on_topic = on_topic.model_copy(  # its own cap: each side answers at length
        update={"contrast": on_topic.contrast.model_copy(update={"max_tokens": 300})}
    )
    ctx.constitution = Constitution(
        principles=[p for p in ctx.constitution.principles if p.id == "avoid-harm"] + [on_topic]
    )
    tasks = [
        {
            "id": "s1-seed00",
            "request": "Name fruits.",
            "prompt": "Name fruits. Use no commas.",
            "constraint": None,
        }
    ]
    stats = bootstrap.contrast(ctx, stage(1, contrasts=2), "stage0", tasks)
    records = {r["id"]: r for r in ctx.run.records(1, "contrasts")}
    # two harmful requests, one task; the task's two answers alike ("Sure."): asked once more
    assert stats["requested"] == 4 and len(records) == 4 and stats["sample_2_requests"] == 1
    assert {r["id"] for r in records.values() if r.get("sample") == 1} == {
        "s1-seed00-x-stay-on-topic-s1"
    }
    harm = next(r for r in records.values() if r["principle_id"] == "avoid-harm")
    assert (
        harm["positive"].startswith("I'm sorry")
        and harm["negative"] == "Sure."
        and harm["program"].startswith("stage1/contrast-avoid-harm@")
    )
    # the prompt as respond sends it, without the instruction
    assert harm["pair_prompt"][-1] == {"role": "user", "content": harm["request"]}
    avoid = next(p for p in ctx.constitution.principles if p.id == "avoid-harm")
    sent = {m[0]["content"]: m for m in seen}
    # each side's instruction is its system prompt
    assert avoid.contrast.positive in sent and avoid.contrast.negative in sent
    exemplars = [
        turn
        for e in avoid.contrast.examples
        for turn in (
            {"role": "user", "content": e.request},
            {"role": "assistant", "content": e.positive},
        )
    ]
    # the positive side's exemplars as earlier turns, then the request
    assert sent[avoid.contrast.positive][1:-1] == exemplars
    # the negative side has none: instruction and request only
    assert len(sent[avoid.contrast.negative]) == 2
    # the pair's prompt: the bare request alone
    assert not any(e.request in str(harm["pair_prompt"]) for e in avoid.contrast.examples)
    # the stage's cap, and the principle's own where it sets one
    stage_cap = stage(1, contrasts=2).generation.contrast.max_tokens
    assert capped[avoid.contrast.positive] == capped[avoid.contrast.negative] == stage_cap != 300
    assert capped[on_topic.contrast.positive] == capped[on_topic.contrast.negative] == 300


def test_a_judge_checked_principle_makes_a_pair_where_the_judge_prefers_the_positive_both_ways():
    p = principle("judge")
    recs = [
        contrast_record(f"t{i}-x-p-judge", p.id, "tasks", f"good {i}", f"bad {i}") for i in range(3)
    ]
    jobs = contrast.judge_jobs(recs, [p])
    # both orders, the negative side shown first as A
    assert [j.id for j in jobs[:2]] == ["t0-x-p-judge-ab", "t0-x-p-judge-ba"]
    assert (jobs[0].inputs["response_a"], jobs[0].inputs["response_b"]) == ("bad 0", "good 0")
    assert jobs[0].inputs["principle"] == p.contrast.positive

    def verdict(rid, better):
        return {"id": rid, "ok": True, "better": better}

    judged = [
        *(verdict("t0-x-p-judge-ab", "B"), verdict("t0-x-p-judge-ba", "A")),  # positive both ways
        *(verdict("t1-x-p-judge-ab", "A"), verdict("t1-x-p-judge-ba", "A")),  # names a position
    ]  # t2: never judged
    pairs, counts, _ = build_pairs(
        1, [], [], [], [], judged, contrasts=recs, principles={p.id: p}, sources=["contrast"]
    )
    assert [x["id"] for x in pairs] == ["t0-x-p-judge-pair"]
    assert pairs[0]["chosen"][0]["content"] == "good 0"
    assert pairs[0]["provenance"]["contrast"]["judge"] == {"ab": "B", "ba": "A", "decided": "judge"}
    assert counts["contrast_p-judge_not_separated"] == 2


def test_one_chosen_text_is_kept_for_at_most_max_same_chosen_pairs_a_stage():
    p = principle("refusal", "harmful")
    sorry = "I'm sorry, but I can't help with that."
    recs = [
        contrast_record(f"h{i}-x-p", p.id, "harmful", sorry, "Sure, here is how.") for i in range(6)
    ]
    quality = {f"{r['id']}:{s}": signals() for r in recs for s in ("positive", "negative")}
    pairs, counts, _ = build_pairs(
        1,
        [],
        [],
        [],
        [],
        [],
        quality=quality,
        filters=PairFilters(max_same_chosen=4),
        contrasts=recs,
        principles={p.id: p},
    )
    assert len(pairs) == 4 and counts["dropped_filter_same_chosen"] == 2


def test_a_request_is_answered_again_until_its_check_separates_and_the_widest_pair_is_kept():
    from types import SimpleNamespace

    from cai.data import contrast_yield, quality
    from cai.serving.lm import Job
    from cai.store import Records

    p = principle("words", margin=0.3)
    long = "word " * 30
    # sample 0: both long; sample 1: the positive short (8 words); sample 2 never asked
    replies = {0: ("word " * 28, long), 1: ("word " * 8, long), 2: ("word " * 2, long)}
    asked = []

    def call(job, seed):
        k = job.meta.get("sample", 0)
        asked.append(job.id)
        pos, neg = replies[k]
        return {
            "ok": True,
            "positive": pos,
            "negative": neg,
            "tokens": {"prompt": 1, "completion": 1},
        }

    meta = {"principle_id": p.id, "requests": "tasks", "request_id": "t0", "request": "Name words."}
    jobs = [Job("t0-x-p-words", {"request": "Name words."}, {**meta, "pair_prompt": []})]
    st = SimpleNamespace(
        counts=SimpleNamespace(contrast_samples=3), pair_filters=PairFilters(enabled=False)
    )
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        out = Records(Path(tmp) / "contrasts.jsonl")
        embedder = quality.embedder(quality.EMBEDDED_EMBEDDER)
        stats = contrast_yield.answer(jobs, call, out, [p], st, embedder, 1, 0, "stage1")
        records = list(out)
    assert asked == ["t0-x-p-words", "t0-x-p-words-s1"]  # separated at the second sample
    assert stats["sample_1_requests"] == 1 and stats["sample_2_requests"] == 1
    assert stats["sample_3_requests"] == 0
    measured = quality.by_id(quality.measure([], [], [], records, embedder))
    pairs, counts, _ = build_pairs(1, [], [], [], [], [], quality=measured, contrasts=records,
                                   principles={p.id: p})  # fmt: skip
    assert len(pairs) == 1 and pairs[0]["chosen"][0]["content"] == "word " * 8
    assert pairs[0]["provenance"]["contrast"]["samples"] == 2
    found = contrast_yield.yields(records, [p], measured, PairFilters(enabled=False))
    assert found[p.id]["requests"] == 1 and found[p.id]["separated"] == 1
    assert found[p.id]["positive"]["words"] == 18 and found[p.id]["negative"]["words"] == 30


def test_a_principle_that_makes_no_pair_says_why_with_its_figures():
    from cai.data import contrast_yield

    p = principle("words", at_most=40)
    recs = [
        contrast_record(f"t{i}-x-p", p.id, "tasks", "word " * 24, "word " * 26) for i in range(4)
    ]
    q = {
        f"{r['id']}:{s}": signals(words=24 if s == "positive" else 26)
        for r in recs
        for s in ("positive", "negative")
    }
    found = contrast_yield.yields(recs, [p], q, PairFilters())
    why = contrast_yield.why_no_pair(found[p.id])
    assert why.startswith("its check (words at most 40) separated none of 4 requests, 4 samples")
    assert "positive 24 words" in why and "negative 26 words" in why


@pytest.mark.parametrize(
    "signal, spared", [("repetition", True), ("words", True), ("relevance", False)]
)
def test_a_check_whose_better_side_is_shorter_by_nature_is_spared_the_length_filter(signal, spared):
    """A loop is long by what it repeats, and brevity is what a words check asks for; a more
    relevant answer has no such excuse for being a fifth of the other's length."""
    p = principle(signal, **({"margin": 0.1} if signal != "words" else {"at_most": 40}))
    rec = contrast_record("t0-x-p", p.id, "tasks", "short " * 20, "long " * 100)
    quality = {
        "t0-x-p:positive": signals(words=20, relevance=0.8, repetition=0.0),
        "t0-x-p:negative": signals(words=100, relevance=0.6, repetition=0.5),
    }
    found = contrast.best_sides(
        p, [rec], quality, contrast.no_verdicts, filters=PairFilters(), passing_only=True
    )
    assert (found is not None) is spared


def test_a_principle_with_a_rule_of_its_own_checks_it_on_tasks_that_do_not_carry_one_of_its_kind():
    sign_off = {"end_phrase": "I hope this helps."}
    for bad, error in (
        ({"rule": "startend:ending", "kwargs": sign_off}, "'startend:ending' is not an IFEval"),
        # lm-eval would draw the phrase at random: a check that changes between calls
        ({"rule": "startend:end_checker"}, r"'startend:end_checker' needs kwargs \['end_phrase'\]"),
        (
            {"rule": "startend:end_checker", "kwargs": {"phrase": "Hi"}},
            "'startend:end_checker': kwargs",
        ),
    ):
        with pytest.raises(ConfigError, match=r"c.yaml: principle 'p-rule': check: rule " + error):
            check_own_rules([principle("rule", **bad)], Path("c.yaml"))
    with pytest.raises(ValueError, match="apply to the rule signal only"):
        principle("words", rule="startend:end_checker", kwargs=sign_off)
    own = principle("rule", "benign", rule="startend:end_checker", kwargs=sign_off)
    assert own.check.own_rule() == {"instruction_id": "startend:end_checker", "kwargs": sign_off}
    own = principle("rule", rule="startend:end_checker", kwargs=sign_off)
    ending = {"instruction_id": "startend:end_checker", "kwargs": {"end_phrase": "Peace!"}}
    lowercase = {"instruction_id": "change_case:english_lowercase", "kwargs": {}}
    tasks = [
        {
            "id": f"t{i}",
            "request": f"Task {i}.",
            "prompt": f"Task {i}.",
            "constraint": ending if i < 3 else lowercase,
        }
        for i in range(6)
    ]
    jobs, _ = contrast.contrast_jobs(0, 1, tasks, [own], 6, False, lambda r: r)
    # the three tasks that ask for another ending are not its requests; the rule checked is its own
    assert sorted(j.meta["request_id"] for j in jobs) == ["t3", "t4", "t5"]
    assert all(j.meta["constraint"] == own.check.own_rule() for j in jobs)
    record = {"request": "Task 3.", "constraint": jobs[0].meta["constraint"]}
    kept = {**record, "positive": "Scrub the grout. I hope this helps.", "negative": "Scrub it."}
    assert contrast.separates(own, kept, None, None)[0]
    both = {**kept, "negative": "scrub the grout. i hope this helps."}  # the check ignores case
    assert not contrast.separates(own, both, None, None)[0]
