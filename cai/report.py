"""`report.md` and its plots (cai/plots.py), rebuilt from the run folder alone.

    python bootstrap.py report --run NAME

The verdict first (cai/verdict.py: the test set, then the dev set, each labelled); then each
stage's dev scores, each gain beside its tax (instruction following next to relevance, off-topic
share, length and repetition), what each gate decided, the pairs and the work by stage.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from cai import plots
from cai.intervals import difference
from cai.store import Run, read_jsonl
from cai.verdict import TEST, cell as _cell, final_test, read_json as _read_json, verdict

# The suites' scores in the order the report shows them, and which way is better.
SHOWN = {
    "instruction_following": "higher",
    "instruction_following_loose": "higher",
    "harmlessness_refusal": "higher",
    "harmlessness_unsafe": "lower",
    "over_refusal": "lower",
    "win_rate_vs_previous": "higher",
    "win_rate_vs_base": "higher",
    "relevance": "higher",
    "off_topic": "lower",
    "repetition": "lower",
    "boilerplate": "lower",
    "length_words": "neither",
}
# The gain beside its tax: compliance next to what a shortcut to it would cost.
GAIN_AND_TAX = ["instruction_following", "relevance", "off_topic", "length_words", "repetition", "boilerplate"]
FILTERS = ["relevance", "relevance_margin", "length", "repetition", "boilerplate", "unmeasured"]
STEP_ORDER = ["optimize", "propose", "respond", "critique", "revise", "judge", "quality", "guard", "pairs", "train", "swap", "evaluate", "gate",
              "test"]


def _stages(run: Run) -> list[int]:
    return sorted(int(k.removeprefix("stage")) for k in run.manifest.get("stages", {}))


def collect(run: Run) -> dict:
    """Everything the report shows, from the run folder."""
    stages = _stages(run)
    evals = {n: _read_json(run.stage_dir(n) / "eval.json") for n in stages}
    pairs = {n: read_jsonl(p) for n in stages if (p := run.stage_dir(n) / "pairs.jsonl").exists()}
    critiques = {n: read_jsonl(p) for n in stages if (p := run.stage_dir(n) / "critiques.jsonl").exists()}
    return {"stages": stages, "evals": evals, "pairs": pairs, "critiques": critiques}


def principle_rates(data: dict) -> dict[str, dict]:
    """Per principle: critiques written, and revision pairs in which its revision was chosen
    (stages whose critiques are on disk)."""
    written, won = Counter(), Counter()
    for recs in data["critiques"].values():
        written.update(c["principle_id"] for c in recs if c.get("ok"))
    for n, recs in data["pairs"].items():
        if n not in data["critiques"]:
            continue
        for p in recs:
            prov = p["provenance"]
            if prov["source"] == "revision" and prov["chosen"]["record_id"].endswith("-v"):
                won[prov["principle_id"]] += 1
    return {pid: {"critiques": written[pid], "revision_chosen": won[pid],
                  "rate": round(won[pid] / written[pid], 3) if written[pid] else 0.0} for pid in sorted(written)}


def write_report(run: Run) -> Path:
    data = collect(run)
    out = run.root / "report"
    out.mkdir(parents=True, exist_ok=True)
    manifest = run.manifest
    cfg = manifest.get("config", {})
    stage_info = manifest.get("stages", {})
    trained = [n for n in data["stages"] if n > 0]

    _, test = final_test(run)
    drawn = [plots.plot_dev(run, data["evals"], list(SHOWN), SHOWN, out),
             plots.plot_test(_read_json(run.stage_dir(0) / "test.json"), test, test.get("model", "?"), list(TEST), out)]
    by_source = {n: Counter(p["provenance"]["source"] for p in data["pairs"].get(n, [])) for n in trained}
    drawn.append(plots.plot_bars(by_source, "pairs per stage, by source", "pairs", out / "pairs.png"))
    tokens = {n: {step: s.get("prompt_tokens", 0) + s.get("completion_tokens", 0)
                  for step, s in stage_info[f"stage{n}"].get("steps", {}).items()} for n in data["stages"]}
    drawn.append(plots.plot_bars(tokens, "tokens per stage, by step", "tokens", out / "tokens.png", STEP_ORDER))
    seconds = {n: {step: s.get("seconds", 0) for step, s in stage_info[f"stage{n}"].get("steps", {}).items()} for n in data["stages"]}
    drawn.append(plots.plot_bars(seconds, "time per stage, by step", "seconds", out / "time.png", STEP_ORDER))
    rates = principle_rates(data)
    if rates:
        drawn.append(plots.plot_barh({pid: r["rate"] for pid, r in rates.items()}, "share of critiques whose revision was chosen",
                                     out / "principles.png"))
    drawn = [p for p in drawn if p]

    lines = [f"# Report: run `{manifest.get('run')}`", ""]
    lines += [f"Model `{cfg.get('model')}`, profile `{cfg.get('profile')}`, seed {cfg.get('seed')}. "
              f"Guard: `{data['evals'].get(0, {}).get('guard', 'unknown')}`.", ""]
    lines += [_model_statement(cfg)]
    promoted = [n for n in trained if stage_info.get(f"stage{n}", {}).get("promoted")]
    lines += verdict(run, promoted)
    lines += ["## Dev scores by stage", "", "Each cell: score [95% interval] (n). Stage 0 is the base model. The gate reads these; "
              "so do the choices of every setting (the test set is read only by the verdict above).", ""]
    names = [s for s in SHOWN if any(s in e for e in data["evals"].values())]
    names += sorted({k for e in data["evals"].values() for k in e if k.startswith("lm_eval:")})
    lines += ["| stage | " + " | ".join(names) + " | promoted | gate |", "| --- " * (len(names) + 3) + "|"]
    for n in data["stages"]:
        e, info = data["evals"][n], stage_info.get(f"stage{n}", {})
        cells = [_cell(e[s], s) if s in e else "-" for s in names]
        gate = info.get("gate", {})
        decided = "-" if n == 0 else "; ".join(gate.get("failed", [])) or f"passed against {gate.get('against', '?')}"
        promoted = "-" if n == 0 else ("yes" if info.get("promoted") else "no")
        lines.append(f"| {n} | " + " | ".join(cells) + f" | {promoted} | {decided} |")
    lines += gain_and_tax(data, stage_info)
    lines += ["", "Win rates count an item as won only when the base model, as judge, prefers it in both orders; "
              "ties are counted apart. The judge is first asked about a few items in both orders: where it names the same "
              "position both times too often, its verdicts say where an answer stands, not which is better, and the win rate "
              "is not measured:", ""]
    for n in trained:
        for name in ("win_rate_vs_previous", "win_rate_vs_base"):
            if (w := data["evals"][n].get(name)) is not None:
                lines.append(f"- stage {n} {name} (against {w.get('against')}): {w.get('wins')} won, {w.get('ties')} tied, {w.get('losses')} lost"
                             f" (position bias {w.get('position_bias', '-')})")
            elif why := data["evals"][n].get("not_measured", {}).get(name):
                lines.append(f"- stage {n} {name}: {why}")
    lines += ["", *[f"![{p}](report/{p})" for p in drawn], ""]

    if origin := manifest.get("derived_from"):
        lines += side_by_side(run, Run(Path(origin["run"])), origin, names)
    lines += ["## Pairs and work by stage", "", "Sources: the stage's mix, less the judge where its agreement with the checker "
              "(on held-out pairs, after compiling) fell short of `judge_min_agreement`.", "",
              "| stage | pairs | by source | sources used | judge agreement | dropped by judge | not separated by the checker "
              "| dropped by quality filters | dropped by guard | tokens | seconds |", "| --- " * 11 + "|"]
    for n in trained:
        steps = stage_info[f"stage{n}"].get("steps", {})
        counts = steps.get("pairs", {})
        judge_drops = sum(v for k, v in counts.items() if k.startswith("dropped_judge"))
        filter_drops = sum(v for k, v in counts.items() if k.startswith("dropped_filter"))
        agreement = counts.get("judge_agreement")
        lines.append(f"| {n} | {counts.get('pairs', 0)} | {dict(by_source.get(n, {}))} | {', '.join(counts.get('sources', [])) or '-'} "
                     f"| {'-' if agreement is None else agreement} | {judge_drops} "
                     f"| {counts.get('dropped_best_of_n_not_separated', 0)} | {filter_drops} | {counts.get('dropped_unsafe', 0)} "
                     f"| {sum(tokens[n].values())} | {sum(seconds[n].values()):.0f} |")
    lines += by_principle(run, data, stage_info, trained)
    lines += ["", "## Prompt optimization", "", "The metric of each compiled program on held-out seed tasks, before and after "
              "compiling, and what compiling cost.", "", "| stage | program | before | after | demos | LM calls | tokens | seconds |",
              "| --- " * 8 + "|"]
    for n in trained:
        opt = stage_info[f"stage{n}"].get("steps", {}).get("optimize", {})
        for name in sorted({k.removesuffix("_before") for k in opt if k.endswith("_before")}):
            if f"{name}_before" in opt:
                lines.append(f"| {n} | {name} | {opt[f'{name}_before']} | {opt[f'{name}_after']} | {opt.get(f'{name}_demos')} "
                             f"| {opt.get(f'{name}_lm_calls')} | {opt.get(f'{name}_tokens', '-')} | {opt.get(f'{name}_seconds')} |")
    lines += ["", "## Principles", "", "| principle | critiques | revision chosen | rate |", "| --- | --- | --- | --- |"]
    lines += [f"| {pid} | {r['critiques']} | {r['revision_chosen']} | {r['rate']} |" for pid, r in rates.items()]
    lines += ["", "## Example pairs", ""]
    for n in trained:
        for p in data["pairs"].get(n, [])[:2]:
            prov = p["provenance"]
            lines += [f"**stage {n}, {prov['source']}, decided by {prov['decided_by']}** ({p['id']})", "",
                      f"> request: {_short(p['prompt'][-1]['content'])}", ">",
                      f"> chosen: {_short(p['chosen'][0]['content'])}", ">",
                      f"> rejected: {_short(p['rejected'][0]['content'])}", ""]
    path = run.root / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def gain_and_tax(data: dict, stage_info: dict) -> list[str]:
    """Compliance beside relevance, off-topic share, length, repetition and boilerplate, stage by
    stage, with the pairs each quality filter dropped: a gain read without its tax is not read."""
    shown = [s for s in GAIN_AND_TAX if any(s in e for e in data["evals"].values())]
    if len(shown) < 2:
        return []
    lines = ["", "## Each gain beside its tax", "",
             "Instruction following is what the checkers reward; relevance (cosine of the answer to the bare request), "
             "the off-topic share (relevance under 0.3), length, repetition and boilerplate are what a shortcut to it "
             "would cost (DESIGN.md measured compliance tripling while answers drifted off topic). The quality figures "
             "are on the instruction-following and helpfulness answers. The last column: pairs each quality filter dropped.", "",
             "| stage | " + " | ".join(shown) + " | dropped by filter |", "| --- " * (len(shown) + 2) + "|"]
    for n in data["stages"]:
        e = data["evals"][n]
        cells = [_cell(e[s], s) if s in e else "-" for s in shown]
        counts = stage_info.get(f"stage{n}", {}).get("steps", {}).get("pairs", {})
        drops = ", ".join(f"{f} {counts[f'dropped_filter_{f}']}" for f in FILTERS if counts.get(f"dropped_filter_{f}")) or "-"
        lines.append(f"| {n} | " + " | ".join(cells) + f" | {'-' if n == 0 else drops} |")
    return lines


def side_by_side(run: Run, original: Run, origin: dict, names: list[str]) -> list[str]:
    """This rerun's scores next to the run it came from, at the stage it reran: the dev suites, the
    test set where both tested there, and the pairs by principle."""
    n = origin["stage"]
    lines = [f"## Against `{original.root.name}`", "",
             f"This run reran stage {n} of `{origin['run']}` under a changed {'; '.join(origin.get('changed', ['constitution']))}, "
             f"from its `{origin.get('first_step', 'contrast')}` step on; the stages before it, and the steps before that, "
             f"are shared. The difference is this run's minus the original's, paired item by item where the records are at hand.",
             "", f"| stage {n} | this run | original | difference |", "| --- | --- | --- | --- |"]
    for file, shown in (("eval.json", names), ("test.json", list(TEST))):
        ours, theirs = _read_json(run.stage_dir(n) / file), _read_json(original.stage_dir(n) / file)
        for name in (s for s in shown if s in ours or s in theirs):
            cells = [f"{e[name]['score']:.2f} [{e[name]['low']:.2f}, {e[name]['high']:.2f}]" if name in e else "-" for e in (ours, theirs)]
            if name in ours and name in theirs:
                diff, how = difference(name, (run, n), (original, n), (ours[name], theirs[name]))
                cells.append(f"{diff['score']:+.3f} [{diff['low']:+.3f}, {diff['high']:+.3f}] ({how})")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    counts = [r.stage(n).get("steps", {}).get("pairs", {}) for r in (run, original)]
    lines.append("| pairs | " + " | ".join(str(c.get("pairs", "-")) for c in counts) + " | |")
    lines.append("| dropped by quality filters | " + " | ".join(
        str(sum(v for k, v in c.items() if k.startswith("dropped_filter"))) for c in counts) + " | |")
    made = [Counter(p["provenance"]["principle_id"] or f"({p['provenance']['source']}, no principle)" for p in r.read(n, "pairs"))
            for r in (run, original)]
    for principle in sorted(set(made[0]) | set(made[1])):
        lines.append(f"| pairs: {principle} | {made[0][principle]} | {made[1][principle]} | |")
    return lines + [""]


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + " ..."


def _model_statement(cfg: dict) -> str:
    model = str(cfg.get("model", ""))
    if "135m" in model.lower() or cfg.get("profile") == "cpu":
        return ("**What this model can show.** The CPU default is a 135M-parameter model (SmolLM2-135M-Instruct, "
                "from a 4-bit GGUF). It shows that every step of the loop runs on the real stack. Its judge and its "
                "guard are near chance (the judge names the first answer almost always; the guard calls nearly "
                "everything safe), so its labels come from how the pairs are made: each principle's contrast (its two "
                "instructions, with exemplar turns), confirmed by the principle's own check, and best-of-n samples a rule "
                "checker separates. Whether it refuses harm is decided by the request sets, never by the model, and a model "
                "this small may not tell a harmful request from a benign one that looks risky: read refusals beside "
                "over-refusal. Read the verdict below and the intervals before reading any change (README, "
                "\"The default run, measured\").")
    return (f"Model `{model}`. Scores carry 95% intervals; a change smaller than the intervals is not a change.")


def by_principle(run: Run, data: dict, stage_info: dict, trained: list[int]) -> list[str]:
    """The pairs by source and by principle, stage by stage: each principle's contrast yield (requests
    answered, pairs its check confirmed, pairs kept after the filters and the guard), its revisions
    kept, and why a principle of the stage made none."""
    pairs = [p for n in trained for p in data["pairs"].get(n, [])]
    from_principles = sum(p["provenance"]["source"] in ("contrast", "revision") for p in pairs)
    lines = ["", "## Pairs by source and by principle", "",
             f"Of {len(pairs)} pairs, {from_principles} ({from_principles / len(pairs):.0%}) come from a principle of the constitution "
             f"(its contrast, or a revision by it); the rest are best-of-n samples a rule checker separated." if pairs else "No pair was kept.",
             "", "| stage | principle | contrast requests | its check separated | kept (contrast) | kept (revision) | why none |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    constitution = run.manifest.get("snapshot", {}).get("constitution", {}).get("principles", [])
    for n in trained:
        counts, made = stage_info.get(f"stage{n}", {}).get("steps", {}), data["pairs"].get(n, [])
        asked = Counter(r["principle_id"] for r in run.read(n, "contrasts") if r.get("ok"))
        pair_counts = counts.get("pairs", {})
        for principle in [c["id"] for c in constitution if n in c["stages"]]:
            kept = sum(p["provenance"]["source"] == "contrast" and p["provenance"]["principle_id"] == principle for p in made)
            revised = sum(p["provenance"]["source"] == "revision" and p["provenance"]["principle_id"] == principle for p in made)
            separated = asked[principle] - pair_counts.get(f"contrast_{principle}_not_separated", 0) if asked[principle] else 0
            why = counts.get("contrast", {}).get(f"{principle}_makes_none", "")
            if not why and asked[principle] and not kept:
                why = ("its check separated none of the two answers" if not separated else
                       "the quality filters or the guard dropped every pair its check confirmed")
            lines.append(f"| {n} | {principle} | {asked[principle] or '-'} | {separated if asked[principle] else '-'} | {kept} | {revised} "
                         f"| {why or ('-' if kept or revised else 'no revision became a pair')} |")
    by_source = Counter(p["provenance"]["source"] for p in pairs)
    return lines + ["", "By source over the run: " + ", ".join(f"{k} {v}" for k, v in sorted(by_source.items())) + "."] if pairs else lines
