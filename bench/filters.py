"""What the pair filters do to a finished run's records: the pairs each stage makes with the
filters off and on, the filter that dropped each, and the chosen sides' mean relevance.

    python bench/filters.py --run runs/full [--curriculum curriculum.yaml]

Reads only the run folder (the records the pairs step reads) and measures the quality
signals afresh where a stage has no `quality.jsonl` (a run made before that step existed).
Prints `kept_on=N kept_off=N` last.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cai.config.curriculum import load_curriculum  # noqa: E402
from cai.config.settings import PairFilters  # noqa: E402
from cai.data import quality  # noqa: E402
from cai.data.pairs import build_pairs  # noqa: E402
from cai.store import Run, read_jsonl  # noqa: E402


def records(run: Run, n: int, name: str) -> list[dict]:
    path = run.stage_dir(n) / f"{name}.jsonl"
    return read_jsonl(path) if path.exists() else []


def signals(run: Run, n: int, tasks: list[dict], model) -> dict:
    if stored := records(run, n, "quality"):
        return quality.by_id(stored)
    request_of = {t["id"]: t["request"] for t in tasks}
    answers = [(r, r["response"]) for r in records(run, n, "responses") if r["ok"]]
    answers += [(r, r["revision"]) for r in records(run, n, "revisions") if r["ok"]]
    found = quality.signals(
        [request_of[r["task_id"]] for r, _ in answers], [text for _, text in answers], model
    )
    return {r["id"]: q for (r, _), q in zip(answers, found)}


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--run", type=Path, required=True)
    p.add_argument(
        "--curriculum",
        type=Path,
        default=ROOT / "curriculum.yaml",
        help="where the filters' thresholds come from",
    )
    args = p.parse_args()
    run = Run(args.run)
    filters = load_curriculum(args.curriculum)[0].defaults.pair_filters.model_copy(
        update={"enabled": True}
    )
    guard_mode = (
        run.manifest.get("snapshot", {})
        .get("curriculum", {})
        .get("profiles", {})
        .get(run.manifest.get("config", {}).get("profile"), {})
        .get("guard", {})
        .get("mode", "off")
    )
    model = quality.embedder(quality.EMBEDDED_EMBEDDER)
    total = {"on": 0, "off": 0}
    for n in range(1, 7):
        if not (tasks := records(run, n, "tasks")):
            continue
        q = signals(run, n, tasks, model)
        inputs = (
            n,
            tasks,
            *(
                records(run, n, name)
                for name in ("responses", "critiques", "revisions", "judgments", "guard")
            ),
        )
        line = []
        for name, f in (("off", PairFilters(enabled=False)), ("on", filters)):
            pairs, counts, _ = build_pairs(
                *inputs, guard_mode=guard_mode, judge_margin=0.2, quality=q, filters=f
            )
            chosen = [p["provenance"]["quality"]["chosen"]["relevance"] for p in pairs]
            mean = f"{sum(chosen) / len(chosen):.3f}" if chosen else "-"
            drops = " ".join(
                f"{k.removeprefix('dropped_filter_')}={v}"
                for k, v in sorted(counts.items())
                if k.startswith("dropped_filter")
            )
            line.append(
                f"{name}: pairs={len(pairs)} "
                f"chosen_relevance={mean}{' dropped: ' + drops if drops else ''}"
            )
            total[name] += len(pairs)
        print(f"stage{n}  " + "  |  ".join(line), flush=True)
    print(f"kept_on={total['on']} kept_off={total['off']}")


if __name__ == "__main__":
    main()
