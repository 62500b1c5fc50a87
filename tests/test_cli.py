"""The entry point refuses bad input with one line and exit code 2, touching nothing."""

import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def bootstrap(*args):
    return subprocess.run([sys.executable, str(ROOT / "bootstrap.py"), *args], capture_output=True, text=True, timeout=300)


def snapshot(folder: Path) -> dict:
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_help_lists_the_flags():
    out = bootstrap("--help").stdout
    for flag in ("--until", "--only", "--run", "--constitution", "--curriculum", "--seed", "--profile"):
        assert flag in out


def test_bad_constitution_exits_2_and_names_the_field(tmp_path):
    bad = yaml.safe_load((ROOT / "constitution.yaml").read_text())
    bad["principles"][1]["id"] = bad["principles"][0]["id"]
    path = tmp_path / "constitution.yaml"
    path.write_text(yaml.safe_dump(bad))
    result = bootstrap("--run", str(tmp_path / "run"), "--constitution", str(path))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == f"error: {path}: principles: duplicate principle id 'follow-the-instruction'"
    assert not (tmp_path / "run").exists()


def test_only_a_later_stage_of_a_new_run_is_refused(tmp_path):
    result = bootstrap("--run", str(tmp_path / "run"), "--only", "stage3")
    assert result.returncode == 2 and "stage2 of" in result.stderr and "is not done" in result.stderr
    assert not (tmp_path / "run").exists()


def test_bad_stage_name(tmp_path):
    result = bootstrap("--run", str(tmp_path / "run"), "--until", "stage9")
    assert result.returncode == 2 and "--until: expected stage1 .. stage6, got 'stage9'" in result.stderr


def test_missing_model_then_other_settings(tmp_path):
    cur = yaml.safe_load((ROOT / "curriculum.yaml").read_text())
    cur["profiles"]["quick"]["model"] = str(tmp_path / "no-such-model")
    path = tmp_path / "curriculum.yaml"
    path.write_text(yaml.safe_dump(cur))
    run = tmp_path / "run"
    result = bootstrap("--run", str(run), "--curriculum", str(path), "--profile", "quick")
    assert result.returncode == 1 and f"model path {tmp_path / 'no-such-model'} does not exist" in result.stderr
    before = snapshot(run)
    assert (run / "manifest.json") in before
    # the same run folder with another seed is refused, not mixed in
    result = bootstrap("--run", str(run), "--curriculum", str(path), "--profile", "quick", "--seed", "5")
    assert result.returncode == 2 and "different settings (seed)" in result.stderr
    assert snapshot(run) == before
