"""Kill the controller (kill -9) at random moments, re-run the same command each time, and
compare the records with an uninterrupted run of the same seed.

    python bench/soak.py [--points 20] [--until stage1] [--seed 0]
    python bench/soak.py --compare RUN REFERENCE   # two finished runs' records (a refactor's)

Prints `lost=N doubled=N differing=N` last: ids the uninterrupted run (REFERENCE) has and the
killed one (RUN) lacks, ids written twice in one file, and records whose content differs.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def command(run: Path, curriculum: Path, until: str, seed: int) -> list[str]:
    return [
        sys.executable,
        str(ROOT / "bootstrap.py"),
        "--until",
        until,
        "--run",
        str(run),
        "--curriculum",
        str(curriculum),
        "--profile",
        "tiny",
        "--seed",
        str(seed),
    ]


def finished(run: Path, until: str) -> bool:
    manifest = run / "manifest.json"
    if not manifest.exists():
        return False
    stages = json.loads(manifest.read_text()).get("stages", {})
    return stages.get(until, {}).get("steps", {}).get("gate", {}).get("status") == "done"


def compare(run: Path, reference: Path) -> Counter:
    figures = Counter()
    for ref_path in sorted(reference.glob("stage*/**/*.jsonl")):
        rel = ref_path.relative_to(reference)
        ours_lines = (
            [json.loads(line) for line in (run / rel).read_text().splitlines() if line.strip()]
            if (run / rel).exists()
            else []
        )
        theirs = {
            r["id"]: r
            for r in (
                json.loads(line) for line in ref_path.read_text().splitlines() if line.strip()
            )
        }
        ids = Counter(r["id"] for r in ours_lines)
        ours = {r["id"]: r for r in ours_lines}
        figures["records"] += len(theirs)
        figures["lost"] += len(set(theirs) - set(ours))
        figures["doubled"] += sum(c - 1 for c in ids.values())
        figures["differing"] += sum(1 for i in set(theirs) & set(ours) if theirs[i] != ours[i])
    return figures


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--points", type=int, default=20, help="how many kills")
    p.add_argument("--until", default="stage1")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--max-delay",
        type=float,
        default=120.0,
        help="longest an attempt lives before its kill (s)",
    )
    p.add_argument(
        "--compare",
        nargs=2,
        type=Path,
        metavar=("RUN", "REFERENCE"),
        help="only compare two finished runs' records",
    )
    args = p.parse_args()
    if args.compare:
        figures = compare(*args.compare)
        print(
            f"records={figures['records']}\nlost={figures['lost']} doubled={figures['doubled']} "
            f"differing={figures['differing']}"
        )
        return
    work = Path(tempfile.mkdtemp(prefix="cai-soak-"))
    reference, run = work / "reference", work / "killed"
    # a copy: an edit to the repo's file mid-soak would make the runs refuse to resume
    curriculum = work / "curriculum.yaml"
    shutil.copy(ROOT / "curriculum.yaml", curriculum)

    start = time.monotonic()
    subprocess.run(
        command(reference, curriculum, args.until, args.seed), check=True, capture_output=True
    )
    duration = time.monotonic() - start
    print(f"uninterrupted: {duration:.0f} s", flush=True)

    rng = random.Random(args.seed)
    kills = 0
    while kills < args.points and not finished(run, args.until):
        # A moment in this attempt's life, its server's start included. Each attempt resumes
        # where the last was killed, so short attempts still walk the kills through the run.
        delay = rng.uniform(5, min(duration, args.max_delay))
        proc = subprocess.Popen(
            command(run, curriculum, args.until, args.seed),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            kills += 1
            print(f"kill {kills}: after {delay:.0f} s", flush=True)
            time.sleep(2)  # the server follows its controller (PDEATHSIG)
    rest = subprocess.run(
        command(run, curriculum, args.until, args.seed), capture_output=True, text=True
    )
    if rest.returncode != 0:
        print(rest.stderr[-2000:], file=sys.stderr)
    figures = compare(run, reference)
    print(f"kills={kills} records={figures['records']} finished={finished(run, args.until)}")
    print(f"lost={figures['lost']} doubled={figures['doubled']} differing={figures['differing']}")


if __name__ == "__main__":
    main()
