"""Training as its own process, through `accelerate launch`: one code path from a laptop to a node.

The controller writes the job (the pairs, the settings, where the adapter goes) into a folder and
runs `accelerate launch` on this module: one process on the CPU or one GPU, `train.processes`
processes on as many GPUs (torchrun underneath; on a machine without CUDA the processes talk over
gloo), the user's Accelerate or DeepSpeed config file where `train.accelerate_config` names one,
FSDP or DeepSpeed ZeRO-3 where `train.sharding` asks. Each process runs
`cai.training.train.train_adapter`; the main process alone saves the adapter (atomically, where it
always went) and writes the result. The controller keeps no model in its memory between stages, and
a training process that dies is an error naming the step: the stage's earlier records are kept and
the same command trains again.

    python -m accelerate.commands.launch --num_processes 2 --multi_gpu -m cai.training.process
    JOB_DIR
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from cai import ROOT
from cai.config.settings import TrainSettings
from cai.training import TrainingError

# accelerate's own flags for the two sharded strategies (accelerate launch --help); a user's
# config file (train.accelerate_config) replaces them.
SHARDING_FLAGS = {
    "none": [],
    "fsdp": [
        "--use_fsdp",
        "--fsdp_version",
        "2",
        "--fsdp_reshard_after_forward",
        "true",
        "--fsdp_auto_wrap_policy",
        "TRANSFORMER_BASED_WRAP",
        "--fsdp_state_dict_type",
        "FULL_STATE_DICT",
        "--fsdp_cpu_ram_efficient_loading",
        "true",
    ],
    "zero3": [
        "--use_deepspeed",
        "--zero_stage",
        "3",
        "--zero3_init_flag",
        "true",
        "--zero3_save_16bit_model",
        "true",
    ],
}


def launch_command(job_dir: Path, settings: TrainSettings) -> list[str]:
    """The `accelerate launch` command line that trains the job in `job_dir`: the user's config file
    as it is where one is named (its processes, machines, precision and strategy), else ours."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    if settings.accelerate_config:
        cmd += ["--config_file", str(settings.accelerate_config)]
    else:
        cmd += [
            "--num_processes",
            str(settings.processes),
            "--num_machines",
            "1",
            "--mixed_precision",
            "bf16" if settings.bf16 else "no",
            "--dynamo_backend",
            "no",
        ]
        if settings.sharding != "none":
            cmd += SHARDING_FLAGS[settings.sharding]
        elif settings.processes > 1:
            # torchrun's N processes; without CUDA, accelerate joins them over gloo
            cmd += ["--multi_gpu"]
    return cmd + ["-m", "cai.training.process", str(job_dir)]


def threads_per_process(processes: int) -> int:
    """The CPU cores this process may use, shared out over the training processes (at least one
    each)."""
    return max(1, len(os.sched_getaffinity(0)) // processes)


def train_in_process(
    job_dir: Path,
    base_model: str,
    previous_adapter: Path | None,
    pairs: list[dict],
    out_dir: Path,
    settings: TrainSettings,
    seed: int,
    trust_remote_code: bool = False,
    tensorboard_dir: Path | None = None,
    progress: str | None = None,
    devices: str | None = None,
) -> dict:
    """`cai.training.train.train_adapter`'s arguments written to `job_dir`, trained by `accelerate
    launch` (on the GPUs `devices` names, as CUDA_VISIBLE_DEVICES, where given); returns what the
    main process wrote (the stats for the manifest)."""
    job_dir.mkdir(parents=True, exist_ok=True)
    result = job_dir / "result.json"
    result.unlink(missing_ok=True)
    (job_dir / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    (job_dir / "job.json").write_text(
        json.dumps(
            {
                "base_model": base_model,
                "previous_adapter": str(previous_adapter) if previous_adapter else None,
                "out_dir": str(out_dir),
                "settings": settings.model_dump(mode="json"),
                "seed": seed,
                "trust_remote_code": trust_remote_code,
                "tensorboard_dir": str(tensorboard_dir) if tensorboard_dir else None,
                "progress": progress,
            },
            indent=1,
        )
    )
    cmd = launch_command(job_dir, settings)
    # so that `-m cai.training.process` imports this checkout
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    # `accelerate launch` sets OMP_NUM_THREADS=1 in the processes it starts where the variable is
    # unset: on the 2-core default, DPO then trained on one core (seen in the default run of
    # 2026-12-03). Each process gets its share of the cores instead; a value the user set is kept.
    env.setdefault("OMP_NUM_THREADS", str(threads_per_process(settings.processes)))
    if devices is not None:
        env["CUDA_VISIBLE_DEVICES"] = devices
    done = subprocess.run(cmd, env=env, stdout=sys.stderr)
    if done.returncode != 0 or not result.exists():
        how = (
            f"was killed by signal {-done.returncode}"
            if done.returncode < 0
            else f"exited with status {done.returncode}"
        )
        raise TrainingError(
            f"train: the training process {how} ({' '.join(cmd[1:4])} ... {job_dir}); the stage's "
            "earlier steps are kept and no adapter was written: re-run the same command to train "
            "again"
        )
    stats = json.loads(result.read_text())
    if "error" in stats:
        raise TrainingError(stats["error"])
    return stats


def main(job_dir: str) -> None:
    """One process of `accelerate launch`: train, and (the main process) write the result."""
    import torch
    from accelerate import PartialState

    from cai.training.train import train_adapter

    job = json.loads((Path(job_dir) / "job.json").read_text())
    pairs = [
        json.loads(line)
        for line in (Path(job_dir) / "pairs.jsonl").read_text().splitlines()
        if line.strip()
    ]
    # the first to set it: without CUDA, gloo
    state = PartialState(cpu=not torch.cuda.is_available())
    try:
        stats = train_adapter(
            job["base_model"],
            Path(job["previous_adapter"]) if job["previous_adapter"] else None,
            pairs,
            Path(job["out_dir"]),
            TrainSettings(**job["settings"]),
            job["seed"],
            job["trust_remote_code"],
            tensorboard_dir=Path(job["tensorboard_dir"]) if job["tensorboard_dir"] else None,
            progress=job["progress"] if state.is_main_process else None,
        )
    except TrainingError as e:
        stats = {"error": str(e)}
    if state.is_main_process:
        stats["processes"] = state.num_processes
        tmp = Path(job_dir) / "result.json.partial"
        tmp.write_text(json.dumps(stats))
        os.replace(tmp, Path(job_dir) / "result.json")


if __name__ == "__main__":
    main(sys.argv[1])
