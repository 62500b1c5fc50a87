"""Constitutional AI bootstrap: a model aligns itself, stage by stage, unattended.

    python bootstrap.py --until stage6            # all six stages; re-run to resume
    python bootstrap.py --only stage3 --run cpu   # one stage (the ones before it done)
    python bootstrap.py --only stage6 --run cpu --constitution X.yaml   # rerun under new principles
    python bootstrap.py principles --run cpu --stage 6 [--constitution X.yaml]   # their dry run
    python bootstrap.py prompts --run cpu --stage 3 [--program critique] [--diff 2]
    python bootstrap.py report --run cpu          # report.md + plots across stages
    python bootstrap.py export --run cpu          # the pairs as a dataset, dataset and model cards
    python bootstrap.py verify --run cpu          # finished stages' files against their hashes
    python bootstrap.py plan --profile gpu        # tokens, GPU-hours, dollars, memory, beforehand

The base model is evaluated on the dev suites and the test set (stage 0); then each stage of
curriculum.yaml is run by the current policy, the last promoted stage, served by vLLM. It compiles
its prompts with DSPy (optimize), writes new tasks, each with a checkable rule (propose), answers
them several times (respond), answers requests under each principle's positive and negative
instruction (contrast), critiques first answers against a principle and revises them (critique,
revise), has a trusted judge compare the two (judge), measures every answer's relevance and length
(quality) and has Llama Guard 3 classify every candidate pair (guard). What a principle's check, a
rule checker or a sure judge decides, the guard lets through and the quality filters pass becomes a
preference pair (pairs); DPO with LoRA trains a new adapter (train), swapped into the server (swap),
evaluated on the dev suites (evaluate) and promoted only if its scores hold (gate). The final policy
is tested at the end (test). Everything lands in runs/NAME/ (README.md); a re-run resumes.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import programs
from cai.config.curriculum import StageConfig
from cai.data import contrast as contrasts
from cai.data.pairs import trusted_sources
from cai.run import budget, release, report
from cai.run.cli import main as cli_main
from cai.run.launch import Settings, prepare
from cai.serving.lm import Endpoint, Job, program_call, run_jobs
from cai.serving.server import VLLMServer
from cai.serving.swap import make_swap, surviving_faults
from cai.steps.contrast import contrast
from cai.steps.critique import critique
from cai.steps.evaluate import evaluate
from cai.steps.gate import gate
from cai.steps.guard import safety_check
from cai.steps.judge import judge
from cai.steps.optimize import optimize
from cai.steps.pairs import make_pairs
from cai.steps.propose import propose
from cai.steps.quality import measure_quality
from cai.steps.respond import respond
from cai.steps.revise import revise
from cai.steps.swap import swap
from cai.steps.train import train
from cai.store import BASE_NAME, Run, Timer, policy_name


@dataclass(kw_only=True)
class Context(Settings):
    """What every step gets: the run folder, the server and how a stage is put into it (`swap`),
    and the settings (cai/run/launch.py)."""

    run: Run
    server: VLLMServer
    swap: object  # cai/serving/swap.py: LoraSwap | MergedSwap

    def endpoint(self, policy: str) -> Endpoint:
        """Requests to `policy` (stage0 or stageN); with a merged swap, its weights are put in
        place now."""
        served = self.swap.activate(policy)
        api = self.server.api_base, self.server.api_key
        return Endpoint(*api, served, self.adapter, self.timeout_s, label=policy)

    def jobs(
        self,
        jobs: list[Job],
        make_program,
        output: str,
        policy: str,
        sampling,
        out,
        label: str,
        progress=None,
        prime=0,
    ) -> dict:
        """`make_program()` on every job against `policy`: one record each in `out`, with `output`
        and the prompt's version (`label@sha`)."""
        call = program_call(make_program, output, self.endpoint(policy), sampling)
        version = programs.version(make_program, label)
        progress = progress or label.replace("/", " ")
        return run_jobs(jobs, call, out, self.concurrency, self.seed, version, progress, prime)

    def trusted(self, st: StageConfig) -> tuple[list[str], dict]:
        """The stage's pair sources as far as trusted: the judge's only where its measured
        agreement allows (cai/data/pairs.py)."""
        return trusted_sources(st, self.run.step_stats(st.number, "optimize"))

    def contrasting(self, st: StageConfig) -> list:
        """The stage's principles whose contrast it can run (cai/data/contrast.py)."""
        judge_trusted = "judge" in self.trusted(st)[0]
        return contrasts.contrasting(self.constitution.for_stage(st.number), judge_trusted)

    def step(self, n: int, name: str, fn) -> None:
        """Run one step unless the manifest says it is done; record its stats and time."""
        if self.run.step_done(n, name):
            return
        budget.check(self.run.manifest, self.budget_usd, self.gpu_price, f"stage{n} {name}")
        print(f"stage{n} {name}: running", flush=True)
        with Timer() as t:
            stats = {k: v for k, v in (fn() or {}).items() if not k.startswith("_")}
        gpu_hours = round(t.seconds * self.gpus / 3600, 5)
        self.run.mark_done(n, name, t.seconds, gpu_hours=gpu_hours, **stats)
        figures = " ".join(f"{k}={v}" for k, v in stats.items())
        print(f"stage{n} {name}: done in {t.seconds:.1f}s {figures}", flush=True)


def bootstrap(args) -> int:
    """Check the config, open (or resume) the run and serve its model; evaluate the base, run each
    stage from the last promoted policy, test the final one; report. A dead or hung server is
    restarted and the step it stopped goes on from its last record."""
    if (launch := prepare(args)) is None:
        return 0
    run, profile, stages = launch.run, launch.profile, launch.stages
    with VLLMServer(launch.serve, run.root / "server.log", run.root / "server.pid") as server:
        swapper = make_swap(server, run.root, profile.trust_remote_code)
        ctx = Context(run=run, server=server, swap=swapper, **launch.settings.fields())

        def survive(what: str, fn):
            return surviving_faults(server, ctx.swap, ctx.server_restarts, what, fn)

        # The base, once: on the dev suites, and on the test set.
        for name in ("evaluate", "test"):
            base = partial(evaluate, ctx, stages[1], 0, BASE_NAME, name)
            survive("stage0", partial(ctx.step, 0, name, base))

        policy = BASE_NAME
        for n in range(1, launch.last + 1):
            if n < launch.first or run.stage_done(n):
                # Done before: its policy is the one to continue from, if promoted.
                policy = policy_name(n) if run.stage(n).get("promoted") else policy
                continue
            # A new server knows no trained stage.
            swapped = policy_name(n) if run.step_done(n, "swap") else BASE_NAME
            needed = sorted({policy, swapped} - {BASE_NAME})
            for name in needed:
                ctx.swap.make_servable(name, run.root / name / "adapter", keep=tuple(needed))
            if profile.gpu and not run.stage(n).get("steps"):  # will the stage pass the budget?
                budget.check_stage(
                    run.manifest,
                    profile.gpu,
                    stages[n],
                    budget.contrast_caps(ctx.constitution, {n: stages[n]})[n],
                    ctx.budget_usd,
                    ctx.gpu_price,
                )
            policy = survive(f"stage{n}", partial(run_stage, ctx, stages[n], policy))

        # The final policy on the test set, recorded beside the last stage run (the verdict reads
        # it).
        final = stages[launch.last]
        test = partial(evaluate, ctx, final, final.number, policy, "test")
        if policy == BASE_NAME:
            test = partial(dict, skipped="no stage was promoted: the final policy is the base")
        survive("test", partial(ctx.step, final.number, "test", test))
    release.export(run, run.root / "release")
    report.write_report(run)
    print(f"done: {run.root} (report.md; dataset and model cards in {run.root / 'release'})")
    return 0


def run_stage(ctx: Context, st: StageConfig, policy: str) -> str:
    """Run the stage's steps that are not done yet; return the name of the policy to continue
    from."""
    n, step = st.number, ctx.step
    step(n, "optimize", lambda: optimize(ctx, st, policy))
    step(n, "propose", lambda: propose(ctx, st, policy))
    tasks = ctx.run.read(n, "tasks")
    step(n, "respond", lambda: respond(ctx, st, policy, tasks))
    step(n, "contrast", lambda: contrast(ctx, st, policy, tasks))
    step(n, "critique", lambda: critique(ctx, st, policy, tasks))
    step(n, "revise", lambda: revise(ctx, st, policy, tasks))
    step(n, "judge", lambda: judge(ctx, st, policy, tasks))
    step(n, "quality", lambda: measure_quality(ctx, st, tasks))
    step(n, "guard", lambda: safety_check(ctx, st, tasks))
    step(n, "pairs", lambda: make_pairs(ctx, st, tasks))
    if (made := ctx.run.step_stats(n, "pairs").get("pairs", 0)) < st.train.min_pairs:
        why = f"{made} pairs passed (train.min_pairs is {st.train.min_pairs})"
        return not_trained(
            ctx, n, policy, "too few pairs", why, ("train", "swap", "evaluate", "gate")
        )
    step(n, "train", lambda: train(ctx, st, policy))
    if diverged := ctx.run.step_stats(n, "train").get("diverged"):
        return not_trained(
            ctx, n, policy, "training diverged", diverged, ("swap", "evaluate", "gate")
        )
    step(n, "swap", lambda: swap(ctx, st, policy))
    step(n, "evaluate", lambda: evaluate(ctx, st, n, policy_name(n), reference=policy))
    step(n, "gate", lambda: gate(ctx, st, policy))
    return policy_name(n) if ctx.run.stage(n).get("promoted") else policy


def not_trained(ctx: Context, n: int, policy: str, what: str, detail: str, skipped: tuple) -> str:
    """No adapter to promote: the stage's other steps are skipped and `policy` stays the policy."""
    failed = {"against": policy, "failed": [f"{what}: {detail}"], "not_measured": []}
    ctx.run.stage(n).update(promoted=False, gate=failed)
    for name in skipped:
        ctx.step(n, name, lambda: {"skipped": what})
    print(f"stage{n}: {what} ({detail}); {policy} stays the policy", flush=True)
    return policy


def main(argv: list[str] | None = None) -> int:
    return cli_main(argv, bootstrap, __doc__)


if __name__ == "__main__":
    raise SystemExit(main())
