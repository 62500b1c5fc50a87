"""Our training step against plain TRL DPOTrainer defaults, on the same pairs and model, in one run.

    python bench/training.py --run runs/cpu [--profile cpu] [--stage 1] [--repeat 2]
        [--pairs 16] [--curriculum FILE]
    python bench/training.py --run runs/cpu --profile gpu --random-layers 16 --pairs 512
        # on a GPU: bench/gpu_check.sh

Ours: `cai.training.train.train_adapter` with the profile's training settings. Plain: TRL's
`DPOTrainer` with `DPOConfig`'s defaults, given what it needs to run here (the output
folder, the same LoRA, epochs and learning rate, no saving or logging) and the settings
anyone would pick on the same hardware: our precision, and no gradient checkpointing
where we use none (TRL's defaults, bf16 and checkpointing, run a CPU without avx512_bf16
slowly). So the ratio measures our other choices (batch size, length, the reference's
log-probs) on the same work. The pairs are a run's `pairs.jsonl` (every stage's by default).

`--random-layers N` trains a randomly initialised model of Qwen2.5's architecture with
the shape a profile states (`--shape-of`, default `gpu`: Qwen2.5-32B's) cut to N decoder
layers, since no weights can be downloaded where the GPU is; the tokenizer is the
embedded model's (its ids fall inside Qwen's vocabulary, whose size the model keeps).
Per token, each layer does the full model's work, so the rate is also projected to the
full depth by the linear layers' (and head's) parameters: the `gpu.train_tokens_per_s`
that `python bootstrap.py plan` prices from. On a GPU each side's peak memory is printed
beside the memory plan's estimate for the same shape.

Prints each side's tokens/s (prompt plus both answers, as trained) in the training loop
and with loading and saving, and `training_ratio=X` last: ours over plain in the training
loop's tokens/s (> 1 is faster).
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cai.config.curriculum import load_curriculum, resolve_stage  # noqa: E402
from cai.serving.model import EMBEDDED, resolve_model  # noqa: E402
from cai.store import read_jsonl  # noqa: E402
from cai.training.memory import GIB, ModelShape, shape_from_config, training  # noqa: E402
from cai.training.process import train_in_process  # noqa: E402
from cai.training.train import chat_length, fitting_pairs, train_adapter  # noqa: E402


def random_qwen2(shape: ModelShape, layers: int, tokenizer_dir: str, dest: Path) -> Path:
    """A randomly initialised Qwen2 model of `shape` at `layers` decoder layers, in bf16, saved with
    the tokenizer of `tokenizer_dir` (built on the GPU where there is one: seconds, not minutes)."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = Qwen2Config(
        vocab_size=shape.vocab,
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=layers,
        num_attention_heads=shape.hidden // shape.head_dim,
        num_key_value_heads=shape.kv_heads,
        tie_word_embeddings=shape.tied_embeddings,
        max_position_embeddings=32768,
        rope_theta=1e6,
        rms_norm_eps=1e-6,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id
        if tokenizer.pad_token_id is not None
        else tokenizer.eos_token_id,
        dtype="bfloat16",
    )
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
            model = Qwen2ForCausalLM(config)
    finally:
        torch.set_default_dtype(default)
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    del model
    return dest


def compute_params(shape: ModelShape) -> float:
    """Parameters that cost work per token: the linear layers and the head (not the embedding
    lookup)."""
    return shape.linear_params + shape.vocab * shape.hidden


def pair_tokens(pairs: list[dict], tokenizer) -> int:
    """Tokens trained per pass over `pairs`: the prompt with each answer, as the chat template
    writes them."""
    return sum(
        chat_length(tokenizer, p["prompt"] + p["chosen"])
        + chat_length(tokenizer, p["prompt"] + p["rejected"])
        for p in pairs
    )


def peak_gib() -> float | None:
    """The GPU's peak allocation since the last reset (None on the CPU); frees what the last side
    left and resets it."""
    import gc

    import torch

    gc.collect()

    if not torch.cuda.is_available():
        return None
    peak = torch.cuda.max_memory_allocated() / GIB
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    return peak


def plain_trl(model_name: str, pairs: list[dict], settings, seed: int) -> tuple[float, float]:
    """TRL's DPOTrainer with its defaults on `pairs` (a fresh LoRA on the base), at our precision
    and
    checkpointing: seconds in all (loading included, as ours includes it) and of the training
    loop."""
    start = time.perf_counter()
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(model_name)
    model = AutoModelForCausalLM.from_pretrained(model_name)
    work = tempfile.mkdtemp(prefix="cai-bench-trl-")
    args = DPOConfig(
        output_dir=work,
        num_train_epochs=settings.epochs,
        learning_rate=settings.learning_rate,
        bf16=settings.bf16,
        gradient_checkpointing=settings.gradient_checkpointing,
        save_strategy="no",
        report_to=[],
        seed=seed,
        use_cpu=not torch.cuda.is_available(),
    )
    peft = LoraConfig(
        r=settings.lora_r,
        lora_alpha=settings.lora_alpha,
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )
    trainer = DPOTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(pairs),
        processing_class=tokenizer,
        peft_config=peft,
    )
    loop = trainer.train().metrics["train_runtime"]
    shutil.rmtree(work, ignore_errors=True)
    return time.perf_counter() - start, loop


def ours(
    model_name: str, pairs: list[dict], settings, seed: int, out: Path, launch: bool = False
) -> tuple[float, float]:
    """`train_adapter` in this process, or with `launch` as a stage calls it (`accelerate launch` on
    `train.processes` processes, cai/training/process.py): seconds in all (loading and saving
    included) and of the training loop."""
    start = time.perf_counter()
    if launch:
        with tempfile.TemporaryDirectory(prefix="cai-bench-job-") as job:
            stats = train_in_process(Path(job), model_name, None, pairs, out, settings, seed)
    else:
        stats = train_adapter(model_name, None, pairs, out, settings, seed)
    seconds = time.perf_counter() - start
    if "diverged" in stats:
        sys.exit(f"ours: training diverged ({stats['diverged']}): no rate to compare")
    shutil.rmtree(out, ignore_errors=True)
    return seconds, stats["train_seconds"]


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--run", type=Path, required=True, help="a run folder whose pairs.jsonl files to train on"
    )
    p.add_argument(
        "--curriculum",
        type=Path,
        default=ROOT / "curriculum.yaml",
        help="whose profiles (default: the project's)",
    )
    p.add_argument("--profile", default="cpu", help="whose training settings are ours")
    p.add_argument(
        "--stage", type=int, default=1, help="whose training settings (stages may override them)"
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="alternate the two this many times; the best time of each counts",
    )
    p.add_argument(
        "--pairs",
        type=int,
        help="train on N pairs: the first N, or the run's pairs repeated up to N "
        "(plain TRL's defaults take minutes a step on a CPU; a GPU trains a run's pairs in "
        "seconds)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--random-layers",
        type=int,
        metavar="N",
        help="train a random Qwen2 model of the profile's gpu.model_shape at N layers (see above)",
    )
    p.add_argument(
        "--shape-of",
        default="gpu",
        help="with --random-layers: the profile whose gpu.model_shape to build",
    )
    p.add_argument(
        "--tokenizer", help="with --random-layers: whose tokenizer (default: the embedded model's)"
    )
    p.add_argument(
        "--processes",
        type=int,
        help="ours through `accelerate launch` on N processes (one a GPU), the "
        "per-process batch divided by N so that the global batch stays",
    )
    args = p.parse_args()
    curriculum, _ = load_curriculum(args.curriculum)
    profile = curriculum.profiles[args.profile]
    settings = resolve_stage(curriculum, profile, args.stage).train
    if args.processes:
        settings = settings.model_copy(
            update={
                "processes": args.processes,
                "batch_size": max(1, settings.batch_size // args.processes),
            }
        )
    import torch
    from transformers import AutoTokenizer

    scratch = Path(tempfile.mkdtemp(prefix="cai-bench-"))
    full_shape = None
    if args.random_layers:
        stated = curriculum.profiles[args.shape_of].gpu
        if stated is None or stated.model_shape is None:
            sys.exit(f"--random-layers: profile {args.shape_of} states no gpu.model_shape")
        full_shape = ModelShape(**stated.model_shape.model_dump())
        tokenizer_dir = args.tokenizer or resolve_model(EMBEDDED, ROOT / "models")
        model = str(random_qwen2(full_shape, args.random_layers, tokenizer_dir, scratch / "model"))
    else:
        model = resolve_model(profile.model, ROOT / "models")
    tokenizer = AutoTokenizer.from_pretrained(model)
    pairs = [p for path in sorted(args.run.glob("stage*/pairs.jsonl")) for p in read_jsonl(path)]
    pairs = fitting_pairs(pairs, tokenizer, settings.max_length)  # the same rows for both
    if not pairs:
        sys.exit(f"{args.run}: no pairs.jsonl with pairs that fit max_length={settings.max_length}")
    if args.pairs:
        pairs = (pairs * math.ceil(args.pairs / len(pairs)))[: args.pairs]
    trained = len(pairs) * settings.epochs
    tokens = round(pair_tokens(pairs, tokenizer) * settings.epochs)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(
        f"{len(pairs)} pairs ({tokens:,} tokens), {settings.epochs} epoch(s), model {model}, "
        f"device {device}",
        flush=True,
    )
    # (seconds in all, seconds of the training loop) per repeat
    times = {"ours": [], "plain TRL": []}
    peaks = {}
    peak_gib()
    for _ in range(args.repeat):
        times["ours"].append(
            ours(
                model, pairs, settings, args.seed, scratch / "adapter", launch=bool(args.processes)
            )
        )
        peaks["ours"] = peak_gib()
        times["plain TRL"].append(plain_trl(model, pairs, settings, args.seed))
        peaks["plain TRL"] = peak_gib()
        print(
            ", ".join(
                f"{side} {t[-1][0]:.1f} s ({t[-1][1]:.1f} s training)" for side, t in times.items()
            ),
            flush=True,
        )
    loop = {side: min(t[1] for t in runs) for side, runs in times.items()}
    for side, runs in times.items():
        wall = min(t[0] for t in runs)
        print(
            f"{side}: {tokens / loop[side]:,.0f} tokens/s, {trained / loop[side]:.3f} pairs/s in "
            f"the training loop; {tokens / wall:,.0f} tokens/s with loading and saving"
        )
    if peaks["ours"] is not None:
        estimate = training(
            shape_from_config(Path(model)),
            settings.quantization,
            0,
            settings.batch_size,
            settings.max_length,
            settings.lora_r,
            settings.gradient_checkpointing,
        )
        print(
            f"peak GPU memory: ours {peaks['ours']:.1f} GiB (the memory plan's estimate, every "
            f"sequence at max_length: {estimate.total:.1f} GiB), plain TRL "
            f"{peaks['plain TRL']:.1f} GiB"
        )
    if full_shape is not None:
        share = compute_params(shape_from_config(Path(model))) / compute_params(full_shape)
        print(
            f"ours projected to the full {full_shape.layers} layers ({full_shape.params_b}B): "
            f"{tokens / loop['ours'] * share:,.0f} tokens/s (gpu.train_tokens_per_s)"
        )
    shutil.rmtree(scratch, ignore_errors=True)
    print(f"training_ratio={loop['plain TRL'] / loop['ours']:.3f}")


if __name__ == "__main__":
    main()
