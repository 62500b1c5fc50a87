"""The entry point refuses bad input with one line and exit code 2, touching nothing."""

import json
import socket
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def bootstrap(*args):
    return subprocess.run(
        [sys.executable, str(ROOT / "bootstrap.py"), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def snapshot(folder: Path) -> dict:
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_help_lists_the_flags():
    out = bootstrap("--help").stdout
    for flag in (
        "--until",
        "--only",
        "--run",
        "--constitution",
        "--curriculum",
        "--seed",
        "--profile",
    ):
        assert flag in out


def test_bad_constitution_exits_2_and_names_the_field(tmp_path):
    bad = yaml.safe_load((ROOT / "constitution.yaml").read_text())
    bad["principles"][1]["id"] = bad["principles"][0]["id"]
    path = tmp_path / "constitution.yaml"
    path.write_text(yaml.safe_dump(bad))
    result = bootstrap("--run", str(tmp_path / "run"), "--constitution", str(path))
    assert result.returncode == 2
    assert (
        result.stderr.strip().splitlines()[-1]
        == f"error: {path}: principles: duplicate principle id 'follow-the-instruction'"
    )
    assert not (tmp_path / "run").exists()


def test_only_a_later_stage_of_a_new_run_is_refused(tmp_path):
    result = bootstrap("--run", str(tmp_path / "run"), "--only", "stage3")
    assert (
        result.returncode == 2 and "stage2 of" in result.stderr and "is not done" in result.stderr
    )
    assert not (tmp_path / "run").exists()


def test_bad_stage_name(tmp_path):
    result = bootstrap("--run", str(tmp_path / "run"), "--until", "stage9")
    assert (
        result.returncode == 2
        and "--until: expected stage1 .. stage6, got 'stage9'" in result.stderr
    )


def test_missing_model_then_other_settings(tmp_path):
    cur = yaml.safe_load((ROOT / "curriculum.yaml").read_text())
    cur["profiles"]["cpu"]["model"] = str(tmp_path / "no-such-model")
    path = tmp_path / "curriculum.yaml"
    path.write_text(yaml.safe_dump(cur))
    run = tmp_path / "run"
    result = bootstrap("--run", str(run), "--curriculum", str(path), "--profile", "cpu")
    assert result.returncode == 2 and not run.exists()
    assert (
        f"{path}: profiles.cpu.model: model path {tmp_path / 'no-such-model'} does not exist"
        in result.stderr
    )


def test_a_run_made_with_other_settings_is_refused_and_left_as_it_was(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text(
        json.dumps({"run": "run", "config": {"seed": 0}, "stages": {}})
    )
    before = snapshot(run)
    result = bootstrap("--run", str(run), "--profile", "cpu", "--seed", "5")
    assert (
        result.returncode == 2 and "different settings" in result.stderr and "seed" in result.stderr
    )
    assert snapshot(run) == before


def test_a_taken_port_is_refused_before_anything_is_written(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        cur = yaml.safe_load((ROOT / "curriculum.yaml").read_text())
        cur["profiles"]["cpu"]["serve"]["port"] = s.getsockname()[1]
        path = tmp_path / "curriculum.yaml"
        path.write_text(yaml.safe_dump(cur))
        result = bootstrap(
            "--run", str(tmp_path / "run"), "--curriculum", str(path), "--profile", "cpu"
        )
    assert (
        result.returncode == 2
        and "profiles.cpu.serve.port: port" in result.stderr
        and "is in use" in result.stderr
    )
    assert not (tmp_path / "run").exists()


def test_an_unwritable_run_folder_is_one_line(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    result = bootstrap("--run", str(tmp_path / "file" / "run"), "--profile", "cpu")
    assert (
        result.returncode == 2
        and f"--run: cannot create {tmp_path / 'file' / 'run'}" in result.stderr
    )


def test_a_full_disk_is_one_line_and_resumable(monkeypatch, capsys):
    import errno

    import bootstrap as entry

    def full(args):
        raise OSError(errno.ENOSPC, "No space left on device", "runs/cpu/stage1/responses.jsonl")

    monkeypatch.setattr(entry, "bootstrap", full)
    assert entry.main(["--until", "stage1"]) == 1
    err = capsys.readouterr().err
    assert (
        "the disk is full (writing runs/cpu/stage1/responses.jsonl)" in err
        and "re-run the same command to resume" in err
    )
