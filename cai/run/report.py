"""`report.md` and its plots (cai/run/plots.py), rebuilt from the run folder alone.

    python bootstrap.py report --run NAME

The verdict first (cai/measuring/verdict.py: the test set, then the dev set, each labelled); then
each stage's dev scores, each gain beside its tax (instruction following next to relevance,
off-topic share, length and repetition), what each gate decided, the pairs and the work by stage.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from cai.measuring.verdict import (
    DEV,
    TEST,
    cell as _cell,
    final_test,
    read_json as _read_json,
    verdict,
)
from cai.run import plots
from cai.run.against import side_by_side
from cai.run.yields import by_principle, principle_rates
from cai.store import STEPS, Run, read_jsonl

# The dev suites' scores in the order the report shows them, and which way is better: the
# verdict's, and the win rate against the previous stage.
SHOWN = {**DEV, "win_rate_vs_previous": "higher"}
# The gain beside its tax: compliance next to what a shortcut to it would cost.
GAIN_AND_TAX = [
    "instruction_following",
    "relevance",
    "off_topic",
    "length_words",
    "repetition",
    "boilerplate",
]
FILTERS = ["relevance", "relevance_margin", "length", "repetition", "boilerplate"]
FILTERS += ["same_chosen", "unmeasured"]  # one chosen text for many requests; no signals


def _stages(run: Run) -> list[int]:
    return sorted(int(k.removeprefix("stage")) for k in run.manifest.get("stages", {}))


def collect(run: Run) -> dict:
    """Everything the report shows, from the run folder."""
    stages = _stages(run)
    evals = {n: _read_json(run.stage_dir(n) / "eval.json") for n in stages}
    pairs = {n: read_jsonl(p) for n in stages if (p := run.stage_dir(n) / "pairs.jsonl").exists()}
    critiques = {
        n: read_jsonl(p) for n in stages if (p := run.stage_dir(n) / "critiques.jsonl").exists()
    }
    return {"stages": stages, "evals": evals, "pairs": pairs, "critiques": critiques}


def write_report(run: Run) -> Path:
    data = collect(run)
    out = run.root / "report"
    out.mkdir(parents=True, exist_ok=True)
    manifest = run.manifest
    cfg = manifest.get("config", {})
    stage_info = manifest.get("stages", {})
    trained = [n for n in data["stages"] if n > 0]

    _, test = final_test(run)
    drawn = [
        plots.plot_dev(run, data["evals"], list(SHOWN), SHOWN, out),
        plots.plot_test(
            _read_json(run.stage_dir(0) / "test.json"),
            test,
            test.get("model", "?"),
            list(TEST),
            out,
        ),
    ]
    by_source = {
        n: Counter(p["provenance"]["source"] for p in data["pairs"].get(n, [])) for n in trained
    }
    drawn.append(
        plots.plot_bars(by_source, "pairs per stage, by source", "pairs", out / "pairs.png")
    )
    tokens = {
        n: {
            step: s.get("prompt_tokens", 0) + s.get("completion_tokens", 0)
            for step, s in stage_info[f"stage{n}"].get("steps", {}).items()
        }
        for n in data["stages"]
    }
    drawn.append(
        plots.plot_bars(tokens, "tokens per stage, by step", "tokens", out / "tokens.png", STEPS)
    )
    seconds = {
        n: {
            step: s.get("seconds", 0)
            for step, s in stage_info[f"stage{n}"].get("steps", {}).items()
        }
        for n in data["stages"]
    }
    drawn.append(
        plots.plot_bars(seconds, "time per stage, by step", "seconds", out / "time.png", STEPS)
    )
    rates = principle_rates(data)
    if rates:
        drawn.append(
            plots.plot_barh(
                {pid: r["rate"] for pid, r in rates.items()},
                "share of critiques whose revision was chosen",
                out / "principles.png",
            )
        )
    drawn = [p for p in drawn if p]

    lines = [f"# Report: run `{manifest.get('run')}`", ""]
    lines += [
        f"Model `{cfg.get('model')}`, profile `{cfg.get('profile')}`, seed {cfg.get('seed')}. "
        f"Guard: `{data['evals'].get(0, {}).get('guard', 'unknown')}`.",
        "",
    ]
    lines += [_model_statement(cfg)]
    promoted = [n for n in trained if stage_info.get(f"stage{n}", {}).get("promoted")]
    lines += verdict(run, promoted)
    lines += [
        "## Dev scores by stage",
        "",
        "Each cell: score [95% interval] (n). Stage 0 is the base model. The gate reads these; so "
        "do the choices of every setting (the test set is read only by the verdict above).",
        "",
    ]
    names = [s for s in SHOWN if any(s in e for e in data["evals"].values())]
    names += sorted({k for e in data["evals"].values() for k in e if k.startswith("lm_eval:")})
    lines += [
        "| stage | " + " | ".join(names) + " | promoted | gate |",
        "| --- " * (len(names) + 3) + "|",
    ]
    for n in data["stages"]:
        e, info = data["evals"][n], stage_info.get(f"stage{n}", {})
        cells = [_cell(e[s], s) if s in e else "-" for s in names]
        gate = info.get("gate", {})
        decided = (
            "-"
            if n == 0
            else "; ".join(gate.get("failed", [])) or f"passed against {gate.get('against', '?')}"
        )
        promoted = "-" if n == 0 else ("yes" if info.get("promoted") else "no")
        lines.append(f"| {n} | " + " | ".join(cells) + f" | {promoted} | {decided} |")
    lines += gain_and_tax(data, stage_info)
    lines += [
        "",
        "Win rates count an item as won only when the base model, as judge, prefers it in both "
        "orders; ties are counted apart. The judge is first asked about a few items in both "
        "orders: where it names the same position both times too often, its verdicts say where an "
        "answer stands, not which is better, and the win rate is not measured:",
        "",
    ]
    for n in trained:
        for name in ("win_rate_vs_previous", "win_rate_vs_base"):
            if (w := data["evals"][n].get(name)) is not None:
                lines.append(
                    f"- stage {n} {name} (against {w.get('against')}): {w.get('wins')} won, "
                    f"{w.get('ties')} tied, {w.get('losses')} lost (position bias "
                    f"{w.get('position_bias', '-')})"
                )
            elif why := data["evals"][n].get("not_measured", {}).get(name):
                lines.append(f"- stage {n} {name}: {why}")
    lines += ["", *[f"![{p}](report/{p})" for p in drawn], ""]

    if origin := manifest.get("derived_from"):
        lines += side_by_side(run, Run(Path(origin["run"])), origin, names)
    lines += [
        "## Pairs and work by stage",
        "",
        "Sources: the stage's mix, less the judge where its agreement with the checker (on "
        "held-out pairs, after compiling) fell short of `judge_min_agreement`.",
        "",
        "| stage | pairs | by source | sources used | judge agreement | dropped by judge | not "
        "separated by the checker | dropped by quality filters | dropped by guard | tokens | "
        "seconds |",
        "| --- " * 11 + "|",
    ]
    for n in trained:
        steps = stage_info[f"stage{n}"].get("steps", {})
        counts = steps.get("pairs", {})
        judge_drops = sum(v for k, v in counts.items() if k.startswith("dropped_judge"))
        filter_drops = sum(v for k, v in counts.items() if k.startswith("dropped_filter"))
        agreement = counts.get("judge_agreement")
        lines.append(
            f"| {n} | {counts.get('pairs', 0)} | {dict(by_source.get(n, {}))} | "
            f"{', '.join(counts.get('sources', [])) or '-'} | "
            f"{'-' if agreement is None else agreement} | {judge_drops} | "
            f"{counts.get('dropped_best_of_n_not_separated', 0)} | {filter_drops} | "
            f"{counts.get('dropped_unsafe', 0)} | {sum(tokens[n].values())} | "
            f"{sum(seconds[n].values()):.0f} |"
        )
    lines += by_principle(run, data, stage_info, trained)
    lines += [
        "",
        "## Prompt optimization",
        "",
        "The metric of each compiled program on held-out seed tasks, before and after compiling, "
        "and what compiling cost.",
        "",
        "| stage | program | before | after | demos | LM calls | tokens | seconds |",
        "| --- " * 8 + "|",
    ]
    for n in trained:
        opt = stage_info[f"stage{n}"].get("steps", {}).get("optimize", {})
        for name in sorted({k.removesuffix("_before") for k in opt if k.endswith("_before")}):
            if f"{name}_before" in opt:
                lines.append(
                    f"| {n} | {name} | {opt[f'{name}_before']} | {opt[f'{name}_after']} | "
                    f"{opt.get(f'{name}_demos')} | {opt.get(f'{name}_lm_calls')} | "
                    f"{opt.get(f'{name}_tokens', '-')} | {opt.get(f'{name}_seconds')} |"
                )
    lines += [
        "",
        "## Principles",
        "",
        "| principle | critiques | revision chosen | rate |",
        "| --- | --- | --- | --- |",
    ]
    lines += [
        f"| {pid} | {r['critiques']} | {r['revision_chosen']} | {r['rate']} |"
        for pid, r in rates.items()
    ]
    lines += ["", "## Example pairs", ""]
    for n in trained:
        for p in data["pairs"].get(n, [])[:2]:
            prov = p["provenance"]
            lines += [
                f"**stage {n}, {prov['source']}, decided by {prov['decided_by']}** ({p['id']})",
                "",
                f"> request: {_short(p['prompt'][-1]['content'])}",
                ">",
                f"> chosen: {_short(p['chosen'][0]['content'])}",
                ">",
                f"> rejected: {_short(p['rejected'][0]['content'])}",
                "",
            ]
    path = run.root / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def gain_and_tax(data: dict, stage_info: dict) -> list[str]:
    """Compliance beside relevance, off-topic share, length, repetition and boilerplate, stage by
    stage, with the pairs each quality filter dropped: a gain read without its tax is not read."""
    shown = [s for s in GAIN_AND_TAX if any(s in e for e in data["evals"].values())]
    if len(shown) < 2:
        return []
    lines = [
        "",
        "## Each gain beside its tax",
        "",
        "Instruction following is what the checkers reward; relevance (cosine of the answer to "
        "the bare request), the off-topic share (relevance under 0.3), length, repetition and "
        "boilerplate are what a shortcut to it would cost (DESIGN.md measured compliance tripling "
        "while answers drifted off topic). The quality figures are on the instruction-following "
        "and helpfulness answers. The last column: pairs each quality filter dropped.",
        "",
        "| stage | " + " | ".join(shown) + " | dropped by filter |",
        "| --- " * (len(shown) + 2) + "|",
    ]
    for n in data["stages"]:
        e = data["evals"][n]
        cells = [_cell(e[s], s) if s in e else "-" for s in shown]
        counts = stage_info.get(f"stage{n}", {}).get("steps", {}).get("pairs", {})
        drops = (
            ", ".join(
                f"{f} {counts[f'dropped_filter_{f}']}"
                for f in FILTERS
                if counts.get(f"dropped_filter_{f}")
            )
            or "-"
        )
        lines.append(f"| {n} | " + " | ".join(cells) + f" | {'-' if n == 0 else drops} |")
    return lines


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + " ..."


def _model_statement(cfg: dict) -> str:
    model = str(cfg.get("model", ""))
    if "135m" in model.lower() or cfg.get("profile") == "cpu":
        return (
            "**What this model can show.** The CPU default is a 135M-parameter model "
            "(SmolLM2-135M-Instruct, from a 4-bit GGUF). It shows that every step of the loop "
            "runs on the real stack. Its judge and its guard are near chance (the judge names the "
            "first answer almost always; the guard calls nearly everything safe), so its labels "
            "come from how the pairs are made: each principle's contrast (its two instructions, "
            "with exemplar turns), confirmed by the principle's own check, and best-of-n samples "
            "a rule checker separates. Whether it refuses harm is decided by the request sets, "
            "never by the model, and a model this small may not tell a harmful request from a "
            "benign one that looks risky: read refusals beside over-refusal. Read the verdict "
            "below and the intervals before reading any change (docs/cpu-default.md)."
        )
    return f"Model `{model}`. Scores carry 95% intervals; a change smaller than the intervals is not a change."
