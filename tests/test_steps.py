"""Steps of bootstrap.py on a scripted LM: self-instruct dedupe, the judge skipped where a checker decides."""

import pytest
from dspy.utils.dummies import DummyLM

import bootstrap
from cai.config import PairFilters, load_curriculum, resolve_stage
from cai.lm import Endpoint
from programs.adapter import PlainAdapter

ROOT = bootstrap.ROOT


def script(monkeypatch, answers: dict):
    """Every request is answered from `answers`: the first key found in the prompt wins."""
    monkeypatch.setattr(Endpoint, "lm", lambda self, sampling, seed: DummyLM({k: {"out": v} for k, v in answers.items()}, adapter=PlainAdapter()))


def stage(n, **counts):
    cur, _ = load_curriculum(ROOT / "curriculum.yaml")
    st = resolve_stage(cur, cur.profiles["quick"], n)
    return st.model_copy(update={"counts": st.counts.model_copy(update=counts)})


def test_propose_keeps_distinct_tasks_and_drops_near_duplicates(ctx, monkeypatch):
    st = stage(1, proposed=3, seeds_used=2)
    # every proposal call gets the same reply, but the first is a near-copy of a seed
    script(monkeypatch, {"Kind:": "List three things to check before riding a bicycle today."})
    stats = bootstrap.propose(ctx, st, "stage0")
    tasks = [t for t in bootstrap._read(ctx.run, 1, "tasks")]
    assert stats["dropped_duplicate"] == 3 and stats["kept"] == 0 and stats["proposed"] == 3 and len(tasks) == 2
    assert all(t["source"] == "seed" and t["constraint"]["instruction_id"] and t["prompt"].startswith(t["request"]) for t in tasks)


def test_propose_keeps_a_new_task_once(ctx, monkeypatch):
    st = stage(1, proposed=2, seeds_used=0)
    script(monkeypatch, {"Kind:": "Describe how a sailboat can move against the wind."})
    stats = bootstrap.propose(ctx, st, "stage0")
    tasks = bootstrap._read(ctx.run, 1, "tasks")
    # the second proposal repeats the first word for word: only one is kept
    assert [t["id"] for t in tasks] == ["s1-gen0000"] and stats["dropped_duplicate"] == 1


def test_propose_with_nothing_usable_names_the_step(ctx, monkeypatch):
    script(monkeypatch, {"Kind:": "ok"})
    with pytest.raises(bootstrap.StageError, match="stage1: propose: no task"):
        bootstrap.propose(ctx, stage(1, proposed=2, seeds_used=0), "stage0")


def test_judge_is_not_asked_where_the_checker_decides(ctx, monkeypatch):
    no_comma = {"instruction_id": "punctuation:no_comma", "kwargs": {}, "description": "Use no commas."}
    tasks = [{"id": "s1-seed00", "prompt": "Name fruits. Use no commas.", "constraint": no_comma},
             {"id": "s1-seed01", "prompt": "Name trees.", "constraint": None}]
    responses, revisions = ctx.run.records(1, "responses"), ctx.run.records(1, "revisions")
    for t, original, revision in [(tasks[0], "apple, pear", "apple and pear"), (tasks[1], "oak", "Oak and elm.")]:
        responses.append({"id": f"{t['id']}-r0", "ok": True, "response": original})
        revisions.append({"id": f"{t['id']}-r0-v", "task_id": t["id"], "response_id": f"{t['id']}-r0", "ok": True,
                          "revision": revision, "principle_id": "follow-the-instruction"})
    script(monkeypatch, {"Response A": "B"})
    monkeypatch.setattr(bootstrap, "trusted_sources", lambda ctx, st: (["best_of_n", "revision", "judge"], {}))
    stats = bootstrap.judge(ctx, stage(1), "stage0", tasks)
    assert stats["skipped_checker_decides"] == 1 and stats["requested"] == 2
    assert {j["id"] for j in ctx.run.records(1, "judgments")} == {"s1-seed01-r0-v-ab", "s1-seed01-r0-v-ba"}


def test_later_proposal_rounds_are_shown_tasks_the_model_wrote(ctx, monkeypatch):
    st = stage(1, proposed=4, seeds_used=0, proposal_rounds=2, pool_examples=1, examples_shown=3)
    replies = iter(["Describe how a sailboat can move against the wind.", "Explain why bread dough needs to rest before baking.",
                    "Compare two ways of storing fresh herbs in a small kitchen.", "Suggest a weekly plan for watering indoor plants."])
    prompts = []

    def lm(self, sampling, seed):
        class Scripted(DummyLM):
            def forward(self, prompt=None, messages=None, **kwargs):
                prompts.append(messages[-1]["content"])
                return super().forward(prompt=prompt, messages=messages, **kwargs)
        return Scripted([{"out": next(replies)}], adapter=PlainAdapter())

    monkeypatch.setattr(Endpoint, "lm", lm)
    monkeypatch.setattr(ctx, "concurrency", 1)
    stats = bootstrap.propose(ctx, st, "stage0")
    assert stats["kept"] == 4
    first_round, second_round = prompts[:2], prompts[2:]
    written = ("sailboat", "bread dough")
    assert not any(w in p for p in first_round for w in written)
    assert all(any(w in p for w in written) for p in second_round)


def test_the_guard_step_keeps_flagged_items_out_of_pairs_jsonl(ctx, monkeypatch):
    from cai import guard
    from cai.store import read_jsonl

    no_comma = {"instruction_id": "punctuation:no_comma", "kwargs": {}, "description": "Use no commas."}
    tasks = [{"id": f"s1-seed0{i}", "source": "seed", "prompt": f"Name {kind}. Use no commas.", "constraint": no_comma}
             for i, kind in enumerate(["fruits", "weapons"])]
    responses = ctx.run.records(1, "responses")
    for t in tasks:
        for k, text in enumerate(["apple, pear", "apple and pear"]):
            responses.append({"id": f"{t['id']}-r{k}", "task_id": t["id"], "sample": k, "ok": True, "response": text, "model": "stage0"})

    def scripted_guard(self, job, seed):  # flags the second task's prompt only
        flagged = "weapons" in job.inputs["user"] and job.inputs["agent"] is None
        return {"model": "stage0", "ok": True, "verdict": guard.parse_verdict("unsafe\nS9" if flagged else "safe"),
                "tokens": {"prompt": 1, "completion": 1}}

    monkeypatch.setattr(guard.Guard, "__call__", scripted_guard)
    ctx.guard = ctx.guard.model_copy(update={"mode": "self"})
    ctx.run.manifest["stages"] = {}
    stats = bootstrap.safety_check(ctx, stage(1), "stage0", tasks)
    assert stats["requested"] == 6 and stats["unsafe"] == 1 and stats["unsafe_prompts"] == 1
    unfiltered = stage(1).model_copy(update={"pair_filters": PairFilters(enabled=False)})  # the guard alone
    bootstrap.make_pairs(ctx, unfiltered, tasks)
    pairs = read_jsonl(ctx.run.stage_dir(1) / "pairs.jsonl")
    dropped = read_jsonl(ctx.run.stage_dir(1) / "safety.jsonl")
    assert [p["provenance"]["task_id"] for p in pairs] == ["s1-seed00"]
    assert [(d["task_id"], d["reason"]) for d in dropped] == [("s1-seed01", "prompt: unsafe (S9)")]


def test_the_quality_step_measures_every_answer_once_and_the_pairs_step_filters_on_it(ctx):
    from cai import quality
    from cai.store import read_jsonl

    no_comma = {"instruction_id": "punctuation:no_comma", "kwargs": {}, "description": "Use no commas."}
    t = {"id": "s1-seed00", "source": "seed", "request": "Name three fruits.", "prompt": "Name three fruits. Use no commas.",
         "constraint": no_comma}
    responses = ctx.run.records(1, "responses")
    for k, text in enumerate(["Hello! I am SmolLM and I love to chat", "apples, pears, plums", "apples and pears and plums"]):
        responses.append({"id": f"s1-seed00-r{k}", "task_id": t["id"], "sample": k, "ok": True, "response": text, "model": "stage0"})
    ctx.guard = ctx.guard.model_copy(update={"mode": "off"})
    ctx.run.manifest["stages"] = {}
    stats = bootstrap.measure_quality(ctx, stage(1), [t])
    assert stats["answers"] == 3 and stats["boilerplate"] == 1
    signals = {q["id"]: q for q in read_jsonl(ctx.run.stage_dir(1) / "quality.jsonl")}
    assert set(signals) == {"s1-seed00-r0", "s1-seed00-r1", "s1-seed00-r2"}
    counts = bootstrap.make_pairs(ctx, stage(1), [t])
    (pair,) = read_jsonl(ctx.run.stage_dir(1) / "pairs.jsonl")
    # the self-introduction keeps the rule too, but is never chosen: the on-topic keeping sample is
    assert pair["chosen"][0]["content"] == "apples and pears and plums" and counts["pairs"] == 1
    assert pair["provenance"]["quality"]["chosen"] == {k: signals["s1-seed00-r2"][k] for k in quality.SIGNALS}  # the signals alone
    assert set(pair["provenance"]["quality"]["rejected"]) == set(quality.SIGNALS)


@pytest.mark.parametrize("agreement,trusted", [(None, False), (0.5, False), (0.8, True)])
def test_the_judge_is_a_pair_source_only_as_far_as_its_measured_agreement_allows(ctx, monkeypatch, agreement, trusted):
    st = stage(4)
    assert "judge" in st.pair_sources and st.judge_min_agreement == 0.75
    ctx.run.manifest["stages"] = {"stage4": {"steps": {"optimize": {"judge_after": agreement, "judge_dev": 4}}}}
    sources, trust = bootstrap.trusted_sources(ctx, st)
    assert ("judge" in sources) is trusted and trust["judge_trusted"] is trusted and trust["judge_agreement"] == agreement
    if not trusted:  # the judge step then asks nothing
        monkeypatch.setattr(bootstrap, "run_jobs", lambda *a, **k: pytest.fail("the untrusted judge was asked"))
        assert bootstrap.judge(ctx, st, "stage3", [])["skipped"]
    assert "judge" not in bootstrap.trusted_sources(ctx, stage(1))[0]  # stages 1-3 do not use the judge
