"""The release of a fixture run: the pairs open with datasets.load_dataset in one call; the cards
say what made them."""

import json
import subprocess
import sys
from pathlib import Path

import datasets

from cai.config.constitution import load_constitution
from cai.config.curriculum import load_curriculum
from cai.config.settings import PairFilters
from cai.data.pairs import build_pairs
from cai.data.quality import by_id
from cai.store import Run, write_json_atomic, write_jsonl_atomic

ROOT = Path(__file__).resolve().parent.parent
NO_COMMA = {"instruction_id": "punctuation:no_comma", "kwargs": {}, "description": "Use no commas."}


def stage_pairs(n: int) -> list[dict]:
    task = {
        "id": f"s{n}-seed00",
        "source": "seed",
        "prompt": "Name fruits. Use no commas.",
        "constraint": NO_COMMA,
    }
    responses = [
        {
            "id": f"s{n}-seed00-r{k}",
            "task_id": task["id"],
            "sample": k,
            "ok": True,
            "response": text,
            "model": f"stage{n - 1}",
            "program": f"stage{n}/respond@abc",
            "messages": [{"role": "user", "content": task["prompt"]}],
        }
        for k, text in enumerate(["apple, pear", "apple and pear"])
    ]
    crit = [{"id": "c", "critique": "Commas.", "program": "p"}]
    rev = [
        {
            "id": f"s{n}-seed00-r0-v",
            "task_id": task["id"],
            "response_id": responses[0]["id"],
            "critique_id": "c",
            "principle_id": "follow-the-instruction",
            "ok": True,
            "revision": "pear and apple",
            "model": f"stage{n - 1}",
            "program": "p",
        }
    ]
    guard = [
        {"target": t, "verdict": {"safe": True, "categories": [], "parsed": True}}
        for t in (task["id"], responses[0]["id"], responses[1]["id"], rev[0]["id"])
    ]
    # stage 1 without the quality filters, stage 2 with them: the splits must still agree on the
    # schema
    if n == 1:
        return build_pairs(n, [task], responses, crit, rev, [], guard, guard_mode="self")[0]
    rows = [
        {
            "id": r["id"],
            "task_id": task["id"],
            "relevance": 0.7,
            "repetition": 0.0,
            "words": 3,
            "boilerplate": False,
            "empty": False,
        }
        for r in (*responses, *rev)
    ]  # as quality.jsonl holds them
    quality = by_id(rows)
    return build_pairs(
        n,
        [task],
        responses,
        crit,
        rev,
        [],
        guard,
        guard_mode="self",
        quality=quality,
        filters=PairFilters(),
    )[0]


def fixture_run(tmp_path: Path) -> Run:
    con, con_sha = load_constitution(ROOT / "constitution.yaml")
    cur, cur_sha = load_curriculum(ROOT / "curriculum.yaml")
    run = Run(tmp_path / "fixture")
    run.manifest = {
        "run": "fixture",
        "config": {
            "constitution_sha256": con_sha,
            "curriculum_sha256": cur_sha,
            "profile": "cpu",
            "seed": 0,
            "model": "embedded:smollm2-135m-instruct",
        },
        "snapshot": {
            "constitution": con.model_dump(),
            "curriculum": cur.model_dump(exclude_unset=True),
        },
        "versions": {},
        "stages": {},
    }
    for n in (1, 2):
        pairs = stage_pairs(n)
        write_jsonl_atomic(run.stage_dir(n) / "pairs.jsonl", pairs)
        run.stage(n).update(
            promoted=True,
            steps={
                "propose": {"status": "done", "proposed": 6, "kept": 4, "tasks": 10},
                "guard": {"status": "done", "unsafe": 0},
                "pairs": {
                    "status": "done",
                    "pairs": len(pairs),
                    "dropped_judge_tie": 3,
                    "dropped_unsafe": 0,
                },
                "train": {"status": "done", "pairs_used": len(pairs), "loss_last": 0.68},
            },
        )
        (run.stage_dir(n) / "adapter").mkdir()
        (run.stage_dir(n) / "adapter" / "adapter_config.json").write_text("{}")
    for n in (0, 1, 2):
        write_json_atomic(
            run.stage_dir(n) / "eval.json",
            {
                "model": f"stage{n}",
                "instruction_following": {"score": 0.4, "low": 0.2, "high": 0.6, "n": 20},
            },
        )
    run.save()
    return run


def test_export_opens_with_load_dataset_in_one_call(tmp_path):
    run = fixture_run(tmp_path)
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bootstrap.py"),
            "export",
            "--run",
            str(run.root),
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    data = datasets.load_dataset(str(tmp_path / "out" / "dataset"))
    assert sorted(data) == ["stage1", "stage2"] and data["stage1"].num_rows == 2
    row = data["stage2"][0]
    assert row["chosen"][0]["role"] == "assistant" and row["provenance"]["stage"] == 2
    assert row["provenance"]["guard"]["mode"] == "self"
    assert (
        row["provenance"]["quality"]["chosen"]["relevance"] == 0.7
        and data["stage1"][0]["provenance"]["quality"]["chosen"] is None
    )


def test_cards_say_what_made_the_data_and_the_terms(tmp_path):
    run = fixture_run(tmp_path)
    from cai.run import release

    out = release.export(run, tmp_path / "release")
    dataset_card = (out / "dataset" / "README.md").read_text()
    model_card = (out / "model" / "README.md").read_text()
    assert dataset_card.startswith("---\nlicense: openrail")
    assert (
        "Weak safety filter" in dataset_card and "| stage1 | 6 | 4 | 10 | 2 | 3 |" in dataset_card
    )
    assert "base_model: embedded:smollm2-135m-instruct" in model_card
    assert "| stage2 | `stage2/adapter` | yes | 2 | 0.68 | 0.4 [0.2, 0.6] (n=20) |" in model_card
    for card in (dataset_card, model_card):
        # the use restrictions travel with both
        assert "help build weapons" in card and "Intended use" in model_card
    assert json.loads(json.dumps(dataset_card))  # plain text, no template left unfilled
    assert "{" not in dataset_card.split("## License")[0].replace("{}", "")


def test_two_exports_of_the_same_name_do_not_share_a_cache(tmp_path):
    from cai.run import release

    one = fixture_run(tmp_path / "a")
    two = fixture_run(tmp_path / "b")
    write_jsonl_atomic(two.stage_dir(1) / "pairs.jsonl", stage_pairs(1)[:1])
    rows = [
        datasets.load_dataset(str(release.export(run, run.root / "release") / "dataset"))[
            "stage1"
        ].num_rows
        for run in (one, two)
    ]
    assert rows == [2, 1]


def test_a_run_with_an_empty_stage_exports_a_dataset_that_opens_and_names_the_empty_stage(tmp_path):
    from cai.run import release

    run = fixture_run(tmp_path)
    write_jsonl_atomic(run.stage_dir(1) / "pairs.jsonl", [])  # stage 1 kept nothing
    run.stage(1).update(
        promoted=False,
        gate={
            "against": "stage0",
            "failed": ["too few pairs: 0 pairs passed (train.min_pairs is 16)"],
        },
    )
    run.stage(1)["steps"]["pairs"].update(pairs=0, dropped_filter_relevance=5)
    del run.stage(1)["steps"]["train"]
    (run.stage_dir(1) / "adapter" / "adapter_config.json").unlink()
    (run.stage_dir(1) / "adapter").rmdir()
    run.save()
    out = release.export(run, tmp_path / "release")
    data = datasets.load_dataset(str(out / "dataset"))
    assert sorted(data) == ["stage2"] and data["stage2"].num_rows == 2
    card = (out / "dataset" / "README.md").read_text()
    assert (
        "- stage1: too few pairs: 0 pairs passed (train.min_pairs is 16)" in card
        and "stage1-" not in card
    )
    model_card = (out / "model" / "README.md").read_text()
    assert (
        "| stage1 |" not in model_card
        and "- stage1 trained no adapter: too few pairs" in model_card
    )


def test_a_run_with_no_pairs_at_all_exports_a_card_that_says_so_and_no_split(tmp_path):
    from cai.run import release

    run = fixture_run(tmp_path)
    for n in (1, 2):
        write_jsonl_atomic(run.stage_dir(n) / "pairs.jsonl", [])
        run.stage(n).update(
            promoted=False,
            gate={"failed": ["too few pairs: 0 pairs passed (train.min_pairs is 16)"]},
        )
    run.save()
    out = release.export(run, tmp_path / "release")
    card = (out / "dataset" / "README.md").read_text()
    assert (
        "This run kept no pairs" in card
        and "configs:" not in card
        and not list((out / "dataset").glob("data/*"))
    )
    assert "- stage2: too few pairs" in card
