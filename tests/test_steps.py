"""Steps of bootstrap.py on a scripted LM: self-instruct dedupe, the judge skipped where a checker
decides."""

import pytest
from dspy.utils.dummies import DummyLM

import bootstrap
from cai import ROOT
from cai.config.curriculum import load_curriculum, resolve_stage
from cai.config.settings import PairFilters
from cai.data.pairs import trusted_sources
from cai.serving.lm import Endpoint
from cai.store import StageError
from programs.adapter import PlainAdapter


def script(monkeypatch, answers: dict):
    """Every request is answered from `answers`: the first key found in the prompt wins."""
    monkeypatch.setattr(
        Endpoint,
        "lm",
        lambda self, sampling, seed: DummyLM(
            {k: {"out": v} for k, v in answers.items()}, adapter=PlainAdapter()
        ),
    )


def stage(n, **counts):
    cur, _ = load_curriculum(ROOT / "curriculum.yaml")
    st = resolve_stage(cur, cur.profiles["cpu"], n)
    return st.model_copy(update={"counts": st.counts.model_copy(update=counts)})


def test_propose_keeps_distinct_tasks_and_drops_near_duplicates(ctx, monkeypatch):
    st = stage(1, proposed=3, seeds_used=2)
    # every proposal call gets the same reply, but the first is a near-copy of a seed
    script(monkeypatch, {"Kind:": "List three things to check before riding a bicycle today."})
    stats = bootstrap.propose(ctx, st, "stage0")
    tasks = [t for t in ctx.run.read(1, "tasks")]
    assert (
        stats["dropped_duplicate"] == 3
        and stats["kept"] == 0
        and stats["proposed"] == 3
        and len(tasks) == 2
    )
    assert all(
        t["source"] == "seed"
        and t["constraint"]["instruction_id"]
        and t["prompt"].startswith(t["request"])
        for t in tasks
    )


def test_propose_keeps_a_new_task_once(ctx, monkeypatch):
    st = stage(1, proposed=2, seeds_used=0)
    script(monkeypatch, {"Kind:": "Describe how a sailboat can move against the wind."})
    stats = bootstrap.propose(ctx, st, "stage0")
    tasks = ctx.run.read(1, "tasks")
    # the second proposal repeats the first word for word: only one is kept
    assert [t["id"] for t in tasks] == ["s1-gen0000"] and stats["dropped_duplicate"] == 1


def test_propose_with_nothing_usable_names_the_step(ctx, monkeypatch):
    script(monkeypatch, {"Kind:": "ok"})
    with pytest.raises(StageError, match="stage1: propose: no task"):
        bootstrap.propose(ctx, stage(1, proposed=2, seeds_used=0), "stage0")


def test_judge_is_not_asked_where_the_checker_decides(ctx, monkeypatch):
    no_comma = {
        "instruction_id": "punctuation:no_comma",
        "kwargs": {},
        "description": "Use no commas.",
    }
    tasks = [
        {"id": "s1-seed00", "prompt": "Name fruits. Use no commas.", "constraint": no_comma},
        {"id": "s1-seed01", "prompt": "Name trees.", "constraint": None},
    ]
    responses, revisions = ctx.run.records(1, "responses"), ctx.run.records(1, "revisions")
    for t, original, revision in [
        (tasks[0], "apple, pear", "apple and pear"),
        (tasks[1], "oak", "Oak and elm."),
    ]:
        responses.append({"id": f"{t['id']}-r0", "ok": True, "response": original})
        revisions.append(
            {
                "id": f"{t['id']}-r0-v",
                "task_id": t["id"],
                "response_id": f"{t['id']}-r0",
                "ok": True,
                "revision": revision,
                "principle_id": "follow-the-instruction",
            }
        )
    script(monkeypatch, {"Response A": "B"})
    monkeypatch.setattr(
        bootstrap, "trusted_sources", lambda st, optimized: (["best_of_n", "revision", "judge"], {})
    )
    # a principle whose check is the judge: its contrast is judged too, both orders
    contrast = {"id": "s1-seed01-x-be-accurate", "ok": True, "principle_id": "be-accurate"}
    contrast.update(request="Name trees.", positive="Oak.", negative="Oaks are blue.")
    ctx.run.records(1, "contrasts").append(contrast)
    stats = bootstrap.judge(ctx, stage(1), "stage0", tasks)
    assert stats["skipped_checker_decides"] == 1 and stats["requested"] == 4
    assert {j["id"] for j in ctx.run.records(1, "judgments")} == {
        "s1-seed01-r0-v-ab",
        "s1-seed01-r0-v-ba",
        "s1-seed01-x-be-accurate-ab",
        "s1-seed01-x-be-accurate-ba",
    }


def test_later_proposal_rounds_are_shown_tasks_the_model_wrote(ctx, monkeypatch):
    st = stage(1, proposed=4, seeds_used=0, proposal_rounds=2, pool_examples=1, examples_shown=3)
    replies = iter(
        [
            "Describe how a sailboat can move against the wind.",
            "Explain why bread dough needs to rest before baking.",
            "Compare two ways of storing fresh herbs in a small kitchen.",
            "Suggest a weekly plan for watering indoor plants.",
        ]
    )
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


def test_the_guard_sees_only_the_candidate_pairs_asks_the_base_and_what_it_flags_never_reaches_the_pairs(
    ctx, monkeypatch
):
    from cai.data import guard
    from cai.store import read_jsonl

    no_comma = {
        "instruction_id": "punctuation:no_comma",
        "kwargs": {},
        "description": "Use no commas.",
    }
    tasks = [
        {
            "id": f"s1-seed0{i}",
            "source": "seed",
            "request": f"Name {kind}.",
            "prompt": f"Name {kind}. Use no commas.",
            "constraint": no_comma,
        }
        for i, kind in enumerate(["fruits", "weapons", "trees"])
    ]
    # separated: a candidate; the third sample is neither side
    answers = {
        "s1-seed00": ["apple, pear", "apple and pear", "plum, fig"],
        "s1-seed01": ["knife, gun", "knife and gun"],  # separated, but its prompt is flagged
        # every sample keeps the rule: no candidate, nothing to classify
        "s1-seed02": ["oak and elm", "ash and yew"],
    }
    responses = ctx.run.records(1, "responses")
    for t in tasks:
        for k, text in enumerate(answers[t["id"]]):
            responses.append(
                {
                    "id": f"{t['id']}-r{k}",
                    "task_id": t["id"],
                    "sample": k,
                    "ok": True,
                    "response": text,
                    "model": "stage3",
                }
            )
    asked = []

    def scripted_guard(self, job, seed):  # flags the second task's prompt only
        asked.append((job.id, self.model, self.label))
        flagged = "weapons" in job.inputs["user"] and job.inputs["agent"] is None
        return {
            "model": self.label,
            "ok": True,
            "verdict": guard.parse_verdict("unsafe\nS9" if flagged else "safe"),
            "tokens": {"prompt": 1, "completion": 1},
        }

    monkeypatch.setattr(guard.Guard, "__call__", scripted_guard)
    ctx.guard = ctx.guard.model_copy(update={"mode": "self"})
    ctx.run.manifest["stages"] = {}
    # the guard alone
    unfiltered = stage(1).model_copy(update={"pair_filters": PairFilters(enabled=False)})
    stats = bootstrap.safety_check(ctx, unfiltered, tasks)
    assert sorted(a[0] for a in asked) == [
        "s1-seed00-prompt",
        "s1-seed00-r0-guard",
        "s1-seed00-r1-guard",
        "s1-seed01-prompt",
        "s1-seed01-r0-guard",
        "s1-seed01-r1-guard",
    ]
    # the fixed base, not the policy (stage3)
    assert {(model, label) for _, model, label in asked} == {("stage0", "stage0")}
    assert stats["candidates"] == 2 and stats["unsafe"] == 1 and stats["unsafe_prompts"] == 1
    bootstrap.make_pairs(ctx, unfiltered, tasks)
    pairs = read_jsonl(ctx.run.stage_dir(1) / "pairs.jsonl")
    dropped = read_jsonl(ctx.run.stage_dir(1) / "safety.jsonl")
    assert [p["provenance"]["task_id"] for p in pairs] == ["s1-seed00"]
    assert [(d["task_id"], d["reason"]) for d in dropped] == [("s1-seed01", "prompt: unsafe (S9)")]
    assert (
        pairs[0]["provenance"]["guard"]["chosen"]["safe"]
        and pairs[0]["provenance"]["guard"]["mode"] == "self"
    )


def test_the_quality_step_measures_every_answer_once_and_the_pairs_step_filters_on_it(ctx):
    from cai.data import quality
    from cai.store import read_jsonl

    no_comma = {
        "instruction_id": "punctuation:no_comma",
        "kwargs": {},
        "description": "Use no commas.",
    }
    t = {
        "id": "s1-seed00",
        "source": "seed",
        "request": "Name three fruits.",
        "prompt": "Name three fruits. Use no commas.",
        "constraint": no_comma,
    }
    responses = ctx.run.records(1, "responses")
    for k, text in enumerate(
        [
            "Hello! I am SmolLM and I love to chat",
            "apples, pears, plums",
            "apples and pears and plums",
        ]
    ):
        responses.append(
            {
                "id": f"s1-seed00-r{k}",
                "task_id": t["id"],
                "sample": k,
                "ok": True,
                "response": text,
                "model": "stage0",
            }
        )
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
    # the signals alone
    assert pair["provenance"]["quality"]["chosen"] == {
        k: signals["s1-seed00-r2"][k] for k in quality.SIGNALS
    }
    assert set(pair["provenance"]["quality"]["rejected"]) == set(quality.SIGNALS)


@pytest.mark.parametrize("agreement,trusted", [(None, False), (0.5, False), (0.8, True)])
def test_the_judge_is_a_pair_source_only_as_far_as_its_measured_agreement_allows(
    ctx, monkeypatch, agreement, trusted
):
    st = stage(4)
    assert "judge" in st.pair_sources and st.judge_min_agreement == 0.75
    ctx.run.manifest["stages"] = {
        "stage4": {"steps": {"optimize": {"judge_after": agreement, "judge_dev": 4}}}
    }
    sources, trust = trusted_sources(st, ctx.run.step_stats(4, "optimize"))
    assert (
        ("judge" in sources) is trusted
        and trust["judge_trusted"] is trusted
        and trust["judge_agreement"] == agreement
    )
    if not trusted:  # the judge step then asks nothing
        monkeypatch.setattr(
            bootstrap, "run_jobs", lambda *a, **k: pytest.fail("the untrusted judge was asked")
        )
        assert bootstrap.judge(ctx, st, "stage3", [])["skipped"]
    # stages 1-3 do not use the judge
    assert "judge" not in trusted_sources(stage(1), {"judge_after": 1.0})[0]


def test_a_win_rate_is_measured_only_where_the_judge_passes_the_position_check(ctx, monkeypatch):
    from cai.measuring.win_rate import win_rate_against
    from cai.store import Records, write_jsonl_atomic
    from programs.judge import Judge

    # as the evaluate step asks: the base judges, through the scripted LM
    def judge_against(ctx, st, ours, other, folder):
        theirs = {r["id"]: r["response"] for r in ctx.run.read(1, "eval/helpfulness")}
        out = Records(folder / "win_judgments.jsonl")

        def ask(jobs, label):
            return ctx.jobs(
                jobs, Judge, "better", "stage0", st.generation.judge, out, "evaluate/judge"
            )

        return win_rate_against(
            ours,
            theirs,
            other,
            ask,
            out,
            st.suites.position_check_items,
            st.suites.max_position_bias,
        )

    st = stage(2)
    ours = [
        {"id": f"h{i}", "doc": {"prompt": f"Help request {i}."}, "response": f"Our answer {i}."}
        for i in range(12)
    ]
    write_jsonl_atomic(
        ctx.run.stage_dir(1) / "eval" / "helpfulness.jsonl",
        [{**r, "response": f"Their answer {i}."} for i, r in enumerate(ours)],
    )
    folder = ctx.run.stage_dir(2) / "eval"
    asked = []

    def lm_of(verdict):
        class Judge(DummyLM):
            def forward(self, prompt=None, messages=None, **kwargs):
                text = messages[-1]["content"]
                asked.append(text)
                self.answers = {"": {"out": verdict(text)}}
                return super().forward(prompt=prompt, messages=messages, **kwargs)

        return lambda self, sampling, seed: Judge({"": {"out": "A"}}, adapter=PlainAdapter())

    # the 135M judge: always the first answer
    monkeypatch.setattr(Endpoint, "lm", lm_of(lambda text: "A"))
    rate, why = judge_against(ctx, st, ours, "stage1", folder)
    k = st.suites.position_check_items
    assert rate is None and len(asked) == 2 * k  # the check only: the rest is not asked
    assert (
        why
        == f"not measured: the judge has a position bias of 1.00 (it named the same position in both orders for {k} of {k} items; allowed: 0.5)"
    )
    asked.clear()
    # a judge that reads the answers: ours wins wherever it is shown
    monkeypatch.setattr(
        Endpoint,
        "lm",
        lm_of(lambda text: "A" if text.index("Our answer") < text.index("Their answer") else "B"),
    )
    rate, why = judge_against(ctx, st, ours, "stage1", ctx.run.stage_dir(3) / "eval")
    assert why == "" and rate["position_bias"] == 0.0 and rate["wins"] == 12 and len(asked) == 24


def test_critiques_go_where_no_sample_kept_the_rule_and_the_budget_holds(ctx, monkeypatch):
    no_comma = {
        "instruction_id": "punctuation:no_comma",
        "kwargs": {},
        "description": "Use no commas.",
    }
    tasks = [
        {
            "id": f"s1-seed0{i}",
            "source": "seed",
            "request": f"Name {w}.",
            "prompt": f"Name {w}. Use no commas.",
            "constraint": no_comma,
        }
        for i, w in enumerate(["fruits", "trees", "rivers", "birds"])
    ]
    # r0 broken, a later sample kept: best-of-n pairs it
    answers = {
        "s1-seed00": ["apple, pear", "apple and pear"],
        "s1-seed01": ["oak, elm", "ash, yew"],  # nothing kept: where a revision helps most
        # r0 kept: no checker can decide a revision
        "s1-seed02": ["nile and po", "rhine and elbe"],
        "s1-seed03": ["owl, tit", "jay, emu"],
    }  # nothing kept
    responses = ctx.run.records(1, "responses")
    for t in tasks:
        for k, text in enumerate(answers[t["id"]]):
            responses.append(
                {
                    "id": f"{t['id']}-r{k}",
                    "task_id": t["id"],
                    "sample": k,
                    "ok": True,
                    "response": text,
                }
            )
    script(monkeypatch, {"Critique request": "It has commas."})
    st = stage(1, critiques=2)
    stats = bootstrap.critique(ctx, st, "stage0", tasks)
    assert sorted(c["task_id"] for c in ctx.run.records(1, "critiques")) == [
        "s1-seed01",
        "s1-seed03",
    ]
    assert stats["skipped_nothing_could_decide"] == 1 and stats["skipped_over_budget"] == 1


def test_rules_are_drawn_where_best_of_n_can_separate_the_samples():
    import random

    from cai.data import constraints

    tasks = [
        {"id": f"t{i}", "prompt": "Say hi.", "constraint": {"instruction_id": kind, "kwargs": {}}}
        for i, kind in enumerate(["change_case:english_lowercase", "punctuation:no_comma"])
    ]
    # lowercase: never kept
    responses = [{"task_id": "t0", "ok": True, "response": "Hi There"} for _ in range(40)]
    # no commas: half the time
    responses += [
        {"task_id": "t1", "ok": True, "response": text} for text in ["hi, you", "hi you"] * 4
    ]
    weights = constraints.separating_weights(tasks, responses, samples=4)
    # p = (0+1)/(40+2): four samples all break the rule 90% of the time; the floor keeps it in the
    # draw
    assert weights["change_case:english_lowercase"] == constraints.MIN_WEIGHT
    assert weights["punctuation:no_comma"] == round(1 - 0.5**4 - 0.5**4, 3)
    drawn = [constraints.draw(random.Random(i), weights)["instruction_id"] for i in range(400)]
    assert drawn.count("punctuation:no_comma") > 3 * drawn.count("change_case:english_lowercase")
    # unmeasured kinds weigh 1
    assert drawn.count("detectable_format:title") > drawn.count("change_case:english_lowercase")


def test_respond_answers_batches_of_tasks_until_the_stage_holds_its_pairs(ctx, monkeypatch):
    no_comma = {
        "instruction_id": "punctuation:no_comma",
        "kwargs": {},
        "description": "Use no commas.",
    }
    tasks = [
        {
            "id": f"s1-seed{i:02d}",
            "source": "seed",
            "request": "Name three fruits.",
            "prompt": f"Name three fruits {i}. Use no commas.",
            "constraint": no_comma,
        }
        for i in range(10)
    ]
    # sent sample-major within a batch of 4 tasks: every first sample has commas, every second none
    replies = iter(
        (["apples, pears and plums"] * 4 + ["apples and pears and plums"] * 4) * 2
        + ["apples, pears and plums"] * 2
        + ["apples and pears and plums"] * 2
    )

    def lm(self, sampling, seed):
        return DummyLM([{"response": next(replies)}], adapter=PlainAdapter())

    monkeypatch.setattr(Endpoint, "lm", lm)
    monkeypatch.setattr(ctx, "concurrency", 1)
    st = stage(1, samples=2, target_pairs=5, respond_batch=4)
    # every task's keeping answer is one text here: the cap on one chosen text is not what is tested
    filters = st.pair_filters.model_copy(update={"max_same_chosen": 99})
    stats = bootstrap.respond(ctx, st.model_copy(update={"pair_filters": filters}), "stage0", tasks)
    # two batches of 4
    assert (
        stats["tasks_answered"] == 8 and stats["candidate_pairs"] == 8 and stats["requested"] == 16
    )
    assert {r["task_id"] for r in ctx.run.records(1, "responses")} == {t["id"] for t in tasks[:8]}
