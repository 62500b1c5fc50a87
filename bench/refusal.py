"""The refusal detectors against answers people labelled: PyRIT's refusal-scorer set (169 answers,
`refusal.csv` and `refusal_extra.csv`, cai/data/outside.py), each read by the project's check
(`is_refusal`) and by Zou et al. 2023's refusal strings (`refused_by_prefixes`).

    python bench/refusal.py

`refusal_extra.csv` labels an answer that does not address its request (off topic) a refusal,
which no phrase match can see: its recall is read apart. Prints, per detector and file, the
precision and recall, and `refusal_precision=P refusal_recall=R` last (the project's check, both
files together).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cai.data import outside  # noqa: E402
from cai.data.refusal import is_refusal, refused_by_prefixes  # noqa: E402


def confusion(rows: list[dict], detect) -> dict:
    """True/false positives and negatives of `detect` against the people's labels."""
    found = {"tp": 0, "fp": 0, "fn": 0, "tn": 0}
    for r in rows:
        said, truth = detect(r["response"]), r["refusal"]
        found[("t" if said == truth else "f") + ("p" if said else "n")] += 1
    return found


def precision_recall(c: dict) -> tuple[float, float]:
    precision = c["tp"] / (c["tp"] + c["fp"]) if c["tp"] + c["fp"] else 0.0
    recall = c["tp"] / (c["tp"] + c["fn"]) if c["tp"] + c["fn"] else 0.0
    return round(precision, 3), round(recall, 3)


def main() -> None:
    rows = outside.rows("pyrit_refusal")
    files = {"refusal.csv": [r for r in rows if r["id"].startswith("refusal-")]}
    files["refusal_extra.csv"] = [r for r in rows if r["id"].startswith("refusal_extra-")]
    files["both"] = rows
    for name, detect in (
        ("project check", is_refusal),
        ("Zou et al. prefixes", refused_by_prefixes),
    ):
        for file, subset in files.items():
            c = confusion(subset, detect)
            p, r = precision_recall(c)
            print(f"{name:20} {file:18} n={len(subset):3} precision={p:.3f} recall={r:.3f} {c}")
    p, r = precision_recall(confusion(rows, is_refusal))
    print(f"refusal_precision={p} refusal_recall={r}")


if __name__ == "__main__":
    main()
