"""The memory plan, per GPU, checked before anything runs.

On one GPU, the GPU does three jobs in turn: the policy server (weights at the chosen precision
plus its KV cache), training (weights at the training precision, the LoRA and its
optimizer state, activations), and the guard's server. While training runs, the policy
server sleeps (level 1: weights to host memory, KV cache freed) or stops; the guard's
server runs while the policy sleeps. So each job must fit on its own, and a sleeping
server's weights must fit in host memory.

On several, a policy replica spans `tensor_parallel_size x pipeline_parallel_size` GPUs (each
holds its share of the weights and of the KV cache; KV heads are replicated where there are fewer
than tensor-parallel ranks), and training runs as `train.processes` processes, one a GPU: each holds
the whole model (`sharding: none`, DDP) or its share of the weights and the optimizer state
(`fsdp`, `zero3`), plus one layer gathered at a time. `placement` says whether serving and
training take turns on the same GPUs (the server sleeps) or run side by side on their own.

The figures are estimates from the model's shape, calibrated on one measured run
(DESIGN.md, "The GPU profile, one run on an H200": Qwen2.5-32B's shape, bf16 weights
61 GiB, NF4 linear layers 17.9 GiB with embeddings and head in float32 6.3 GiB; training
peaks of 84 GiB at 8 x 1024 tokens in bf16 and 35.9 GiB at 4 x 1024 in NF4, both with
gradient checkpointing). The training estimate comes within 5% of both peaks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

GIB = 1024**3
# bytes per parameter of the linear layers
# bf16; fp8 weights; NF4 with its scales (measured)
SERVE_BYTES = {"none": 2.0, "fp8": 1.0, "bitsandbytes": 0.616}
TRAIN_BYTES = {"none": 2.0, "nf4": 0.616}
# Activations per token in the training batch, as a multiple of layers x hidden x 2 bytes,
# with gradient checkpointing (about 2.4 MiB a token on 64 layers x 5120).
ACTIVATION_FACTOR = 3.9
# every layer's activations kept: a guess, not measured
ACTIVATION_FACTOR_NO_CHECKPOINTING = 3.9 * 8
SERVER_OVERHEAD_GIB = 3.0  # CUDA context, CUDA graphs, sampler workspace
TRAIN_OVERHEAD_GIB = 2.0  # CUDA context, allocator fragmentation


@dataclass(frozen=True)
class ModelShape:
    """What the plan needs to know of a model; read from its config.json, or stated in the
    profile."""

    params_b: float  # all parameters, billions
    layers: int
    hidden: int
    kv_heads: int
    head_dim: int
    vocab: int
    intermediate: int
    tied_embeddings: bool = False

    @property
    def embedding_params(self) -> float:
        return self.vocab * self.hidden * (1 if self.tied_embeddings else 2)

    @property
    def linear_params(self) -> float:
        return self.params_b * 1e9 - self.embedding_params

    def lora_params(self, rank: int) -> float:
        """LoRA on every linear layer of a decoder block (q, k, v, o, gate, up, down)."""
        inter, kv = self.intermediate, self.kv_heads * self.head_dim
        shapes = [
            (self.hidden, self.hidden),
            (self.hidden, kv),
            (self.hidden, kv),
            (self.hidden, self.hidden),
            (self.hidden, inter),
            (self.hidden, inter),
            (inter, self.hidden),
        ]
        return self.layers * rank * sum(a + b for a, b in shapes)


def shape_from_config(path: Path) -> ModelShape:
    """The shape of a transformers model folder, from its config.json and weights' size."""
    cfg = json.loads((Path(path) / "config.json").read_text())
    cfg = cfg.get("text_config", cfg)
    hidden, layers, vocab = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
    heads = cfg["num_attention_heads"]
    kv_heads = cfg.get("num_key_value_heads", heads)
    head_dim = cfg.get("head_dim") or hidden // heads
    inter = cfg.get("intermediate_size", 4 * hidden)
    q_o = 2 * hidden * heads * head_dim
    kv = 2 * hidden * kv_heads * head_dim
    tied = bool(cfg.get("tie_word_embeddings", False))
    params = layers * (q_o + kv + 3 * hidden * inter) + vocab * hidden * (1 if tied else 2)
    return ModelShape(
        round(params / 1e9, 3), layers, hidden, kv_heads, head_dim, vocab, inter, tied
    )


@dataclass(frozen=True)
class Job:
    name: str
    parts: dict[str, float]  # GiB each
    limit_gib: float
    note: str = ""

    @property
    def total(self) -> float:
        return sum(self.parts.values())

    @property
    def fits(self) -> bool:
        return self.total <= self.limit_gib

    def line(self) -> str:
        parts = " + ".join(f"{k} {v:.1f}" for k, v in self.parts.items())
        verdict = "ok" if self.fits else "DOES NOT FIT"
        return f"{self.name}: {parts} = {self.total:.1f} GiB of {self.limit_gib:.1f} GiB: {verdict}{'; ' + self.note if self.note else ''}"


def serving(
    shape: ModelShape,
    quantization: str,
    gpu_gib: float,
    utilization: float,
    max_model_len: int,
    sequences: int,
    tokens_per_sequence: int,
    name: str = "policy server",
    tensor_parallel: int = 1,
    pipeline_parallel: int = 1,
) -> Job:
    """On each GPU of a replica: its share of the weights at the serving precision + of a KV cache
    that holds one full-length sequence (vLLM refuses to start otherwise), within vLLM's share of
    the GPU; the note says how many of the replica's `sequences` requests in flight (of
    `tokens_per_sequence` each) the rest holds."""
    split = tensor_parallel * pipeline_parallel
    embed_bytes = 2.0  # vLLM keeps embeddings and head in the model's dtype
    weights = (
        (shape.linear_params * SERVE_BYTES[quantization] + shape.embedding_params * embed_bytes)
        / GIB
        / split
    )
    # fewer KV heads than ranks: each rank keeps a copy
    kv_heads = max(1.0, shape.kv_heads / tensor_parallel)
    # K and V, bf16
    kv_per_token = 2 * (shape.layers / pipeline_parallel) * kv_heads * shape.head_dim * 2 / GIB
    limit = gpu_gib * utilization
    held = int(max(0.0, limit - weights - SERVER_OVERHEAD_GIB) / kv_per_token)
    in_flight = min(sequences, held // max(1, tokens_per_sequence))
    note = f"KV cache for {held:,} tokens: {in_flight} of {sequences} requests in flight"
    if split > 1:
        name += f" (each of {split} GPUs: tensor {tensor_parallel} x pipeline {pipeline_parallel})"
    return Job(
        name,
        {
            "weights": weights,
            "kv cache (one full sequence)": max_model_len * kv_per_token,
            "overhead": SERVER_OVERHEAD_GIB,
        },
        limit,
        note,
    )


def training(
    shape: ModelShape,
    quantization: str,
    gpu_gib: float,
    batch_pairs: int,
    max_length: int,
    lora_r: int,
    gradient_checkpointing: bool,
    processes: int = 1,
    sharding: str = "none",
) -> Job:
    """The training peak on each process's GPU: weights + LoRA with Adam's state (both divided over
    the processes where they are sharded, with one layer gathered at a time) + activations for its
    DPO batch of `batch_pairs` (chosen and rejected: 2 sequences a pair)."""
    shards = processes if sharding != "none" else 1
    # QLoRA keeps embeddings and head in float32 (measured)
    embed_bytes = 4.0 if quantization == "nf4" else 2.0
    linear = shape.linear_params * TRAIN_BYTES[quantization] / GIB
    weights = (linear + shape.embedding_params * embed_bytes / GIB) / shards
    # float32 weights, gradients, Adam's two moments
    lora = shape.lora_params(lora_r) * (4 + 4 + 8) / GIB / shards
    factor = ACTIVATION_FACTOR if gradient_checkpointing else ACTIVATION_FACTOR_NO_CHECKPOINTING
    tokens = 2 * batch_pairs * max_length
    activations = tokens * factor * shape.layers * shape.hidden * 2 / GIB
    parts = {"weights": weights, "lora + optimizer": lora, "activations": activations}
    if shards > 1:
        parts["gathered layer"] = linear / shape.layers
    name = "training" + (f" (each of {processes} processes, {sharding})" if processes > 1 else "")
    return Job(name, {**parts, "overhead": TRAIN_OVERHEAD_GIB}, gpu_gib)


def host_for_sleep(serve: Job, host_gib: float) -> Job:
    """Level-1 sleep moves the server's weights to host memory."""
    return Job("host memory while the server sleeps", {"weights": serve.parts["weights"]}, host_gib)


def advice(job: Job) -> str:
    """What to change when a job does not fit."""
    if job.name.startswith("training"):
        return (
            "train with `train.quantization: nf4` (QLoRA), `train.gradient_checkpointing: true`, "
            "a smaller `train.batch_size` (with `grad_accum` to keep the pairs per step) or "
            "`train.max_length`, or shard the model over more GPUs (`train.processes` with "
            "`train.sharding: fsdp` or `zero3`)"
        )
    if job.name.startswith("host"):
        return "stop the server while training instead of sleeping it (`serve.sleep: false`), or use a machine with more host memory"
    return (
        "split the model over more GPUs (`serve.tensor_parallel_size`, then "
        "`pipeline_parallel_size` across nodes), serve at a lower precision (`serve.quantization: "
        "fp8` or `bitsandbytes`), raise `serve.gpu_memory_utilization`, or lower `concurrency` or "
        "`serve.max_model_len`"
    )


def shape_of(model: str, stated) -> ModelShape:
    """The shape from the model folder's config.json, else as the profile states it."""
    if (Path(model) / "config.json").exists():
        return shape_from_config(Path(model))
    if stated is None:
        raise ValueError(
            f"{model} is not on disk: state its shape (params_b, layers, hidden, kv_heads, "
            "head_dim, vocab, intermediate) in the profile's gpu section"
        )
    return ModelShape(**stated.model_dump())


def longest_answer(stages: dict) -> int:
    """The most tokens an answer or a revision may take in any stage: what a request's KV cache
    holds beside its prompt."""
    return max(
        max(st.generation.respond.max_tokens, st.generation.revise.max_tokens)
        for st in stages.values()
    )


def heaviest_training(stages: dict):
    """The stage's training settings that need the most memory; `processes` the most any stage
    uses."""
    worst = max(
        (st.train for st in stages.values()),
        key=lambda t: (
            t.quantization == "none",
            t.batch_size * t.max_length,
            not t.gradient_checkpointing,
        ),
    )
    return worst.model_copy(update={"processes": train_processes(stages)})


def train_processes(stages: dict) -> int:
    return max(st.train.processes for st in stages.values())


def plan(profile, stages: dict, model: str, guard_model: str | None, gpu_gib: float) -> list[Job]:
    """Every job the GPU does in turn, each against what it may use: the policy server within
    its share; training and the guard's server within the whole card if the server sleeps
    meanwhile, else within what the server leaves (training: unless it has GPUs of its own)."""
    gpu = profile.gpu
    serve = profile.serve
    policy = serving(
        shape_of(model, gpu.model_shape),
        serve.quantization,
        gpu_gib,
        serve.gpu_memory_utilization,
        serve.max_model_len,
        profile.concurrency,
        512 + longest_answer(stages),
        tensor_parallel=serve.tensor_parallel_size,
        pipeline_parallel=serve.pipeline_parallel_size,
    )
    beside = gpu_gib if serve.sleep_while_training else gpu_gib * (1 - serve.gpu_memory_utilization)
    worst = heaviest_training(stages)
    # split_devices
    own_gpus = not serve.sleep_while_training and serve.gpus + worst.processes <= gpu.gpus_per_node
    train = training(
        shape_of(model, gpu.model_shape),
        worst.quantization,
        gpu_gib if own_gpus else beside,
        worst.batch_size,
        worst.max_length,
        worst.lora_r,
        worst.gradient_checkpointing,
        worst.processes,
        worst.sharding,
    )
    jobs = [policy, train]
    if profile.guard.mode == "llama-guard" and guard_model:
        g = profile.guard.serve
        jobs.append(
            serving(
                shape_of(guard_model, gpu.guard_shape),
                g.quantization,
                beside,
                g.gpu_memory_utilization,
                g.max_model_len,
                profile.concurrency,
                1024,
                name="guard server",
            )
        )
    if serve.sleep_while_training:
        jobs.append(host_for_sleep(policy, gpu.host_memory_gib))
    return jobs


def placement(
    serve_gpus: int, train_processes: int, gpus: int, take_turns: bool
) -> tuple[bool, str]:
    """Which GPUs serve and which train. Taking turns (the server sleeps while training), both use
    the same GPUs; side by side, each has GPUs of its own where the machine has enough
    (`split_devices`), else training shares the server's GPUs in the memory it leaves (`plan` checks
    that share)."""
    if take_turns:
        how = f"serving on {serve_gpus} and training on {train_processes} of {gpus} GPUs, in turns (the server sleeps while training)"
    elif serve_gpus + train_processes <= gpus:
        how = f"serving on {serve_gpus} GPUs and training on {train_processes} others, side by side ({serve_gpus + train_processes} of {gpus})"
    else:
        how = (
            f"serving on {serve_gpus} and training on {train_processes} of {gpus} GPUs, side by "
            "side on the same GPUs (training in the memory the server leaves)"
        )
    if max(serve_gpus, train_processes) > gpus:
        return (
            False,
            how
            + f": DOES NOT FIT; lower the parallel sizes or `train.processes`, or use {max(serve_gpus, train_processes)} GPUs",
        )
    return True, how + ": ok"


def split_devices(
    visible: list[str], serve_gpus: int, train_processes: int
) -> tuple[str, str] | None:
    """Side by side: CUDA_VISIBLE_DEVICES for the server (the first `serve_gpus` of the `visible`
    GPUs) and for training (the next `train_processes`); each job numbers its own from 0. None
    where there are too few for both: then they share them (`placement`)."""
    if serve_gpus + train_processes > len(visible):
        return None
    return ",".join(visible[:serve_gpus]), ",".join(
        visible[serve_gpus : serve_gpus + train_processes]
    )


def fit_layout(
    profile, stages: dict, model: str, gpu_gib: float, gpus_per_node: int, gpus: int
) -> dict:
    """For `gpus` GPUs of `gpu_gib` each (`gpus_per_node` a machine): the smallest tensor-parallel
    size within a node whose policy replica fits, the rest as data-parallel replicas over every
    node; training on every GPU of one machine (the controller launches it there:
    cai/training/process.py), unsharded where the whole model fits beside its activations, else
    sharded (FSDP). Taking turns as the profile does (the server sleeps while training)."""
    shape = shape_of(model, profile.gpu.model_shape)
    serve = profile.serve
    tp = 1
    while True:
        policy = serving(
            shape,
            serve.quantization,
            gpu_gib,
            serve.gpu_memory_utilization,
            serve.max_model_len,
            profile.concurrency,
            512 + longest_answer(stages),
            tensor_parallel=tp,
        )
        if policy.fits or tp * 2 > gpus_per_node:
            break
        tp *= 2
    worst, processes = heaviest_training(stages), gpus_per_node
    for sharding in ("none", "fsdp"):
        train = training(
            shape,
            worst.quantization,
            gpu_gib,
            worst.batch_size,
            worst.max_length,
            worst.lora_r,
            worst.gradient_checkpointing,
            processes,
            sharding,
        )
        if train.fits or processes == 1:
            break
    return {
        "tensor_parallel": tp,
        "replicas": gpus // tp,
        "processes": processes,
        "sharding": sharding,
        "jobs": [policy, train],
        "fits": policy.fits and train.fits,
    }
