"""The report's plots, drawn from the run folder alone (cai/run/report.py writes the text around
them).

    dev.png     the dev suites, one small panel a score, four to a row: each stage's score beside
                the base's on the same items, both with their 95% intervals
    test.png    the test set: the base against the final policy, each IFEval and HarmBench figure
                with its interval
    pairs.png, tokens.png, time.png   stacked bars a stage

Sized for a page: 1,200 pixels wide whatever the number of panels.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from cai.measuring.intervals import PER_ITEM, mean_interval, per_item, proportion  # noqa: E402
from cai.store import Run  # noqa: E402

WIDTH_IN, DPI, COLUMNS = 12.0, 100, 4
BOUNDED = {
    "instruction_following",
    "instruction_following_loose",
    "harmlessness_refusal",
    "harmlessness_unsafe",
    "over_refusal",
    "off_topic",
    "boilerplate",
    "ifeval_prompt_strict",
    "ifeval_prompt_loose",
    "ifeval_inst_strict",
    "ifeval_inst_loose",
    "harmbench_refusal",
    "harmbench_unsafe",
}  # proportions: drawn on [0, 1]


def base_on_items(run: Run, n: int, name: str, score: dict) -> dict | None:
    """The base's `name` over the items stage n was scored on (None where the items' records are
    missing)."""
    if name not in PER_ITEM:
        return None
    ours, base = per_item(run, n, name), per_item(run, 0, name)
    values = [base[k] for k in ours if k in base]
    if not values or len(values) < len(ours):
        return None
    if name in BOUNDED and all(v in (0.0, 1.0) for v in values):
        return proportion(sum(values), len(values))
    return mean_interval(values)


def _errorbar(ax, x: float, value: dict, **style) -> None:
    ax.errorbar(
        [x],
        [value["score"]],
        yerr=[[value["score"] - value["low"]], [value["high"] - value["score"]]],
        capsize=3,
        **style,
    )


def plot_dev(
    run: Run, evals: dict[int, dict], names: list[str], directions: dict[str, str], out: Path
) -> str | None:
    """One panel a dev score: at each stage, the stage (dark) beside the base on the same items
    (grey)."""
    names = [s for s in names if any(s in e for n, e in evals.items() if n > 0)]
    if not names:
        return None
    rows = -(-len(names) // COLUMNS)
    fig, axes = plt.subplots(rows, COLUMNS, figsize=(WIDTH_IN, 2.4 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        stages = [n for n in sorted(evals) if n > 0 and name in evals[n]]
        for n in stages:
            base = base_on_items(run, n, name, evals[n][name]) or evals.get(0, {}).get(name)
            if base:
                _errorbar(
                    ax,
                    n - 0.12,
                    base,
                    fmt="s",
                    color="0.6",
                    markersize=4,
                    label="base, same items" if n == stages[0] else None,
                )
            _errorbar(
                ax,
                n + 0.12,
                evals[n][name],
                fmt="o",
                color="C0",
                markersize=4,
                label="stage" if n == stages[0] else None,
            )
        ax.set_title(f"{name} ({directions.get(name, 'neither')} is better)", fontsize=8)
        ax.set_xticks(stages)
        ax.tick_params(labelsize=7)
        if name in BOUNDED:
            ax.set_ylim(-0.05, 1.05)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6, loc="best")
    fig.suptitle(
        "Dev set (the project's suites; the gate reads them): each stage beside the base on the "
        "same items",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(out / "dev.png", dpi=DPI)
    plt.close(fig)
    return "dev.png"


def plot_test(base: dict, final: dict, final_name: str, names: list[str], out: Path) -> str | None:
    """The test set: the base against the final policy, one pair of points a figure."""
    names = [s for s in names if s in base and s in final]
    if not names:
        return None
    fig, ax = plt.subplots(figsize=(WIDTH_IN, 3.0))
    for i, name in enumerate(names):
        _errorbar(
            ax,
            i - 0.12,
            base[name],
            fmt="s",
            color="0.6",
            markersize=5,
            label="base (stage 0)" if i == 0 else None,
        )
        _errorbar(
            ax,
            i + 0.12,
            final[name],
            fmt="o",
            color="C1",
            markersize=5,
            label=f"final ({final_name})" if i == 0 else None,
        )
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, fontsize=8)
    ax.set_ylim(-0.05, 1.05)
    ax.legend(fontsize=7)
    ax.set_title(
        "Test set (IFEval, HarmBench: never trained on, no setting chosen on them), 95% intervals",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(out / "test.png", dpi=DPI)
    plt.close(fig)
    return "test.png"


def plot_bars(
    rows: dict[int, dict[str, float]], title: str, ylabel: str, path: Path, order: list[str] = ()
) -> str:
    """Stacked bars, one a stage, one segment a key (in `order` first, the rest by name)."""
    keys = sorted(
        {k for r in rows.values() for k in r},
        key=lambda k: (order.index(k) if k in order else len(order), k),
    )
    fig, ax = plt.subplots(figsize=(WIDTH_IN / 2, 3))
    bottom, xs = [0.0] * len(rows), list(rows)
    for k in keys:
        values = [rows[n].get(k, 0) for n in xs]
        ax.bar([str(n) for n in xs], values, bottom=bottom, label=k)
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("stage")
    ax.set_ylabel(ylabel)
    if keys:
        ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path.name


def plot_barh(values: dict[str, float], xlabel: str, path: Path) -> str:
    """One horizontal bar a key (the principles' rates)."""
    fig, ax = plt.subplots(figsize=(WIDTH_IN / 2, 3))
    ax.barh(list(values), list(values.values()))
    ax.set_xlabel(xlabel)
    ax.tick_params(labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path.name
