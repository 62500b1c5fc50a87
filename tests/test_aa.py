"""bench/aa.py, the evaluation's noise floor, on the tiny profile: the unchanged base evaluated as
loaded and again after the merged swap path reloaded it, item by item."""

import json
import subprocess
import sys

from cai import ROOT


def test_the_aa_bench_compares_the_base_with_itself_after_a_reload(tmp_path):
    out = tmp_path / "aa.json"
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "aa.py"),
            "--profile",
            "tiny",
            "--items",
            "3",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    last = done.stdout.strip().splitlines()[-1]
    found = json.loads(out.read_text())
    # four dev suites, three benchmarks
    assert (
        last == f"aa_flips={last.split('=')[1].split()[0]} of {found['items']}"
        and found["items"] == 3 * 7
    )
    assert (
        set(found["flips"])
        >= {"instruction_following", "ifeval_prompt_strict", "harmbench_refusal", "rho_overrefusal"}
        and found["profile"] == "tiny"
    )
