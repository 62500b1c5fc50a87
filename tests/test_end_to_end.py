"""The real entry point at tiny size: two stages through the real vLLM server and TRL.

The model is the embedded default (SmolLM2-135M-Instruct, built from the installed
wheel): the smallest real model at hand, so its output parses with no special fixture.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cai.store import read_jsonl

ROOT = Path(__file__).resolve().parent.parent
STEPS = ["propose", "respond", "critique", "revise", "judge", "guard", "pairs", "train", "swap", "evaluate", "gate"]


def tiny_curriculum(tmp_path: Path) -> Path:
    data = yaml.safe_load((ROOT / "curriculum.yaml").read_text())
    quick = data["profiles"]["quick"]
    quick["counts"] = {"proposed": 2, "seeds_used": 6, "samples": 2, "eval_items": 4}
    quick["generation"] = {"respond": {"temperature": 0.8, "max_tokens": 48}, "critique": {"temperature": 0.7, "max_tokens": 48},
                           "revise": {"temperature": 0.7, "max_tokens": 64}, "evaluate": {"temperature": 0.0, "max_tokens": 48}}
    quick["train"] = {"learning_rate": 1.0e-4, "max_length": 384}
    data["defaults"]["gate"] = {"max_drop": {}, "max_rise": {}}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def bootstrap(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "bootstrap.py"), *args], capture_output=True, text=True, timeout=1800)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split(")")[-1][:3]


@pytest.fixture(scope="module")
def two_stages(tmp_path_factory):
    """Start the run, kill -9 it in the middle of stage 1, run the same command again."""
    tmp = tmp_path_factory.mktemp("e2e")
    run = tmp / "run"
    args = ["--until", "stage2", "--run", str(run), "--curriculum", str(tiny_curriculum(tmp)), "--profile", "quick"]
    with open(tmp / "first.err", "w") as err:
        first = subprocess.Popen([sys.executable, str(ROOT / "bootstrap.py"), *args], stdout=subprocess.PIPE, stderr=err, text=True)
        for line in first.stdout:
            if line.startswith("stage1 critique: done"):
                break
        server_pid = json.loads((run / "server.pid").read_text())["pid"]
        first.kill()
        first.wait()
    result = bootstrap(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not alive(server_pid)  # the killed run's server did not outlive it
    return run, args


def test_every_step_of_both_stages_is_done(two_stages):
    run, _ = two_stages
    manifest = json.loads((run / "manifest.json").read_text())
    for n in (1, 2):
        steps = manifest["stages"][f"stage{n}"]["steps"]
        assert [s for s in STEPS if steps.get(s, {}).get("status") == "done"] == STEPS
        assert manifest["stages"][f"stage{n}"]["promoted"] is True  # the tiny run's gate asks nothing (4 items a suite)
        assert manifest["stages"][f"stage{n}"]["gate"]["against"] == f"stage{n - 1}"
    assert manifest["stages"]["stage0"]["steps"]["evaluate"]["status"] == "done"
    assert manifest["config"]["seed"] == 0 and "trl" in manifest["versions"]


def test_pairs_train_an_adapter_that_the_next_stage_uses(two_stages):
    run, _ = two_stages
    for n in (1, 2):
        pairs = read_jsonl(run / f"stage{n}" / "pairs.jsonl")
        assert pairs and all(p["prompt"][-1]["role"] == "user" and p["chosen"][0]["role"] == "assistant" for p in pairs)
        # the model's own guard saw every prompt and both sides of every pair that was kept
        assert all(p["provenance"]["guard"]["mode"] == "self" and p["provenance"]["guard"]["chosen"]["safe"] for p in pairs)
        assert (run / f"stage{n}" / "safety.jsonl").exists()
        assert (run / f"stage{n}" / "adapter" / "adapter_config.json").exists()
        scores = json.loads((run / f"stage{n}" / "eval.json").read_text())
        for name in ("instruction_following", "harmlessness_refusal", "harmlessness_unsafe", "over_refusal", "win_rate_vs_base"):
            assert set(scores[name]) >= {"score", "low", "high", "n"} and scores[name]["n"] == 4, name
    # stage 2's requests went to the adapter that stage 1 trained and swapped in
    assert {r["model"] for r in read_jsonl(run / "stage2" / "responses.jsonl")} == {"stage1"}
    assert {r["model"] for r in read_jsonl(run / "stage1" / "responses.jsonl")} == {"stage0"}
    manifest = json.loads((run / "manifest.json").read_text())
    # stage 2 continues stage 1's adapter with it as the reference: the first DPO loss is log(2)
    assert abs(manifest["stages"]["stage2"]["steps"]["train"]["loss_first"] - 0.6931) < 1e-3


def test_the_resumed_run_doubled_nothing(two_stages):
    run, _ = two_stages
    for path in run.rglob("*.jsonl"):
        ids = [r["id"] for r in read_jsonl(path)]
        assert len(ids) == len(set(ids)), path
    steps = json.loads((run / "manifest.json").read_text())["stages"]["stage1"]["steps"]
    for step, name in {"respond": "responses", "critique": "critiques", "revise": "revisions"}.items():
        assert len(read_jsonl(run / "stage1" / f"{name}.jsonl")) == steps[step]["requested"]  # each record once


def test_rerun_resumes_and_redoes_nothing(two_stages):
    run, args = two_stages
    before = {p: p.read_bytes() for p in run.rglob("*.jsonl")}
    result = bootstrap(*args)
    assert result.returncode == 0 and "nothing to do" in result.stdout
    assert {p: p.read_bytes() for p in run.rglob("*.jsonl")} == before


def test_the_run_is_released_as_a_dataset_and_cards(two_stages):
    import datasets

    run, _ = two_stages
    data = datasets.load_dataset(str(run / "release" / "dataset"))
    assert sorted(data) == ["stage1", "stage2"]
    assert data["stage1"].num_rows == len(read_jsonl(run / "stage1" / "pairs.jsonl"))
    assert "Weak safety filter" in (run / "release" / "model" / "README.md").read_text()


def test_the_report_is_written(two_stages):
    run, _ = two_stages
    report = (run / "report.md").read_text()
    assert "| 2 |" in report and (run / "report" / "scores.png").read_bytes()[:4] == b"\x89PNG"
