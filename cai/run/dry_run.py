"""A dry run of a constitution's principles: what each would make at a stage, before a rerun.

    python bootstrap.py principles --run NAME --stage K [--constitution FILE] [--requests N]

Against the policy that runs stage K of a finished run (the last stage promoted before it), each
principle of stage K that has a contrast answers `--requests` of its requests (stage K's own tasks,
or its slice of a known-kind set) under its positive and its negative instruction, with the stage's
sampling and `counts.contrast_samples`, as the contrast step does. Printed per principle: its check,
the requests and samples, how many pairs its check separates and how many of those the quality
filters pass, each side's signals (words, relevance, share refused, share keeping the task's rule),
and why the rest failed. It reads each principle's instructions and exemplars as written (the
optimizer's demos come only with a rerun) and writes nothing to the run folder but
`principles/stageK-<constitution sha256[:8]>.json`.
"""

from __future__ import annotations

import argparse
import tempfile
from functools import partial
from pathlib import Path

from cai import ROOT
from cai.config.constitution import Constitution, load_constitution
from cai.config.curriculum import Curriculum, resolve_stage
from cai.config.settings import ConfigError
from cai.data import contrast as contrasts, contrast_yield, quality
from cai.data.constraints import check_own_rules
from cai.run.commands import existing_run
from cai.serving.lm import Endpoint
from cai.serving.model import resolve_model
from cai.serving.server import ServeSettings, VLLMServer
from cai.serving.swap import make_swap
from cai.store import BASE_NAME, Records, policy_name, write_json_atomic
from programs.respond import turn


def principles(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="bootstrap.py principles",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--run", metavar="NAME", required=True, help="run folder: runs/NAME, or a path")
    p.add_argument("--stage", type=int, required=True, choices=range(1, 7), metavar="K")
    p.add_argument("--constitution", type=Path, help="principles file (default: the run's own)")
    p.add_argument("--requests", type=int, default=8, help="requests a principle (default 8)")
    args = p.parse_args(argv)
    run = existing_run(args.run)
    if args.constitution:
        constitution, con_sha = load_constitution(args.constitution)
        check_own_rules(constitution.principles, args.constitution)
    else:
        constitution = Constitution.model_validate(run.manifest["snapshot"]["constitution"])
        con_sha = run.manifest["config"]["constitution_sha256"]
    n, seed = args.stage, run.manifest["config"]["seed"]
    curriculum = Curriculum.model_validate(run.manifest["snapshot"]["curriculum"])
    profile = curriculum.profiles[run.manifest["config"]["profile"]]
    st = resolve_stage(curriculum, profile, n)
    tasks = run.read(n, "tasks")
    if not tasks:
        raise ConfigError(
            f"--stage {n}: {run.stage_dir(n)} holds no tasks; its propose step has not run"
        )
    promoted = [m for m in range(1, n) if run.stage(m).get("promoted")]
    policy = policy_name(promoted[-1]) if promoted else BASE_NAME
    drawn = [q for q in constitution.for_stage(n) if q.contrast]
    jobs, why_not = contrasts.contrast_jobs(
        seed,
        n,
        tasks,
        drawn,
        args.requests,
        False,
        partial(turn, system_prompt=profile.system_prompt),
    )
    settings = ServeSettings(
        model=resolve_model(profile.model, ROOT / "models"),
        seed=seed,
        trust_remote_code=profile.trust_remote_code,
        max_lora_rank=st.train.lora_r,
        **profile.serve.model_dump(),
    )
    embedder = quality.embedder(profile.embedding_model)
    with tempfile.TemporaryDirectory(prefix="cai-dry-run-") as tmp:
        tmp = Path(tmp)
        with VLLMServer(settings, tmp / "server.log", tmp / "server.pid") as server:
            swap = make_swap(server, tmp, profile.trust_remote_code)
            if policy != BASE_NAME:
                swap.make_servable(policy, run.root / policy / "adapter")
            endpoint = Endpoint(
                server.api_base,
                server.api_key,
                swap.activate(policy),
                profile.adapter,
                profile.request_timeout_s,
                label=policy,
            )
            makes = {
                q.id: contrasts.program(q, profile.system_prompt)
                for q in contrasts.contrasting(drawn, False)
            }
            call = contrasts.dispatch(makes, drawn, endpoint, st.generation.contrast, "dry-run")
            out = Records(tmp / "contrasts.jsonl")
            contrast_yield.answer(
                jobs, call, out, drawn, st, embedder, profile.concurrency, seed, f"stage{n} dry run"
            )
        records = list(out)
    measured = quality.by_id(quality.measure([], [], [], records, embedder))
    found = contrast_yield.yields(records, drawn, measured, st.pair_filters)
    print(report(n, policy, st.counts.contrast_samples, found, why_not))
    path = run.root / "principles" / f"stage{n}-{con_sha[:8]}.json"
    write_json_atomic(path, {"stage": n, "policy": policy, "yields": found, "why_not": why_not})
    print(f"wrote {path}")
    return 0


def report(n: int, policy: str, samples: int, found: dict, why_not: dict) -> str:
    """The dry run's table and why each principle without a pair made none."""
    lines = [
        f"Principles of stage {n}, against {policy} (each request answered up to {samples} times):",
        "",
        "| principle | check | requests | samples | separated | pass the filters | sides |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for pid, f in found.items():
        lines.append(
            f"| {pid} | {f['check']} | {f['requests']} | {f['samples']} | {f['separated']} | "
            f"{f['passing']} | {contrast_yield.sides_text(f)} |"
        )
    lines.append("")
    lines += [
        f"- {pid}: {contrast_yield.why_no_pair(f)}" for pid, f in found.items() if not f["passing"]
    ]
    lines += [f"- {pid}: makes none: {why}" for pid, why in why_not.items()]
    return "\n".join(lines)
