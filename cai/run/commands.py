"""The commands that read a finished (or stopped) run folder: prompts, report, export, verify;
and plan, which reads only the config (and a run, for measured throughputs).

    python bootstrap.py prompts --run NAME --stage K [--program P] [--diff M]
    python bootstrap.py report  --run NAME
    python bootstrap.py export  --run NAME [--out DIR]
    python bootstrap.py verify  --run NAME
    python bootstrap.py plan    [--profile gpu] [--run NAME] [--gpu-price-per-hour P]
        [--gpus N --nodes M --gpu KIND]
"""

from __future__ import annotations

import argparse
import difflib
from pathlib import Path

from cai import ROOT
from cai.config.constitution import load_constitution
from cai.config.curriculum import load_curriculum, resolve_stage
from cai.config.settings import ConfigError
from cai.prompts.optimize import PROGRAMS
from cai.run import budget, layouts, release, report as cai_report
from cai.store import Run
from cai.training import memory


def run_folder(name: str, default: str = "") -> Path:
    """runs/NAME, or NAME itself where it is a path."""
    name = name or default
    return Path(name) if ("/" in name or name.startswith(".")) else ROOT / "runs" / name


def export(argv: list[str]) -> int:
    """`bootstrap.py export --run NAME [--out DIR]`: the pairs as a dataset folder, and the
    cards."""
    p = argparse.ArgumentParser(
        prog="bootstrap.py export",
        description=release.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--run", metavar="NAME", required=True, help="run folder: runs/NAME, or a path")
    p.add_argument("--out", type=Path, help="where to write (default: the run's release/)")
    args = p.parse_args(argv)
    run = existing_run(args.run)
    out = release.export(run, args.out or run.root / "release")
    print(
        f"wrote {out / 'dataset'} (datasets.load_dataset opens it) and "
        f"{out / 'model' / 'README.md'}"
    )
    return 0


def report(argv: list[str]) -> int:
    """`bootstrap.py report --run NAME`: report.md and report/*.png from the run folder alone."""
    p = argparse.ArgumentParser(
        prog="bootstrap.py report",
        description=cai_report.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--run", metavar="NAME", required=True, help="run folder: runs/NAME, or a path")
    run = existing_run(p.parse_args(argv).run)
    print(f"wrote {cai_report.write_report(run)}")
    return 0


def prompts(argv: list[str]) -> int:
    """`bootstrap.py prompts --run NAME --stage K [--program P] [--diff M]`: a stage's
    compiled prompts as the adapter sends them, or how they differ from stage M's."""
    p = argparse.ArgumentParser(prog="bootstrap.py prompts", description=prompts.__doc__)
    p.add_argument("--run", metavar="NAME", required=True, help="run folder: runs/NAME, or a path")
    p.add_argument("--stage", type=int, required=True, choices=range(1, 7), metavar="K")
    p.add_argument(
        "--program",
        metavar="P",
        help=f"one program: {', '.join(PROGRAMS)}, or contrast-<principle> (default: all)",
    )
    p.add_argument(
        "--diff",
        type=int,
        choices=range(1, 7),
        metavar="M",
        help="show the difference against stage M",
    )
    args = p.parse_args(argv)
    run = existing_run(args.run)
    text = prompt_sections(run, args.stage, args.program)
    if args.diff is None:
        print(text)
        return 0
    other = prompt_sections(run, args.diff, args.program)
    diff = difflib.unified_diff(
        other.splitlines(),
        text.splitlines(),
        f"stage{args.diff}/prompts.md",
        f"stage{args.stage}/prompts.md",
        lineterm="",
    )
    print("\n".join(diff) or f"no difference between stage {args.diff} and stage {args.stage}")
    return 0


def prompt_sections(run: Run, n: int, program: str | None) -> str:
    path = run.stage_dir(n) / "prompts.md"
    if not path.exists():
        raise ConfigError(
            f"--stage {n}: {path} does not exist; stage {n}'s optimize step has not run"
        )
    sections = ("\n" + path.read_text()).split("\n## ")[1:]
    chosen = [
        sec for sec in sections if program is None or sec.split("\n", 1)[0].strip() == program
    ]
    if not chosen:
        names = [sec.split("\n", 1)[0].strip() for sec in sections]
        raise ConfigError(
            f"--program: stage {n} compiled no program {program!r} (it has: {', '.join(names)})"
        )
    return "\n".join("## " + sec.rstrip() + "\n" for sec in chosen)


def verify(argv: list[str]) -> int:
    """`bootstrap.py verify --run NAME`: every finished stage's files against the sha256 sealed in
    the manifest."""
    p = argparse.ArgumentParser(prog="bootstrap.py verify", description=verify.__doc__)
    p.add_argument("--run", metavar="NAME", required=True, help="run folder: runs/NAME, or a path")
    run = existing_run(p.parse_args(argv).run)
    problems = run.verify()
    sealed = sum(len(st.get("files", {})) for st in run.manifest.get("stages", {}).values())
    for line in problems:
        print(line)
    print(f"{run.root}: {sealed} sealed files, {len(problems)} problems")
    return 1 if problems else 0


def plan(argv: list[str]) -> int:
    """`bootstrap.py plan [--profile gpu] [--run NAME]`: before anything runs, the tokens, GPU-hours
    and dollars each stage may take, and the memory plan of each job on the GPU."""
    p = argparse.ArgumentParser(
        prog="bootstrap.py plan",
        description=budget.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--profile", default="gpu", help="a profile with a gpu section (default: gpu)")
    p.add_argument("--curriculum", type=Path, default=ROOT / "curriculum.yaml")
    p.add_argument("--constitution", type=Path, default=ROOT / "constitution.yaml")
    p.add_argument(
        "--run",
        metavar="NAME",
        help="take throughputs measured in this run instead of the stated ones",
    )
    p.add_argument(
        "--gpu-price-per-hour", type=float, help="USD per GPU-hour (default: the profile's)"
    )
    p.add_argument(
        "--gpus",
        type=int,
        metavar="N",
        help="also plan for N GPUs a node (beside 1 x A100, 8 x H100, 2 x 8 x H100)",
    )
    p.add_argument("--nodes", type=int, default=1, metavar="M", help="... on M nodes (default 1)")
    p.add_argument(
        "--gpu",
        choices=sorted(layouts.GPU_KINDS),
        default="h100-80gb",
        help="... of this kind (default h100-80gb)",
    )
    args = p.parse_args(argv)
    curriculum, _ = load_curriculum(args.curriculum)
    profile = curriculum.profiles.get(args.profile)
    if profile is None or profile.gpu is None:
        raise ConfigError(
            f"{args.curriculum}: profiles.{args.profile}: "
            f"{'not found' if profile is None else 'has no gpu section'}; plan needs a profile "
            "with one (memory, price, throughputs)"
        )
    stages = {n: resolve_stage(curriculum, profile, n) for n in range(1, 7)}
    caps = budget.contrast_caps(load_constitution(args.constitution)[0], stages)
    speed = budget.Throughput.stated(profile.gpu)
    if args.run:
        speed = budget.Throughput.measured(existing_run(args.run).manifest, speed)
    price = (
        profile.gpu.price_per_hour if args.gpu_price_per_hour is None else args.gpu_price_per_hour
    )
    print(f"# Plan: profile {args.profile}, model {profile.model}\n")
    print(budget.render(budget.plan_rows(stages, profile.gpu, speed, price, caps), price, speed))
    try:
        jobs = memory.plan(
            profile, stages, profile.model, profile.guard.model, profile.gpu.memory_gib
        )
    except ValueError as e:
        raise ConfigError(f"{args.curriculum}: profiles.{args.profile}.gpu: {e}") from None
    print(f"\nMemory on each {profile.gpu.memory_gib:.0f} GiB GPU, one job at a time:")
    for job in jobs:
        print(f"- {job.line()}" + ("" if job.fits else f"\n  to fit: {memory.advice(job)}"))
    placed, where = memory.placement(
        profile.serve.gpus,
        memory.train_processes(stages),
        profile.gpu.gpus_per_node * profile.gpu.nodes,
        profile.serve.sleep_while_training,
    )
    print(f"- placement: {where}")

    shapes = list(layouts.STANDARD_LAYOUTS)
    if args.gpus:
        shapes.append(layouts.Layout(layouts.GPU_KINDS[args.gpu], args.gpus, args.nodes))
    measured_on = layouts.measured_gpus(existing_run(args.run).manifest) if args.run else 1

    def fit(layout):
        kind = layout.kind
        return memory.fit_layout(
            profile, stages, profile.model, kind.memory_gib, layout.gpus_per_node, layout.gpus
        )

    rows = layouts.layout_rows(
        stages,
        profile.gpu.seconds_per_stage,
        speed,
        shapes,
        fit,
        args.gpu_price_per_hour,
        caps,
        measured_on,
    )
    print(
        f"\nThe six stages on more GPUs ({speed.source}; scaling as cai/run/layouts.py states it, "
        "not measured here):\n"
    )
    print(layouts.render_layouts(rows))
    return 0 if all(j.fits for j in jobs) and placed else 1


def existing_run(name: str) -> Run:
    run = Run(run_folder(name, ""))
    if not run.manifest:
        raise ConfigError(f"--run: {run.root} has no manifest.json; is it a run folder?")
    return run
