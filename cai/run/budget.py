"""What a run costs on a GPU: the estimate before it starts, and the stop when the budget is spent.

    python bootstrap.py plan [--profile gpu] [--run NAME] [--gpu-price-per-hour P]

The estimate is an upper bound from the curriculum's counts: every proposal kept, every
answer as long as its `max_tokens`, every task a pair from each source. Throughputs are
the profile's stated ones (`profiles.<name>.gpu`), or measured ones where `--run` names
a run of the same profile: its seconds per generated token and per trained pair.
"""

from __future__ import annotations

from dataclasses import dataclass

from cai.config.constitution import Constitution
from cai.config.curriculum import StageConfig
from cai.config.machine import GPUPlan, Speed
from cai.measuring.suites import suite_sizes

# Typical prompt lengths (tokens) a request of each step sends: its instruction, the task,
# and what it reads (an answer, a critique). Prefill is cheap next to decoding, so these
# need only be of the right size.
PROMPT_TOKENS = {
    "optimize": 500,
    "propose": 250,
    "respond": 120,
    "contrast": 200,  # the instruction and an exemplar turn or two
    "critique": 350,
    "revise": 450,
    "judge": 500,
    "guard": 600,
    "evaluate": 120,
}
GUARD_VERDICT_TOKENS = 16
DPO_WORK = 4 / 3  # a DPO step: forward + backward on both sides, plus the reference's forward


@dataclass(frozen=True)
class Throughput:
    """Seconds per unit of work: stated in the profile, or measured from a run."""

    seconds_per_generated_token: float
    seconds_per_prompt_token: float
    seconds_per_train_token: float
    source: str

    @classmethod
    def stated(cls, speed: Speed) -> "Throughput":
        return cls(
            1 / speed.generate_tokens_per_s,
            1 / speed.prefill_tokens_per_s,
            1 / speed.train_tokens_per_s,
            "stated in the profile",
        )

    @classmethod
    def measured(cls, manifest: dict, stated: "Throughput") -> "Throughput":
        """From a finished run's steps: generation seconds over the tokens they made (prompt
        cost folded in), training seconds over the tokens trained."""
        gen_s = gen_tokens = train_s = train_tokens = 0.0
        for stage in manifest.get("stages", {}).values():
            for step, stats in stage.get("steps", {}).items():
                if step in ("respond", "contrast", "critique", "revise", "propose") and stats.get(
                    "completion_tokens"
                ):
                    gen_s += stats["seconds"]
                    gen_tokens += stats["completion_tokens"]
                if step == "train" and stats.get("train_tokens") and stats.get("train_seconds"):
                    train_s += stats["train_seconds"]
                    train_tokens += stats["train_tokens"]
        if not gen_tokens:
            return stated
        return cls(
            gen_s / gen_tokens,
            0.0,
            train_s / train_tokens if train_tokens else stated.seconds_per_train_token,
            "measured in the run" + ("" if train_tokens else " (training: stated)"),
        )


def contrast_caps(constitution: Constitution, stages) -> dict[int, list[int]]:
    """Per stage, each principle's contrast cap (its own `max_tokens`, else the stage's): what the
    contrast step generates at most. Judge-checked ones count too (an upper bound)."""
    return {
        n: [
            p.contrast.max_tokens or st.generation.contrast.max_tokens
            for p in constitution.for_stage(n)
            if p.contrast
        ]
        for n, st in stages.items()
    }


def stage_work(
    st: StageConfig, caps: list[int] = (), evaluate_only: bool = False, test: bool = False
) -> dict[str, dict[str, float]]:
    """Per step: generated tokens, prompt tokens and trained tokens, at most; `caps`: each of the
    stage's contrasting principles' cap (contrast_caps); `test`: with the test set's."""
    c, g = st.counts, st.generation
    tasks = c.seeds_used + c.proposed
    critiques = tasks if c.critiques is None else min(tasks, c.critiques)
    sizes = suite_sizes()
    items = (
        c.final_eval_items
        if (evaluate_only or st.number == 6) and c.final_eval_items
        else c.eval_items
    )
    answered = {s: min(items, sizes.get(s, items)) for s in st.suites.run}
    eval_items = sum(answered.values())
    eval_caps = {s: st.suites.run_max_tokens.get(s, g.evaluate.max_tokens) for s in answered}
    win_rate = (
        2 * 2 * min(items, sizes.get("helpfulness", 0)) if "helpfulness" in st.suites.run else 0
    )
    work = {
        "evaluate": {
            "generated": sum(answered[s] * eval_caps[s] for s in answered)
            + win_rate * g.judge.max_tokens,
            "prompt": (eval_items + win_rate) * PROMPT_TOKENS["evaluate"],
        }
    }
    if test:
        t = st.suites
        tested = {b: min(t.test_items or sizes[b], sizes[b]) for b in t.test}
        work["test"] = {
            "generated": sum(n * t.test_max_tokens[b] for b, n in tested.items()),
            "prompt": sum(tested.values()) * PROMPT_TOKENS["evaluate"],
        }
    if evaluate_only:
        return work
    calls_per_program = 5 * (st.optimize.trainset + 2 * st.optimize.devset)
    optimize_calls = (
        0 if st.optimize.optimizer == "none" else calls_per_program * len(st.optimize.programs)
    )
    requests = {
        "optimize": (optimize_calls, g.revise.max_tokens),
        "propose": (c.proposed, g.propose.max_tokens),
        "respond": (tasks * c.samples, g.respond.max_tokens),
        "critique": (critiques, g.critique.max_tokens),
        "revise": (critiques, g.revise.max_tokens),
        "judge": (2 * critiques if "judge" in st.pair_sources else 0, g.judge.max_tokens),
        # a candidate pair's prompt and sides: two candidates a task at most
        "guard": (tasks * 4, GUARD_VERDICT_TOKENS),
    }
    for step, (n, max_tokens) in requests.items():
        work[step] = {"generated": n * max_tokens, "prompt": n * PROMPT_TOKENS[step]}
    # each principle's requests, both sides, answered up to contrast_samples times
    contrasts = c.contrasts * 2 * c.contrast_samples if "contrast" in st.pair_sources else 0
    work["contrast"] = {
        "generated": contrasts * sum(caps),
        "prompt": contrasts * len(caps) * PROMPT_TOKENS["contrast"],
    }
    pairs = tasks * (
        ("best_of_n" in st.pair_sources)
        + ("revision" in st.pair_sources or "judge" in st.pair_sources)
    ) + c.contrasts * len(caps) * ("contrast" in st.pair_sources)
    side = PROMPT_TOKENS["respond"] + g.respond.max_tokens
    work["train"] = {"trained": pairs * 2 * min(side, st.train.max_length) * st.train.epochs}
    return work


def run_work(
    stages: dict[int, StageConfig], n: int, last: int, caps: dict[int, list[int]]
) -> dict[str, dict[str, float]]:
    """Stage `n`'s work in a run to stage `last`: stage 0 is the base's evaluation, and the test set
    is answered at stage 0 and by the final policy."""
    if n == 0:
        return stage_work(stages[1], evaluate_only=True, test=True)
    return stage_work(stages[n], caps.get(n, []), test=n == last)


def stage_hours(
    work: dict[str, dict[str, float]], speed: Throughput, fixed_seconds: float
) -> float:
    seconds = fixed_seconds
    for w in work.values():
        seconds += (
            w.get("generated", 0) * speed.seconds_per_generated_token
            + w.get("prompt", 0) * speed.seconds_per_prompt_token
        )
        seconds += w.get("trained", 0) * DPO_WORK * speed.seconds_per_train_token
    return seconds / 3600


def expected_minutes(
    stages: dict[int, StageConfig],
    speed: Throughput,
    fixed_seconds: float,
    manifest: dict,
    first: int,
    last: int,
    caps: dict[int, list[int]],
) -> tuple[float, float]:
    """(minutes to go, minutes in all) for stage 0's evaluation and stages first..last, from the
    steps' work (stage_work) at `speed`; steps the manifest marks done cost nothing to go."""
    to_go = total = 0.0
    for n in [0, *range(first, last + 1)]:
        done = {
            k
            for k, v in manifest.get("stages", {}).get(f"stage{n}", {}).get("steps", {}).items()
            if v.get("status") == "done"
        }
        work = run_work(stages, n, last, caps)
        fixed = 0 if n == 0 else fixed_seconds
        total += stage_hours(work, speed, fixed) * 60
        to_go += (
            stage_hours(
                {k: w for k, w in work.items() if k not in done},
                speed,
                fixed * (n > 0 and "gate" not in done),
            )
            * 60
        )
    return to_go, total


def plan_rows(
    stages: dict[int, StageConfig],
    gpu: GPUPlan,
    speed: Throughput,
    price: float,
    caps: dict[int, list[int]],
) -> list[dict]:
    """One row a stage (0: the base's evaluation): tokens, GPU-hours and dollars, at most."""
    rows = []
    for n in [0, *stages]:
        work = run_work(stages, n, max(stages), caps)
        hours = stage_hours(work, speed, 0 if n == 0 else gpu.seconds_per_stage)
        rows.append(
            {
                "stage": n,
                "generated": int(sum(w.get("generated", 0) for w in work.values())),
                "prompt": int(sum(w.get("prompt", 0) for w in work.values())),
                "trained": int(sum(w.get("trained", 0) for w in work.values())),
                "hours": hours,
                "usd": hours * price,
            }
        )
    return rows


def render(rows: list[dict], price: float, speed: Throughput) -> str:
    lines = [
        f"Estimated at most, at ${price:.2f} per GPU-hour; throughputs {speed.source}.",
        "",
        "| stage | generated tokens | prompt tokens | trained tokens | GPU-hours | USD |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['stage']} | {r['generated']:,} | {r['prompt']:,} | {r['trained']:,} | "
            f"{r['hours']:.2f} | {r['usd']:.2f} |"
        )
    hours, usd = sum(r["hours"] for r in rows), sum(r["usd"] for r in rows)
    lines.append(
        f"| all | {sum(r['generated'] for r in rows):,} | {sum(r['prompt'] for r in rows):,} | "
        f"{sum(r['trained'] for r in rows):,} | {hours:.2f} | {usd:.2f} |"
    )
    return "\n".join(lines)


class BudgetSpent(RuntimeError):
    """The run stopped at a step boundary because its budget is spent, or the next stage would pass
    it."""


def spent_hours(manifest: dict) -> float:
    return sum(
        stats.get("gpu_hours", 0.0)
        for stage in manifest.get("stages", {}).values()
        for stats in stage.get("steps", {}).values()
    )


def check(
    manifest: dict, budget_usd: float | None, price: float, where: str, next_usd: float = 0.0
) -> None:
    """Stop before `where` if the GPU-hours spent, plus what comes next, pass the budget."""
    if budget_usd is None:
        return
    spent = spent_hours(manifest) * price
    if spent + next_usd > budget_usd:
        ahead = f" and {where} is estimated at up to ${next_usd:.2f}" if next_usd else ""
        raise BudgetSpent(
            f"budget: ${spent:.2f} of ${budget_usd:.2f} spent ({spent_hours(manifest):.2f} "
            f"GPU-hours at ${price:.2f}){ahead}; stopped before {where}. Re-run the same command "
            "with a larger --budget-usd to go on from here."
        )


def check_stage(
    manifest: dict,
    gpu: GPUPlan,
    st: StageConfig,
    caps: list[int],
    budget_usd: float | None,
    price: float,
) -> None:
    """Stop before a stage starts if the GPU-hours spent plus the stage's estimate (at the rates the
    run has measured so far, else the profile's) pass the budget."""
    speed = Throughput.measured(manifest, Throughput.stated(gpu))
    ahead = stage_hours(stage_work(st, caps), speed, gpu.seconds_per_stage) * price
    check(manifest, budget_usd, price, f"stage{st.number}", next_usd=ahead)
