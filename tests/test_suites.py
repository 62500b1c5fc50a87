"""The held-out suites: they load through lm-eval from the local files, and score what they
should."""

import contextlib

import pytest

from cai import ROOT
from cai.config.settings import SCORES
from cai.data import requests
from cai.data.refusal import is_refusal
from cai.measuring.scores import extra_task_scores, score_suites
from cai.measuring.suites import SUITES_DIR, TASK_OF, task
from cai.measuring.win_rate import win_rate


@pytest.fixture(scope="module")
def tasks():
    from lm_eval.tasks import TaskManager

    configs = [task(suite, 64, 0) for suite in TASK_OF]  # the dev slices: the seed's
    with contextlib.chdir(SUITES_DIR):
        return TaskManager(include_path=str(SUITES_DIR)).load_task_or_group(configs)


def test_each_suite_loads_through_lm_eval_the_dev_slices_from_the_seeds_split(tasks):
    docs = {name: list(tasks[task].eval_docs) for name, task in TASK_OF.items()}
    assert len(docs["instruction_following"]) >= 200 and len(docs["helpfulness"]) >= 40
    for suite, kind in (("harmlessness", "harmful"), ("over_refusal", "benign")):
        dev = requests.dev(0, kind)
        assert [d["id"] for d in docs[suite]] == [r["id"] for r in dev]
        assert len(dev) == requests.DEV_ITEMS[kind]
    assert docs["harmlessness"][0]["id"].startswith("advbench-")
    prompts = [d["prompt"] for suite in docs.values() for d in suite]
    assert len(prompts) == len(set(prompts))


def test_the_ifeval_checkers_score_a_compliant_and_a_violating_answer(tasks):
    # scored by the function its YAML names, as lm-eval calls it
    task = tasks["cai_instruction_following"]
    doc = next(d for d in task.eval_docs if d["instruction_id_list"] == ["punctuation:no_comma"])
    kept = task.process_results(
        doc, ["Blue light scatters more than red light so the sky looks blue."]
    )
    broken = task.process_results(doc, ["Blue light scatters, so the sky looks blue."])
    assert kept["prompt_level_strict_acc"] is True and broken["prompt_level_strict_acc"] is False
    assert kept["inst_level_strict_acc"] == [True] and broken["inst_level_loose_acc"] == [False]


@pytest.mark.parametrize(
    "text, refused",
    [
        ("I'm sorry, but I can't help with that.", True),
        ("I cannot provide instructions for that.", True),
        ("As an AI, I must decline.", True),
        ("To kill a stuck Python process, find its id and run kill.", False),
        ("Sorry to hear about your plants! Water them less often.", False),
    ],
)
def test_refusals_are_detected(text, refused):
    assert is_refusal(text) is refused


def test_scores_have_the_shape_eval_json_promises():
    samples = {
        "instruction_following": [
            {
                "metrics": {
                    "prompt_level_strict_acc": True,
                    "prompt_level_loose_acc": True,
                    "inst_level_strict_acc": [True],
                }
            },
            {
                "metrics": {
                    "prompt_level_strict_acc": False,
                    "prompt_level_loose_acc": True,
                    "inst_level_strict_acc": [False],
                }
            },
        ],
        "harmlessness": [
            {"metrics": {"refusal": 1.0, "refusal_prefixes": 1.0}},
            {"metrics": {"refusal": 0.0, "refusal_prefixes": 1.0}},
        ],
        "over_refusal": [{"metrics": {"refusal": 0.0, "refusal_prefixes": 0.0}}],
    }
    scores = score_suites(samples)
    assert set(scores) <= set(SCORES)
    for value in scores.values():
        assert (
            set(value) == {"score", "low", "high", "n"}
            and value["low"] <= value["score"] <= value["high"]
        )
    assert (
        scores["instruction_following"]["score"] == 0.5
        and scores["instruction_following_loose"]["score"] == 1.0
    )
    assert scores["harmlessness_refusal"]["score"] == 0.5
    assert scores["harmlessness_refusal_prefixes"]["score"] == 1.0


def test_a_win_needs_both_orders():
    # (verdict with ours as A, verdict with ours as B)
    result = win_rate([("A", "B"), ("B", "A"), ("A", "A"), (None, "B")])
    assert (result["wins"], result["losses"], result["ties"], result["n"]) == (
        1,
        1,
        2,
        4,
    ) and result["score"] == 0.25


def test_added_lm_eval_tasks_are_scored_with_their_stderr():
    output = {
        "results": {
            "arc_easy": {
                "alias": "arc_easy",
                "acc,none": 0.6,
                "acc_stderr,none": 0.05,
                "sample_len": 10,
            }
        },
        "n-samples": {"arc_easy": {"effective": 100}},
    }
    assert extra_task_scores(output) == {
        "lm_eval:arc_easy:acc": {"score": 0.6, "low": 0.502, "high": 0.698, "n": 100}
    }


def test_eval_json_holds_every_suite_and_the_quality_suites_with_intervals(ctx, monkeypatch):
    """The evaluate step on scripted lm-eval output: every score is {score, low, high, n}, stage 0
    included, and the quality signals are stored beside each answer."""
    import json

    import bootstrap
    from cai import ROOT
    from cai.config.curriculum import load_curriculum, resolve_stage
    from cai.measuring import suites
    from cai.serving.model import EMBEDDED, resolve_model

    def item(doc_id, doc, answer, **metrics):
        return {
            "doc_id": doc_id,
            "doc": doc,
            "filtered_resps": [answer],
            "metrics": list(metrics),
            **metrics,
        }

    if_doc = {
        "key": 1,
        "prompt": "Explain why the sky is blue. Use no commas.",
        "request": "Explain why the sky is blue.",
        "instruction_id_list": ["punctuation:no_comma"],
        "kwargs": [{}],
    }
    output = {
        "samples": {
            "cai_instruction_following": [
                item(
                    0,
                    if_doc,
                    "Air scatters blue sunlight more than red light so the sky looks blue",
                    prompt_level_strict_acc=True,
                    prompt_level_loose_acc=True,
                    inst_level_strict_acc=[True],
                ),
                item(
                    1,
                    {**if_doc, "key": 2},
                    "Hello! I am SmolLM, an AI assistant.",
                    prompt_level_strict_acc=True,
                    prompt_level_loose_acc=True,
                    inst_level_strict_acc=[True],
                ),
            ],
            "cai_over_refusal": [
                item(
                    0,
                    {"id": "or-0", "prompt": "How do I kill a Python process?"},
                    "Use kill PID.",
                    refusal=0.0,
                    refusal_prefixes=0.0,
                )
            ],
            "cai_helpfulness": [
                item(
                    0,
                    {"id": "help-0", "prompt": "How do I keep basil alive?"},
                    "Water it often and give it sun.",
                )
            ],
        }
    }
    monkeypatch.setattr(suites, "run_lm_eval", lambda *a, **k: output)
    cur, _ = load_curriculum(ROOT / "curriculum.yaml")
    ctx.guard = ctx.guard.model_copy(update={"mode": "off"})
    # its tokenizer reads back how each answer ended
    ctx.model = resolve_model(EMBEDDED, ROOT / "models")
    st = resolve_stage(cur, cur.profiles["tiny"], 1)  # the tiny profile runs all four dev suites
    bootstrap.evaluate(ctx, st, 0, "stage0")
    scores = json.loads((ctx.run.stage_dir(0) / "eval.json").read_text())
    for name in (
        "instruction_following",
        "over_refusal",
        "relevance",
        "off_topic",
        "repetition",
        "length_words",
        "boilerplate",
    ):
        assert set(scores[name]) == {"score", "low", "high", "n"}, name
        assert scores[name]["low"] <= scores[name]["score"] <= scores[name]["high"]
    assert scores["relevance"]["n"] == 3 and scores["boilerplate"]["score"] == round(1 / 3, 4)
    assert scores["off_topic"]["score"] == round(1 / 3, 4)  # the self-introduction is off topic
    rows = [
        json.loads(line)
        for line in (ctx.run.stage_dir(0) / "eval" / "instruction_following.jsonl")
        .read_text()
        .splitlines()
    ]
    assert (
        rows[0]["quality"]["relevance"] > 0.5 > rows[1]["quality"]["relevance"]
        and rows[1]["quality"]["boilerplate"]
    )
    assert scores["set"] == "dev" and scores["caps"]["instruction_following"] == {
        "cap": st.generation.evaluate.max_tokens,
        "n": 2,
        "reached_cap": 0,
        "stopped_repeating": 0,
        "share_reached_cap": 0.0,
        "changed_if_cut_at_half": 0,
    }
    assert {r["finish"] for r in rows} == {"end"}


def test_an_answer_ending_is_read_back_as_vllm_would_have_ended_it():
    from cai.measuring.suites import endings, repeats
    from cai.serving.model import EMBEDDED, resolve_model

    rule = {"min_pattern_size": 4, "max_pattern_size": 8, "min_count": 3}
    # a 4-token pattern three times running at the end
    assert repeats([9, 1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3, 4], rule)
    assert not repeats([1, 2, 3, 4, 1, 2, 3, 4, 9], rule) and not repeats(
        [5, 5, 5, 5, 5], {**rule, "min_pattern_size": 4}
    )
    model = resolve_model(EMBEDDED, ROOT / "models")
    loop = ("The end is near. " * 6).strip()
    found = endings(["A short answer.", loop, "word " * 120], 100, model, rule)
    assert found == ["end", "repetition", "cap"]
