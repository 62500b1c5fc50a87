"""train: a new adapter from the stage's pairs, in its own process."""

from __future__ import annotations

import tempfile
from pathlib import Path

from cai.config.curriculum import StageConfig
from cai.serving.swap import gpu_lent
from cai.store import BASE_NAME
from cai.training.process import train_in_process


def train(ctx, st: StageConfig, previous: str) -> dict:
    """DPO (or ORPO) with LoRA on this stage's pairs, continuing the previous policy's adapter."""
    n = st.number
    previous_dir = ctx.run.root / previous / "adapter" if previous != BASE_NAME else None
    with (
        gpu_lent(ctx.server, ctx.swap, ctx.seed),
        tempfile.TemporaryDirectory(prefix="cai-train-") as job,
    ):
        return train_in_process(
            Path(job),
            ctx.model,
            previous_dir,
            ctx.run.read(n, "pairs"),
            ctx.run.stage_dir(n) / "adapter",
            st.train,
            ctx.seed + n,
            ctx.trust_remote_code,
            tensorboard_dir=ctx.run.stage_dir(n) / "tensorboard",
            progress=f"stage{n} train",
            devices=ctx.train_devices,
        )
