"""Our training step against plain TRL DPOTrainer defaults, on the same pairs and model, in one run.

    python bench/training.py --run runs/full [--profile quick] [--stage 1] [--repeat 2] [--pairs 16]

Ours: `cai.train.train_adapter` with the profile's training settings. Plain: TRL's
`DPOTrainer` with `DPOConfig`'s defaults, given only what it needs to run here (the
output folder, the same LoRA, epochs and learning rate, no saving or logging), so the
ratio measures our choices of batch size, precision, checkpointing and length, not a
different amount of work. The pairs are a run's `pairs.jsonl` (every stage's by default).
Prints each side's pairs/s and `training_ratio=X` last (ours over plain; > 1 is faster).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cai.config import load_curriculum, resolve_stage  # noqa: E402
from cai.model import resolve_model  # noqa: E402
from cai.store import read_jsonl  # noqa: E402
from cai.train import fitting_pairs, train_adapter  # noqa: E402


def plain_trl(model_name: str, pairs: list[dict], settings, seed: int) -> float:
    """Seconds TRL's DPOTrainer takes with its defaults on `pairs` (a fresh LoRA on the base), loading
    included, as ours includes it."""
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
    args = DPOConfig(output_dir=work, num_train_epochs=settings.epochs, learning_rate=settings.learning_rate,
                     save_strategy="no", report_to=[], seed=seed, use_cpu=not torch.cuda.is_available())
    peft = LoraConfig(r=settings.lora_r, lora_alpha=settings.lora_alpha, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(pairs), processing_class=tokenizer, peft_config=peft)
    trainer.train()
    seconds = time.perf_counter() - start
    shutil.rmtree(work, ignore_errors=True)
    return seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True, help="a run folder whose pairs.jsonl files to train on")
    p.add_argument("--profile", default="quick", help="whose training settings are ours")
    p.add_argument("--stage", type=int, default=1, help="whose training settings (stages may override them)")
    p.add_argument("--repeat", type=int, default=1, help="alternate the two this many times; the best time of each counts")
    p.add_argument("--pairs", type=int, help="train on the first N pairs only (plain TRL's defaults take minutes a step on a CPU)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    curriculum, _ = load_curriculum(ROOT / "curriculum.yaml")
    profile = curriculum.profiles[args.profile]
    settings = resolve_stage(curriculum, profile, args.stage).train
    model = resolve_model(profile.model, ROOT / "models")
    from transformers import AutoTokenizer

    pairs = [p for path in sorted(args.run.glob("stage*/pairs.jsonl")) for p in read_jsonl(path)]
    pairs = fitting_pairs(pairs, AutoTokenizer.from_pretrained(model), settings.max_length)[:args.pairs]  # the same rows for both
    if not pairs:
        sys.exit(f"{args.run}: no pairs.jsonl with pairs that fit max_length={settings.max_length}")
    trained = len(pairs) * settings.epochs
    print(f"{len(pairs)} pairs, {settings.epochs} epoch(s), model {model}", flush=True)
    ours, plain = [], []
    for _ in range(args.repeat):
        out = Path(tempfile.mkdtemp(prefix="cai-bench-ours-")) / "adapter"
        start = time.perf_counter()
        train_adapter(model, None, pairs, out, settings, args.seed)
        ours.append(time.perf_counter() - start)
        shutil.rmtree(out.parent, ignore_errors=True)
        plain.append(plain_trl(model, pairs, settings, args.seed))
        print(f"ours {ours[-1]:.1f} s, plain TRL {plain[-1]:.1f} s", flush=True)
    print(f"ours: {trained / min(ours):.3f} pairs/s  plain TRL defaults: {trained / min(plain):.3f} pairs/s")
    print(f"training_ratio={min(plain) / min(ours):.3f}")


if __name__ == "__main__":
    main()
