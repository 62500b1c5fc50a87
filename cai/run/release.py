"""The staged release of a run (code -> data -> weights): the pairs as a dataset folder
with its card, and a model card for the adapters. Both are rebuilt from the run folder
alone, so they say only what the run recorded.

    python bootstrap.py export --run NAME [--out DIR]
    datasets.load_dataset("DIR/dataset")   # one split a stage
"""

from __future__ import annotations

import hashlib
import json
import shutil
import textwrap
from pathlib import Path

import yaml
from datasets import DatasetInfo

from cai import ROOT
from cai.config.curriculum import Curriculum
from cai.store import Run, read_jsonl, write_jsonl_atomic

GUARD_SAYS = {
    "llama-guard": "Llama Guard 3 ({model}) classified every prompt and both answers of every pair; anything flagged, "
    "or without a verdict that parsed, was dropped (see each stage's `safety.jsonl`).",
    "self": "**Weak safety filter.** No Llama Guard model was at hand: the policy model itself was asked Llama Guard 3's "
    "question in its format. At 135M parameters it calls almost everything safe (it passed a "
    "pipe-bomb request), so treat this data as unfiltered for harm. Items it did flag, or whose "
    "verdict did not parse, were dropped.",
    "off": "**Unfiltered.** No safety filter ran on this data.",
}


def pair_features():
    """The pairs' schema, stated in the card: without it, a stage whose pairs all leave a
    field empty (no judge on best-of-n pairs) infers another type and the splits disagree."""
    from datasets import Features, Value

    text = Value("string")
    turn = [{"role": text, "content": text}]
    verdict = {"safe": Value("bool"), "categories": [text], "parsed": Value("bool")}
    side = {"record_id": text, "model": text, "program": text}
    signals = {
        "relevance": Value("float64"),
        "repetition": Value("float64"),
        "words": Value("int64"),
        "boilerplate": Value("bool"),
        "empty": Value("bool"),
    }
    propositions = {
        k: Value("bool")
        for k in (
            "refuses",
            "apologises",
            "says_cannot",
            "lectures",
            "brief",
            "names_other_topic",
            "good_refusal",
            "keeps_rule",
        )
    }
    return Features(
        {
            "id": text,
            "prompt": turn,
            "chosen": turn,
            "rejected": turn,
            "provenance": {
                "stage": Value("int64"),
                "task_id": text,
                "task_source": text,
                "source": text,
                "decided_by": text,
                "principle_id": text,
                "critique": text,
                "judge": {
                    "ab": text,
                    "ba": text,
                    "margin_ab": Value("float64"),
                    "margin_ba": Value("float64"),
                },
                "constraint": {
                    "id": text,
                    "description": text,
                    "chosen_keeps": Value("bool"),
                    "rejected_keeps": Value("bool"),
                },
                "guard": {"mode": text, "prompt": verdict, "chosen": verdict, "rejected": verdict},
                "quality": {"chosen": signals, "rejected": signals},
                "contrast": {
                    "requests": text,
                    "positive": text,
                    "negative": text,
                    "signal": text,
                    "at_most": Value("int64"),
                    "margin": Value("float64"),
                    "samples": Value("int64"),
                    "chosen": propositions,
                    "rejected": propositions,
                    "judge": {"ab": text, "ba": text, "decided": text},
                },
                "chosen": side,
                "rejected": side,
            },
        }
    )


def use_terms() -> str:
    """Section 2 of the LICENSE (weights and data), so cards and license never disagree."""
    text = (ROOT / "LICENSE").read_text()
    start = text.index("2. Weights and data")
    return textwrap.dedent(text[start:].split("\n", 1)[1]).strip()


def _stages(run: Run) -> list[int]:
    return sorted(
        int(k[5:])
        for k, v in run.manifest.get("stages", {}).items()
        if k != "stage0" and (v.get("steps", {}).get("pairs", {}).get("status") == "done")
    )


def _why_not(run: Run, n: int) -> str:
    """What the manifest says of a stage that kept no pairs or trained no adapter."""
    stage = run.stage(n)
    failed = "; ".join(stage.get("gate", {}).get("failed", []))
    counts = stage.get("steps", {}).get("pairs", {})
    drops = ", ".join(
        f"{k.removeprefix('dropped_')} {v}"
        for k, v in sorted(counts.items())
        if k.startswith("dropped_") and v
    )
    return failed or (f"dropped: {drops}" if drops else "no reason recorded")


def _empty_stages_say(run: Run, empty: list[int]) -> str:
    if not empty:
        return ""
    lines = "\n".join(f"- stage{n}: {_why_not(run, n)}" for n in empty)
    return f"\nStages that kept no pairs (no split; a stage with none is a normal outcome of the gate and the filters):\n\n{lines}\n"


def _curriculum(run: Run) -> Curriculum:
    """The curriculum the run was made with, from its snapshot (defaults filled in)."""
    return Curriculum.model_validate(run.manifest["snapshot"]["curriculum"])


def _guard_mode(run: Run) -> tuple[str, str | None]:
    guard = _curriculum(run).profiles[run.manifest["config"]["profile"]].guard
    return guard.mode, guard.model


def _yaml_header(meta: dict) -> str:
    return "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n\n"


def write_dataset(run: Run, out: Path) -> Path:
    """`out/data/stageN-<sha>.jsonl` and `out/README.md`, a card whose `configs` make one split a
    stage.

    The sha of the pairs is in each file name because datasets 5.2 caches a local folder
    by its name and relative file names, not its content (measured here: two exports
    named `dataset` loaded as the first one's rows).
    """
    stages = _stages(run)
    files, empty = {}, []
    shutil.rmtree(out / "data", ignore_errors=True)
    for n in stages:
        source = run.stage_dir(n) / "pairs.jsonl"
        pairs = read_jsonl(source) if source.exists() else []
        # datasets refuses a split with no data ("corresponds to no data"): it is named in the card
        # instead
        if not pairs:
            empty.append(n)
            continue
        files[n] = f"data/stage{n}-{hashlib.sha256(source.read_bytes()).hexdigest()[:10]}.jsonl"
        write_jsonl_atomic(out / files[n], pairs)
    mode, guard_model = _guard_mode(run)
    cfg = run.manifest["config"]
    snapshot = _curriculum(run).defaults.model_dump()
    rows = []
    for n in stages:
        steps = run.stage(n)["steps"]
        propose, pairs, guard = (
            steps.get("propose", {}),
            steps.get("pairs", {}),
            steps.get("guard", {}),
        )
        dropped_judge = sum(v for k, v in pairs.items() if k.startswith("dropped_judge"))
        dropped_filters = sum(v for k, v in pairs.items() if k.startswith("dropped_filter"))
        rows.append(
            f"| stage{n} | {propose.get('proposed', '-')} | {propose.get('kept', '-')} | "
            f"{propose.get('tasks', '-')} | {pairs.get('pairs', 0)} | {dropped_judge} | "
            f"{pairs.get('dropped_best_of_n_not_separated', 0)} | {dropped_filters} | "
            f"{pairs.get('dropped_unsafe', 0)} | {guard.get('unsafe', '-')} |"
        )
    meta = {
        "license": "openrail",
        "language": ["en"],
        "tags": ["dpo", "preference", "constitutional-ai", "synthetic"],
        "pretty_name": f"cai-bootstrap pairs: {run.manifest['run']}",
    }
    if files:  # no configs where there is no data: a card, and nothing that fails to load
        meta["configs"] = [
            {
                "config_name": "default",
                "data_files": [{"split": f"stage{n}", "path": path} for n, path in files.items()],
            }
        ]
        meta["dataset_info"] = DatasetInfo(features=pair_features())._to_yaml_dict()
    header = _yaml_header(meta)
    load = (
        f'Load: `datasets.load_dataset("{out}")`, one split a stage that kept pairs'
        f" ({', '.join(f'stage{n}' for n in files)})."
        if files
        else "**This run kept no pairs**: there is no data to load, only this card (see below why each stage kept none)."
    )
    card = f"""{header}# Preference pairs from the run `{run.manifest["run"]}`

Made with no human in the loop by cai-bootstrap: the model `{cfg["model"]}`
(profile `{cfg["profile"]}`, seed {cfg["seed"]}) wrote tasks, answered them, critiqued and revised its
answers against a constitution, and each stage's pairs trained the adapter that did the next stage's work.

{load}
{_empty_stages_say(run, empty)}
Each row is TRL's conversational preference format: `prompt` (the exact messages the policy was sent), `chosen`, `rejected`, and `provenance` (task and
its source, principle, critique, the judge's verdicts and margins in both orders, the constraint and whether
each side kept it, the guard's verdicts, each side's relevance, repetition and length, and the adapter and prompt version that produced each side).

## How pairs were chosen

- Tasks: seed tasks of the stage's type from `curriculum.yaml` plus tasks the model proposed; a proposal
  whose ROUGE-L against the pool exceeded the stage's threshold (default {snapshot["dedupe_threshold"]})
  was dropped as a near-duplicate.
- `best_of_n` pairs: two answers to the same task that lm-eval's IFEval checkers separate (the most relevant
  answer that keeps the task's rule against the most relevant one that breaks it).
- `revision` pairs: an answer against its constitutional revision, decided by the checker where it can,
  else by the model as judge, only where it named the same side in both orders with a margin of at least
  the stage's `judge_margin` (default {snapshot["judge_margin"]}).
- Quality filters: {_filters_say(snapshot["pair_filters"])}
- Safety: {GUARD_SAYS[mode].format(model=guard_model)}

| stage | proposed | proposals kept | tasks | pairs | dropped by judge | not separated by the checker | dropped by quality filters | dropped by guard | items flagged |
| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |
{chr(10).join(rows)}

## Limitations

Everything here was written and judged by the model being trained. The checkers are exact about the rules
they check (case, commas, word counts, endings, lists) and blind to everything else. The quality filters catch
an off-topic, much shorter, repetitive or self-introducing chosen answer, by embedding similarity and counts;
a chosen answer can still be wrong. Read pairs before training on them.

## License and use

{use_terms()}

Constitution sha256 `{cfg["constitution_sha256"]}`, curriculum sha256 `{cfg["curriculum_sha256"]}`;
package versions: {json.dumps(run.manifest.get("versions", {}))}.
"""
    out.mkdir(parents=True, exist_ok=True)
    (out / "README.md").write_text(card)
    return out


def _filters_say(f: dict) -> str:
    if f.get("enabled") is False:
        return (
            "**off**: pairs were kept whatever the relevance, length or repetition of their sides."
        )
    return (
        "the chosen side's relevance to the request (cosine of all-MiniLM-L6-v2 embeddings) at "
        f"least {f.get('min_relevance')}, and at most {f.get('max_relevance_drop')} below the "
        f"rejected side's; at least {f.get('min_length_ratio')} of its length unless the rule "
        f"asked for fewer words; never repetitive (over {f.get('max_repetition')} of its 3-grams "
        "or lines repeated) or boilerplate (defaults of the run; a stage may override them)."
    )


def write_model_card(run: Run, out: Path) -> Path:
    """`out/README.md`: the adapters of the run, what trained them and what the suites measured."""
    cfg = run.manifest["config"]
    rows = []
    untrained = [
        n
        for n in range(1, 7)
        if f"stage{n}" in run.manifest.get("stages", {})
        and not (run.root / f"stage{n}" / "adapter").exists()
    ]
    for n in range(0, 7):
        eval_path = run.root / f"stage{n}" / "eval.json"
        if not eval_path.exists() or n in untrained:
            continue
        scores = json.loads(eval_path.read_text())
        suite = scores.get("instruction_following", {})
        train = run.stage(n).get("steps", {}).get("train", {}) if n else {}
        adapter = "base" if n == 0 else f"`stage{n}/adapter`"
        promoted = "-" if n == 0 else ("yes" if run.stage(n).get("promoted") else "no")
        rows.append(
            f"| stage{n} | {adapter} | {promoted} | {train.get('pairs_used', '-')} | "
            f"{train.get('loss_last', '-')} | {suite.get('score', '-')} [{suite.get('low', '-')}, "
            f"{suite.get('high', '-')}] (n={suite.get('n', '-')}) |"
        )
    mode, guard_model = _guard_mode(run)
    header = _yaml_header(
        {
            "license": "openrail",
            "base_model": cfg["model"],
            "library_name": "peft",
            "tags": ["dpo", "lora", "constitutional-ai"],
        }
    )
    card = f"""{header}# LoRA adapters from the run `{run.manifest["run"]}`

Base model: `{cfg["model"]}` (its own license applies as well). One PEFT LoRA adapter a stage, each trained
with TRL's DPO (or ORPO) on that stage's pairs (`release/dataset`), continuing the previous stage's adapter
with the previous policy as reference. vLLM loads them with `--enable-lora`; transformers with
`peft.PeftModel.from_pretrained(base, "stageN/adapter")`.

| stage | adapter | promoted | pairs | last loss | instruction following, strict [95% interval] |
| --- | --- | --- | --- | --- | --- |
{chr(10).join(rows)}
{"".join(chr(10) + f"- stage{n} trained no adapter: {_why_not(run, n)}" for n in untrained)}

## Intended use

Research on self-alignment: studying what a model learns from its own critiques, revisions and verdicts, and
what that costs. Not for deployment as an assistant: no human reviewed the training data, and the safety
filter was `{mode}`{f" ({guard_model})" if guard_model else ""}. {GUARD_SAYS[mode].format(model=guard_model)}

## Limitations

A small base model (the CPU default has 135M parameters) shows whether the loop runs, not that it aligns:
read the intervals before reading a change. A model trained on its own verdicts learns to game them;
look at relevance and length beside compliance.

## License and use

{use_terms()}
"""
    out.mkdir(parents=True, exist_ok=True)
    (out / "README.md").write_text(card)
    return out


def export(run: Run, out: Path) -> Path:
    """The dataset folder and the model card under `out` (default: the run's `release/`)."""
    write_dataset(run, out / "dataset")
    write_model_card(run, out / "model")
    return out
