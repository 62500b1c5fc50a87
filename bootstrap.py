"""Constitutional AI bootstrap: a model aligns itself, stage by stage, unattended.

    python bootstrap.py --until stage6              # all six stages; re-run to resume
    python bootstrap.py --only stage3 --run cpu     # one stage (the ones before it done)
    python bootstrap.py prompts --run cpu --stage 3 [--program critique] [--diff 2]
    python bootstrap.py report --run cpu            # report.md + plots across stages
    python bootstrap.py export --run cpu            # the pairs as a dataset, with dataset and model cards
    python bootstrap.py verify --run cpu            # every finished stage's files against the manifest's hashes
    python bootstrap.py plan --profile gpu          # tokens, GPU-hours, dollars and memory, before anything runs

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

import math
import shutil
import tempfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import programs
from cai import benchmarks, budget, constraints, examples, guard, principles, quality, release, report
from cai import contrast as contrasts, evaluate as suites, tasks as proposals
from cai.config import StageConfig
from cai.gate import decide as decide_gate
from cai.launch import Settings, main as launch_main, prepare
from cai.lm import Endpoint, Job, program_call, request_seed, run_jobs, seeded
from cai.optimize import PROGRAMS, compile_program, compiled, render, save as save_compiled, saved, slice_sizes
from cai.pairs import best_of_n_count, build_pairs, trusted_sources
from cai.serve import VLLMServer
from cai.store import BASE_NAME, Records, Run, StageError, Timer, policy_name, stage_number, write_json_atomic, write_jsonl_atomic
from cai.swap import gpu_lent, make_swap, surviving_faults
from cai.train_process import train_in_process
from cai.win_rate import win_rates
from programs.critique import Critic
from programs.judge import Judge, asker
from programs.propose import Propose
from programs.respond import Respond, Responder
from programs.revise import Reviser


@dataclass(kw_only=True)
class Context(Settings):
    """What every step needs: the run folder, the server and how stages are put into it, and the settings (cai/launch.py)."""

    run: Run
    server: VLLMServer
    swap: object  # cai/swap.py: LoraSwap | MergedSwap

    def endpoint(self, policy: str) -> Endpoint:
        """Requests to `policy` (stage0 or stageN); with a merged swap its weights are put in place now."""
        return Endpoint(self.server.api_base, self.server.api_key, self.swap.activate(policy), self.adapter, self.timeout_s, label=policy)

    def jobs(self, jobs: list[Job], make_program, output: str, policy: str, sampling, out, label: str, progress=None, prime=0) -> dict:
        """`make_program()` on every job against `policy`: one record each in `out`, with `output` and the prompt's version (`label@sha`)."""
        call, version = program_call(make_program, output, self.endpoint(policy), sampling), programs.version(make_program, label)
        return run_jobs(jobs, call, out, self.concurrency, self.seed, version, progress=progress or label.replace("/", " "), prime=prime)

    def trusted(self, st: StageConfig) -> tuple[list[str], dict]:
        """The stage's pair sources as far as trusted: the judge's only where its measured agreement allows (cai/pairs.py)."""
        return trusted_sources(st, self.run.step_stats(st.number, "optimize"))

    def contrasting(self, st: StageConfig) -> list:
        """The stage's principles whose contrast it can run (cai/contrast.py)."""
        return contrasts.contrasting(self.constitution.for_stage(st.number), "judge" in self.trusted(st)[0])

    def step(self, n: int, name: str, fn) -> None:
        """Run one step unless the manifest says it is done; record its stats and time."""
        if self.run.step_done(n, name):
            return
        budget.check(self.run.manifest, self.budget_usd, self.gpu_price, f"stage{n} {name}")
        print(f"stage{n} {name}: running", flush=True)
        with Timer() as t:
            stats = {k: v for k, v in (fn() or {}).items() if not k.startswith("_")}
        self.run.mark_done(n, name, t.seconds, gpu_hours=round(t.seconds * self.gpus / 3600, 5), **stats)
        print(f"stage{n} {name}: done in {t.seconds:.1f}s " + " ".join(f"{k}={v}" for k, v in stats.items()), flush=True)


def bootstrap(args) -> int:
    """Check the config, open (or resume) the run and serve its model; evaluate the base, run each stage from the last promoted
    policy, test the final one; report. A dead or hung server is restarted and the step it stopped goes on from its last record."""
    if (launch := prepare(args)) is None:
        return 0
    run, profile = launch.run, launch.profile
    with VLLMServer(launch.serve, run.root / "server.log", run.root / "server.pid") as server:
        ctx = Context(run=run, server=server, swap=make_swap(server, run.root, profile.trust_remote_code), **launch.settings.fields())
        survive = lambda what, fn: surviving_faults(server, ctx.swap, ctx.server_restarts, what, fn)  # noqa: E731
        for name in ("evaluate", "test"):  # the base, once: on the dev suites, and on the test set
            survive("stage0", lambda: ctx.step(0, name, lambda: evaluate(ctx, launch.stages[1], 0, BASE_NAME, name)))
        policy = BASE_NAME
        for n in range(1, launch.last + 1):
            if n < launch.first or run.stage_done(n):  # done before: its policy is the one to continue, if promoted
                policy = policy_name(n) if run.stage(n).get("promoted") else policy
                continue
            needed = sorted({policy, policy_name(n) if run.step_done(n, "swap") else BASE_NAME} - {BASE_NAME})
            for name in needed:  # a new server knows no trained stage
                ctx.swap.make_servable(name, run.root / name / "adapter", keep=tuple(needed))
            if profile.gpu and not run.stage(n).get("steps"):  # about to start a stage: will it pass the budget?
                budget.check_stage(run.manifest, profile.gpu, launch.stages[n], ctx.budget_usd, ctx.gpu_price)
            policy = survive(f"stage{n}", lambda: run_stage(ctx, launch.stages[n], policy))
        final = launch.stages[launch.last]  # the final policy on the test set, beside the last stage run (the verdict reads it)
        survive("test", lambda: ctx.step(final.number, "test", lambda: evaluate(ctx, final, final.number, policy, "test")
                                         if policy != BASE_NAME else {"skipped": "no stage was promoted: the final policy is the base"}))
    release.export(run, run.root / "release")
    report.write_report(run)
    print(f"done: {run.root} (report.md; dataset and model cards in {run.root / 'release'})", flush=True)
    return 0


def run_stage(ctx: Context, st: StageConfig, policy: str) -> str:
    """Run the stage's steps that are not done yet; return the name of the policy to continue from."""
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
        return not_trained(ctx, n, policy, "too few pairs", f"{made} pairs passed (train.min_pairs is {st.train.min_pairs})",
                           ("train", "swap", "evaluate", "gate"))
    step(n, "train", lambda: train(ctx, st, policy))
    if diverged := ctx.run.step_stats(n, "train").get("diverged"):
        return not_trained(ctx, n, policy, "training diverged", diverged, ("swap", "evaluate", "gate"))
    step(n, "swap", lambda: swap(ctx, st, policy))
    step(n, "evaluate", lambda: evaluate(ctx, st, n, policy_name(n), reference=policy))
    step(n, "gate", lambda: gate(ctx, st, policy))
    return policy_name(n) if ctx.run.stage(n).get("promoted") else policy


def not_trained(ctx: Context, n: int, policy: str, what: str, detail: str, skipped: tuple[str, ...]) -> str:
    """No adapter to promote: the stage's other steps are skipped and `policy` stays the policy."""
    ctx.run.stage(n).update(promoted=False, gate={"against": policy, "failed": [f"{what}: {detail}"], "not_measured": []})
    for name in skipped:
        ctx.step(n, name, lambda: {"skipped": what})
    print(f"stage{n}: {what} ({detail}); {policy} stays the policy", flush=True)
    return policy


def optimize(ctx: Context, st: StageConfig, policy: str) -> dict:
    """Compile the programs' prompts side by side (cai/examples.py's metrics), save them, render prompts.md."""
    n, stats = st.number, {"optimizer": st.optimize.optimizer}
    names = [] if st.optimize.optimizer == "none" else [f"contrast-{p.id}" for p in ctx.contrasting(st) if "contrast" in st.optimize.programs] + \
        [name for name in st.optimize.programs if name != "contrast"]
    ctx.endpoint(policy)  # the policy's weights in place before the threads ask for them
    with ThreadPoolExecutor(max_workers=max(1, len(names))) as pool:
        for found in pool.map(lambda name: optimize_program(ctx, st, policy, name), names):
            stats.update(found)
    shown = {**PROGRAMS, **{f"contrast-{p.id}": contrasts.program(p) for p in ctx.contrasting(st)}}
    prompts = [render(name, compiled(ctx.run, n, make, name)(), ctx.endpoint(policy).dspy_adapter()) for name, make in shown.items()]
    (ctx.run.stage_dir(n) / "prompts.md").write_text(f"# Prompts of stage {n}\n\n" + "\n".join(prompts))
    return stats


def optimize_program(ctx: Context, st: StageConfig, policy: str, name: str) -> dict:
    """Compile one program within its share of the stage's LM calls, from the last stage's; its stats."""
    n, folder, adapter = st.number, ctx.run.stage_dir(st.number) / "programs", ctx.endpoint(policy).dspy_adapter()
    make = next((contrasts.program(p) for p in ctx.contrasting(st) if name == f"contrast-{p.id}"), None)  # None: one of PROGRAMS
    if saved(folder, name, make) is not None:  # compiled before this step was cut short, or reused by a rerun
        return {f"{name}_reused": True}
    train, dev, calls = slice_sizes(st, name)
    if train <= 0:
        return {f"{name}_skipped": f"the budget ({calls} LM calls) allows no example"}
    answered = judge_lm = None
    if name == "critique_revise":  # twice the seeds asked for, answered once each: those that break their rule go first
        answered = examples.seed_slice(ctx.seed, st, 2 * (train + dev)), ctx.run.records(n, "optimize_responses")
        ctx.jobs([Job(f"{t['id']}-r0", {"request": t["prompt"]}, {"task_id": t["id"]}) for t in answered[0]], Responder, "response", policy,
                 st.generation.respond, answered[1], f"stage{n}/respond", f"stage{n} optimize: answers")
        judge_lm = ctx.endpoint(policy).lm(st.generation.judge, request_seed(ctx.seed, f"stage{n}-optimize-judge"))
    target = examples.compilable(name, ctx.seed, st, ctx.run, ctx.constitution.for_stage(n), train + dev, answered,
                                 judge_lm and asker(judge_lm, adapter), quality.embedder(ctx.embedding_model))
    if not target.examples:
        return {f"{name}_skipped": "no examples"}
    lm = ctx.endpoint(policy).lm(target.sampling, request_seed(ctx.seed, f"stage{n}-optimize-{name}"))
    result, summary = compile_program(target.program, target.metric, target.examples[:train], target.examples[train:train + dev],
                                      st.optimize, lm, adapter, ctx.concurrency, ctx.seed, start=examples.warm_start(
                                          name, saved(ctx.run.root / policy_name(n - 1) / "programs", name, make) if n > 1 else None,
                                          ctx.constitution.for_stage(n)))
    save_compiled(folder, name, result)
    return {**{f"{name}_{k}": v for k, v in summary.items() if k != "optimizer"}, f"{name}_budget": calls}


def propose(ctx: Context, st: StageConfig, policy: str) -> dict:
    """Self-instruct: seed tasks plus new ones the model writes in rounds (later rounds see earlier ones),
    near-duplicates dropped; each gets a rule, drawn where best-of-n separates samples."""
    n, c, records, make = st.number, st.counts, ctx.run.records(st.number, "proposals"), compiled(ctx.run, st.number, Propose, "propose")
    seeds = seeded(ctx.seed, f"stage{n}-seeds").sample(st.seeds, min(c.seeds_used, len(st.seeds)))
    novelty = proposals.Novelty(list(st.seeds) + [t["request"] for t in ctx.run.earlier(n, "tasks")], st.dedupe_threshold)
    held_out = proposals.Novelty(benchmarks.evaluation_texts(st.suites.test), proposals.LEAK_THRESHOLD)  # no task near an evaluation item
    generated, stats = [], Counter(dropped_unusable=0, dropped_near_evaluation=0, dropped_duplicate=0)  # each count recorded, 0 too
    for r, indices in enumerate(proposals.proposal_rounds(c.proposed, c.proposal_rounds)):
        jobs = proposals.proposal_jobs(ctx.seed, n, indices, st.description, st.seeds, [t["request"] for t in generated],
                                       c.examples_shown, c.pool_examples)
        stats.update(ctx.jobs(jobs, make, "request", policy, st.generation.propose, records, f"stage{n}/propose",
                              f"stage{n} propose, round {r + 1}", prime=1))  # the demos lead every prompt
        generated += proposals.admit(jobs, records, novelty, stats, held_out)
    tasks = [{"id": f"s{n}-seed{k:02d}", "source": "seed", "request": s} for k, s in enumerate(seeds)] + generated
    if not tasks:
        raise StageError(f"stage{n}: propose: no task (seeds_used={c.seeds_used}; of {c.proposed} proposals "
                         f"{stats['dropped_unusable']} unusable, {stats['dropped_duplicate']} near-duplicates); see {records.path}")
    weights = constraints.separating_weights(ctx.run.read(n - 1, "tasks"), ctx.run.read(n - 1, "responses"), c.samples)
    write_jsonl_atomic(ctx.run.stage_dir(n) / "tasks.jsonl", proposals.with_rules(tasks, n, ctx.seed, weights, st.constraints))
    return {**stats, "proposed": c.proposed, "kept": len(generated), "seeds": len(seeds), "tasks": len(tasks), "constraint_weights": weights}


def respond(ctx: Context, st: StageConfig, policy: str, tasks: list[dict]) -> dict:
    """Answer the tasks `samples` times each, `respond_batch` tasks at a time, the tasks whose rule
    best-of-n separates best (on the answers so far) first, until they hold `target_pairs` filtered
    best-of-n pairs. A task's first sample goes before any second: the rest hit the prefix cache."""
    n, c, out = st.number, st.counts, ctx.run.records(st.number, "responses")
    earlier_tasks, earlier = ctx.run.read(n - 1, "tasks"), ctx.run.read(n - 1, "responses")
    stats, answered, remaining, found, signals = Counter(), [], list(tasks), None, {}
    while remaining:
        weights = constraints.separating_weights(earlier_tasks + answered, earlier + list(out), c.samples)
        remaining.sort(key=lambda t: -weights.get((t.get("constraint") or {}).get("instruction_id"), 1.0))  # stable: ties keep task order
        size = c.respond_batch
        if found:  # near the target, only as many tasks as the yield so far says it needs (more pairs cost training time)
            size = min(size, max(8, math.ceil(1.2 * (c.target_pairs - found) * len(answered) / found)))
        batch, remaining = remaining[:size], remaining[size:]
        jobs = [Job(f"{t['id']}-r{k}", {"request": t["prompt"]}, {"task_id": t["id"], "sample": k}) for k in range(c.samples) for t in batch]
        stats.update(ctx.jobs(jobs, Responder, "response", policy, st.generation.respond, out, f"stage{n}/respond",
                              f"stage{n} respond, tasks {len(answered) + 1}-{len(answered) + len(batch)} of {len(tasks)}"))
        answered += batch
        found = best_of_n_count(n, answered, out, signals, st.pair_filters, quality.embedder(ctx.embedding_model)) if c.target_pairs else None
        if found is not None and found >= c.target_pairs:
            break
    return {**stats, "tasks_answered": len(answered), "candidate_pairs": found}


def contrast(ctx: Context, st: StageConfig, policy: str, tasks: list[dict]) -> dict:
    """The constitution writes pairs: each principle of the stage that can (cai/contrast.py) answers its
    requests under its positive and its negative instruction, one seed a request; the pairs step keeps
    those its check separates the principle's way, with the bare request as the prompt."""
    n, endpoint = st.number, ctx.endpoint(policy)
    bare = lambda request: endpoint.dspy_adapter().format(Respond, [], {"request": request})  # noqa: E731 (the pair's prompt: as respond sends it)
    jobs, why_not = contrasts.contrast_jobs(ctx.seed, n, tasks, ctx.constitution.for_stage(n), st.counts.contrasts,
                                            "judge" in ctx.trusted(st)[0], bare)
    call = contrasts.dispatch({p.id: compiled(ctx.run, n, contrasts.program(p), f"contrast-{p.id}") for p in ctx.contrasting(st)},
                              endpoint, st.generation.contrast, f"stage{n}/contrast")
    stats = run_jobs(jobs, call, ctx.run.records(n, "contrasts"), ctx.concurrency, ctx.seed, f"stage{n}/contrast", progress=f"stage{n} contrast")
    return {**stats, **{f"{pid}_makes_none": why for pid, why in why_not.items()}}


def critique(ctx: Context, st: StageConfig, policy: str, tasks: list[dict]) -> dict:
    """Critique first answers against the principle drawn for each task, where the revision can
    become a pair (cai/principles.py), at most `counts.critiques`."""
    n, make = st.number, compiled(ctx.run, st.number, Critic, "critique")
    yields = principles.revision_yields(*(ctx.run.earlier(n, name) for name in ("tasks", "revisions", "pairs")))
    jobs, skipped = principles.critique_jobs(tasks, ctx.run.records(n, "responses"), ctx.constitution.for_stage(n), ctx.seed, yields,
                                             "judge" in ctx.trusted(st)[0], st.counts.critiques)
    return {**ctx.jobs(jobs, make, "critique", policy, st.generation.critique, ctx.run.records(n, "critiques"), f"stage{n}/critique"),
            **skipped}


def revise(ctx: Context, st: StageConfig, policy: str, tasks: list[dict]) -> dict:
    """Rewrite each critiqued answer to fix what its critique found, by the principle's revision request."""
    n, make = st.number, compiled(ctx.run, st.number, Reviser, "revise")
    jobs = principles.revision_jobs(ctx.run.records(n, "critiques"), ctx.run.records(n, "responses"), tasks, ctx.constitution.principles)
    return ctx.jobs(jobs, make, "revision", policy, st.generation.revise, ctx.run.records(n, "revisions"), f"stage{n}/revise")


def judge(ctx: Context, st: StageConfig, policy: str, tasks: list[dict]) -> dict:
    """Original against revision, in both orders; not where the checker decides, nor where the
    judge is untrusted: on the CPU these long prompts are the slowest of the stage."""
    sources, trust = ctx.trusted(st)
    if "judge" not in sources:  # its verdicts would not be used: don't spend the CPU
        return {"skipped": "the judge is not a trusted pair source at this stage", **trust}
    n, make = st.number, compiled(ctx.run, st.number, Judge, "judge")
    jobs, decided = principles.judge_jobs(ctx.run.records(n, "revisions"), ctx.run.records(n, "responses"), tasks, ctx.constitution.principles)
    stats = ctx.jobs(jobs, make, "better", policy, st.generation.judge, ctx.run.records(n, "judgments"), f"stage{n}/judge")
    return {**stats, "skipped_checker_decides": decided, **trust}


def measure_quality(ctx: Context, st: StageConfig, tasks: list[dict]) -> dict:
    """Every answer's, revision's and contrast side's quality signals, once: the pair filters and the report read them."""
    answers = [ctx.run.records(st.number, name) for name in ("responses", "revisions", "contrasts")]
    rows = quality.measure(tasks, *answers, quality.embedder(ctx.embedding_model))
    write_jsonl_atomic(ctx.run.stage_dir(st.number) / "quality.jsonl", rows)
    return quality.summary(rows)


def safety_check(ctx: Context, st: StageConfig, tasks: list[dict]) -> dict:
    """The guard on the prompt and both sides of every candidate pair: nothing else can reach training."""
    if ctx.guard.mode == "off":
        return {"mode": "off", "checked": 0}
    candidates, _, _ = stage_pairs(ctx, st, tasks, guard_records=None)
    jobs, out = guard.items_to_check(candidates), ctx.run.records(st.number, "guard")
    stats = classify(ctx, jobs, out, f"stage{st.number} guard")
    unsafe = [j for j in jobs if not out.get(j.id)["verdict"]["safe"]]
    return {"mode": ctx.guard.mode, "candidates": len(candidates), **stats, "unsafe": len(unsafe),
            "unsafe_prompts": sum(j.meta["role"] == "user" for j in unsafe)}


def classify(ctx: Context, jobs: list[Job], out, label: str) -> dict:
    """The guard's verdict on each job; the first of each role goes ahead (its instructions lead the rest)."""
    jobs, primers = guard.one_of_each_role_first(jobs)
    with guard.checker(ctx.guard, ctx.server, ctx.swap, ctx.run.root, ctx.seed, ctx.timeout_s, ctx.trust_remote_code) as check:
        return run_jobs(jobs, check, out, ctx.concurrency, ctx.seed, guard.version(ctx.guard.mode), progress=label, prime=primers)


def make_pairs(ctx: Context, st: StageConfig, tasks: list[dict]) -> dict:
    """The candidates less what the guard flagged: pairs.jsonl, and the flagged ones in safety.jsonl."""
    pairs, counts, unsafe = stage_pairs(ctx, st, tasks, guard_records=list(ctx.run.records(st.number, "guard")))
    write_jsonl_atomic(ctx.run.stage_dir(st.number) / "safety.jsonl", unsafe)
    write_jsonl_atomic(ctx.run.stage_dir(st.number) / "pairs.jsonl", pairs)
    sources, trust = ctx.trusted(st)
    return {**counts, "sources": sources, **trust}


def stage_pairs(ctx: Context, st: StageConfig, tasks: list[dict], guard_records: list[dict] | None):
    """build_pairs over the stage's records: with `guard_records` None, the candidates the guard is to see."""
    n, (sources, _) = st.number, ctx.trusted(st)
    records = [list(ctx.run.records(n, name)) for name in ("responses", "critiques", "revisions", "judgments")]
    return build_pairs(n, tasks, *records, guard_records or (), guard_mode="off" if guard_records is None else ctx.guard.mode,
                       judge_margin=st.judge_margin, quality=quality.by_id(ctx.run.read(n, "quality")), filters=st.pair_filters,
                       sources=sources, contrasts=list(ctx.run.records(n, "contrasts")), principles={p.id: p for p in ctx.constitution.principles})


def train(ctx: Context, st: StageConfig, previous: str) -> dict:
    """A new adapter from this stage's pairs, continuing the previous policy's adapter, in its own process."""
    n, previous_dir = st.number, ctx.run.root / previous / "adapter" if previous != BASE_NAME else None
    with gpu_lent(ctx.server, ctx.swap, ctx.seed), tempfile.TemporaryDirectory(prefix="cai-train-") as job:
        return train_in_process(Path(job), ctx.model, previous_dir, ctx.run.read(n, "pairs"), ctx.run.stage_dir(n) / "adapter", st.train,
                                ctx.seed + n, ctx.trust_remote_code, tensorboard_dir=ctx.run.stage_dir(n) / "tensorboard",
                                progress=f"stage{n} train", devices=ctx.train_devices)


def swap(ctx: Context, st: StageConfig, policy: str) -> dict:
    """Put the new policy into the running server (`serve.swap`)."""
    with Timer() as t:  # in place once it is servable: loaded (lora), or merged and reloaded (merged)
        ctx.swap.make_servable(policy_name(st.number), ctx.run.root / policy_name(st.number) / "adapter", keep=(policy,))
    return {"swap": ctx.server.settings.swap, "load_seconds": round(t.seconds, 3), "served_as": policy_name(st.number)}


def evaluate(ctx: Context, st: StageConfig, n: int, policy: str, step: str = "evaluate", reference: str = BASE_NAME) -> dict:
    """Stage n's evaluation of `policy` through lm-eval: `evaluate`, the dev suites (every stage; the gate
    reads them), or `test`, the test set (the base and the final policy; only the verdict reads it), with
    the base as guard and judge: a score does not move because the stage's own judgement moved."""
    which, folder = "dev" if step == "evaluate" else "test", ctx.run.stage_dir(n) / ("eval" if step == "evaluate" else "test")
    plan = suites.batches(st, which, n)
    shutil.rmtree(folder, ignore_errors=True)  # a step cut short is redone whole: lm-eval does not resume
    system = Respond.instructions if which == "dev" else None  # the test set as its benchmarks run it: the chat template's own
    samples = suites.answer(ctx.server, ctx.swap.activate(policy), policy, plan, ctx.concurrency, ctx.seed, system,
                            ctx.timeout_s, f"stage{n} {step}", ctx.embedding_model, ctx.model,
                            st.suites.repetition and st.suites.repetition.model_dump())
    for suite, rows in samples.items():
        write_jsonl_atomic(folder / f"{suite}.jsonl", rows)
    scores, not_measured = suites.all_scores(samples), {}
    for suite in [s for s in ("harmlessness", "harmbench") if s in samples and ctx.guard.mode != "off"]:  # the base's guard on each answer
        classify(ctx, jobs := guard.answer_jobs(samples[suite]), verdicts := Records(folder / f"{suite}_guard.jsonl"), f"stage{n} {step}: guard")
        scores[f"{suite}_unsafe"] = suites.proportion(sum(not verdicts.get(j.id)["verdict"]["safe"] for j in jobs), len(jobs))
    out = Records(folder / "win_judgments.jsonl")  # the base judges our helpfulness answers against another stage's (cai/win_rate.py)
    ask = lambda jobs, label: ctx.jobs(jobs, Judge, "better", BASE_NAME, st.generation.judge, out, "evaluate/judge",  # noqa: E731
                                       f"stage{n} {step}: {label}")
    if "helpfulness" in samples and n:
        found, not_measured = win_rates(samples["helpfulness"], {"win_rate_vs_previous": reference, "win_rate_vs_base": BASE_NAME},
                                        lambda other: {r["id"]: r["response"] for r in ctx.run.read(stage_number(other), "eval/helpfulness")},
                                        ask, out, st.suites.position_check_items, st.suites.max_position_bias)
        scores.update(found)
    if st.suites.lm_eval_tasks and which == "dev":
        scores.update(suites.extra_tasks(ctx.server, ctx.swap.activate(policy), st.suites.lm_eval_tasks, plan[0].items, plan[0].cap,
                                         ctx.concurrency, ctx.seed, ctx.timeout_s, ctx.model))
    record = suites.eval_record(policy, which, ctx.guard.mode, scores, suites.cap_shares(samples, plan), not_measured,
                                ctx.run.step_stats(n, "optimize") if n else {}, st.optimize.programs)
    write_json_atomic(folder.with_suffix(".json"), record)  # eval.json, test.json
    return {**{k: v["score"] for k, v in scores.items() if "score" in v}, **({"not_measured": sorted(not_measured)} if not_measured else {})}


def gate(ctx: Context, st: StageConfig, reference: str) -> dict:
    """Promote the stage only if its scores hold against the last promoted stage's and the base's (cai/gate.py)."""
    failed = decide_gate(ctx.run, st.number, reference, st.gate)
    return {"promoted": not failed, "against": reference, "failed": len(failed)}


def main(argv: list[str] | None = None) -> int:
    return launch_main(argv, bootstrap, __doc__)


if __name__ == "__main__":
    raise SystemExit(main())
