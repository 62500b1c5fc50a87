"""The cost plan on more GPUs and nodes: the six stages' hours scaled by the parallel efficiencies
stated here (not measured), for `python bootstrap.py plan`'s layouts table."""

from __future__ import annotations

import math
from dataclasses import dataclass

from cai.config.curriculum import StageConfig
from cai.run.budget import Throughput, run_work, spent_hours, stage_hours


@dataclass(frozen=True)
class GPUKind:
    """A GPU the plan can price. Speeds are relative to the A100 80 GB that the `gpu` profile's
    throughputs are stated for; prices are typical on-demand rates, for `--gpu-price-per-hour` to
    override."""

    name: str
    memory_gib: float
    price_per_hour: float
    generate: float  # decoding is memory-bound: HBM bandwidth, relative
    train: float  # training is compute-bound: dense bf16, relative, taken at 80%


GPU_KINDS = {
    "a100-80gb": GPUKind("A100 80 GB", 80, 1.80, 1.0, 1.0),
    # 3.35 vs 2.04 TB/s; 989 vs 312 TFLOP/s
    "h100-80gb": GPUKind("H100 80 GB", 80, 2.99, 3.35 / 2.04, 0.8 * 989 / 312),
}


# Stated, not measured here: what each doubling of tensor-parallel ranks keeps of linear scaling (an
# all-reduce every layer), and what training on N processes of one machine keeps (the LoRA's
# gradients are small; a sharded model's all-gathers are not).
TENSOR_PARALLEL_EFFICIENCY = 0.85


TRAIN_EFFICIENCY = {"none": 0.95, "fsdp": 0.85, "zero3": 0.85}


@dataclass(frozen=True)
class Layout:
    kind: GPUKind
    gpus_per_node: int
    nodes: int = 1

    @property
    def gpus(self) -> int:
        return self.gpus_per_node * self.nodes

    @property
    def label(self) -> str:
        one = f"{self.gpus_per_node} x {self.kind.name}"
        return one if self.nodes == 1 else f"{self.nodes} nodes of {one}"


STANDARD_LAYOUTS = (
    Layout(GPU_KINDS["a100-80gb"], 1),
    Layout(GPU_KINDS["h100-80gb"], 8),
    Layout(GPU_KINDS["h100-80gb"], 8, 2),
)


def measured_gpus(manifest: dict) -> int:
    """How many GPUs the run whose throughputs were measured held: its GPU-hours over its hours."""
    steps = [s for st in manifest.get("stages", {}).values() for s in st.get("steps", {}).values()]
    seconds = sum(s.get("seconds", 0.0) for s in steps)
    return max(1, round(spent_hours(manifest) * 3600 / seconds)) if seconds else 1


def scaled(
    speed: Throughput,
    layout: Layout,
    tensor_parallel: int,
    processes: int,
    sharding: str,
    measured_on: int = 1,
) -> Throughput:
    """`speed` (of `measured_on` A100s) on `layout`: data-parallel replicas of `tensor_parallel`
    GPUs serve side by side over every node; training runs as `processes` processes on one
    machine."""
    replica = (
        layout.kind.generate
        * tensor_parallel
        * TENSOR_PARALLEL_EFFICIENCY ** math.log2(tensor_parallel)
    )
    serving = replica * (layout.gpus // tensor_parallel) / measured_on
    training = (
        layout.kind.train
        * processes
        * (1.0 if processes == 1 else TRAIN_EFFICIENCY[sharding])
        / measured_on
    )
    return Throughput(
        speed.seconds_per_generated_token / serving,
        speed.seconds_per_prompt_token / serving,
        speed.seconds_per_train_token / training,
        f"{speed.source}, scaled to {layout.label}",
    )


def layout_rows(
    stages: dict[int, StageConfig],
    fixed_seconds: float,
    speed: Throughput,
    layouts,
    fit,
    price: float | None,
    caps: dict[int, list[int]],
    measured_on: int = 1,
) -> list[dict]:
    """The six stages (and stage 0's evaluation) on each layout: wall hours, GPU-hours (every GPU
    the run holds, for all of it) and dollars. `fit(layout)` is the memory plan's layout
    (cai/memory.fit_layout)."""
    rows = []
    for layout in layouts:
        f = fit(layout)
        on = scaled(speed, layout, f["tensor_parallel"], f["processes"], f["sharding"], measured_on)
        hours = sum(
            stage_hours(run_work(stages, n, max(stages), caps), on, 0 if n == 0 else fixed_seconds)
            for n in [0, *stages]
        )
        per_hour = layout.kind.price_per_hour if price is None else price
        rows.append(
            {
                "layout": layout.label,
                "gpus": layout.gpus,
                **{
                    k: f[k]
                    for k in ("tensor_parallel", "replicas", "processes", "sharding", "fits")
                },
                "hours": hours,
                "gpu_hours": hours * layout.gpus,
                "usd": hours * layout.gpus * per_hour,
                "price": per_hour,
            }
        )
    return rows


def render_layouts(rows: list[dict]) -> str:
    lines = [
        "| GPUs | serving (tensor-parallel x replicas) | training | wall hours | GPU-hours | USD "
        "(per GPU-hour) | memory |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['layout']} | {r['tensor_parallel']} x {r['replicas']} | {r['processes']} "
            f"process{'es' if r['processes'] > 1 else ''}, {r['sharding']} | {r['hours']:.2f} | "
            f"{r['gpu_hours']:.2f} | {r['usd']:.2f} (${r['price']:.2f}) | "
            f"{'fits' if r['fits'] else 'DOES NOT FIT'} |"
        )
    return "\n".join(lines)
