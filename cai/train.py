"""Train a stage's LoRA adapter on its preference pairs with TRL.

Stage 1 starts a fresh adapter on the base model (reference = the base). Later
stages continue the previous stage's adapter, loaded trainable; with no `ref_model`,
TRL copies it into a frozen "ref" adapter, so the reference is the previous policy.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from pathlib import Path

from cai.config import TrainSettings


class TrainingError(RuntimeError):
    """Training could not start (no pair fits, nothing trainable); the message says why."""


def divergence_guard(max_loss: float):
    """A TrainerCallback that stops training at the first non-finite or runaway loss.

    The adapter is then not saved: the stage keeps the previous policy (bootstrap.py).
    """
    from transformers import TrainerCallback

    class StopOnDivergence(TrainerCallback):
        reason: str | None = None

        def on_log(self, args, state, control, logs=None, **kwargs):
            loss = (logs or {}).get("loss")
            if loss is not None and (not math.isfinite(loss) or loss > max_loss):
                self.reason = f"loss {loss} at step {state.global_step}"
                control.should_training_stop = True

    return StopOnDivergence()


def train_adapter(
    base_model: str,
    previous_adapter: Path | None,
    pairs: list[dict],
    out_dir: Path,
    settings: TrainSettings,
    seed: int,
    trust_remote_code: bool = False,
) -> dict:
    """Train on `pairs` (TRL conversational preference rows) and save the adapter to
    `out_dir` atomically. Returns training stats for the manifest."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig, PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(base_model, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    dtype = torch.bfloat16 if settings.bf16 else torch.float32
    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=dtype, trust_remote_code=trust_remote_code)

    peft_config = None
    if previous_adapter is not None:
        model = PeftModel.from_pretrained(model, str(previous_adapter), is_trainable=True)
    else:
        peft_config = LoraConfig(
            r=settings.lora_r, lora_alpha=settings.lora_alpha, lora_dropout=settings.lora_dropout,
            target_modules="all-linear", task_type="CAUSAL_LM",
        )

    rows = fitting_pairs(pairs, tokenizer, settings.max_length)
    if not rows:
        raise TrainingError(f"train: none of {len(pairs)} pairs fits max_length={settings.max_length} tokens")
    dataset = Dataset.from_list(rows)

    work = Path(tempfile.mkdtemp(prefix="cai-train-"))
    common = dict(
        output_dir=str(work),
        per_device_train_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.grad_accum,
        num_train_epochs=settings.epochs,
        learning_rate=settings.learning_rate,
        max_length=settings.max_length,
        bf16=settings.bf16,
        gradient_checkpointing=settings.gradient_checkpointing,  # TRL's default is on; off trades memory for speed
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=seed,
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    if settings.method == "dpo":
        from trl import DPOConfig, DPOTrainer

        # Over several epochs, the reference's log-probs once per pair instead of once per pair per epoch.
        args = DPOConfig(beta=settings.beta, precompute_ref_log_probs=settings.epochs > 1, **common)
        trainer = DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=peft_config)
    else:
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        args = ORPOConfig(beta=settings.beta, **common)
        trainer = ORPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=peft_config)

    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    if trainable == 0:  # PeftModel.from_pretrained defaults to frozen (trl #6700)
        raise TrainingError("train: the adapter has no trainable parameters")
    guard = divergence_guard(settings.max_loss)
    trainer.add_callback(guard)
    result = trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    if guard.reason or not losses:
        shutil.rmtree(work, ignore_errors=True)
        return {"diverged": f"{guard.reason or 'no loss logged'}; training stopped, the previous adapter is kept",
                "steps": trainer.state.global_step, "pairs_used": len(rows)}

    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    # Only the policy adapter: TRL's frozen "ref" copy is not part of the result.
    trainer.model.save_pretrained(str(tmp), selected_adapters=["default"])
    tokenizer.save_pretrained(str(tmp))
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    shutil.rmtree(work, ignore_errors=True)
    rewards = [h.get("rewards/accuracies") for h in trainer.state.log_history if "rewards/accuracies" in h]
    return {
        "pairs_used": len(rows),
        "pairs_too_long": len(pairs) - len(rows),
        "trainable_params": trainable,
        "steps": trainer.state.global_step,
        "loss_first": round(losses[0], 4),
        "loss_last": round(losses[-1], 4),
        "reward_accuracy_last": rewards[-1] if rewards else None,
        "train_seconds": round(result.metrics.get("train_runtime", 0.0), 2),
    }


def fitting_pairs(pairs: list[dict], tokenizer, max_length: int) -> list[dict]:
    """Pairs whose prompt plus longer side fit `max_length` tokens, with no empty side.

    TRL would truncate the rest, and a side truncated to nothing gives a NaN loss
    (trl #3382); dropping them is the honest choice.
    """
    rows = []
    for p in pairs:
        if not p["chosen"][0]["content"].strip() or not p["rejected"][0]["content"].strip():
            continue
        longest = max((p["chosen"], p["rejected"]), key=lambda side: len(side[0]["content"]))
        ids = tokenizer.apply_chat_template(p["prompt"] + longest, tokenize=True)
        if hasattr(ids, "input_ids") or isinstance(ids, dict):
            ids = ids["input_ids"]
        if len(ids) <= max_length:
            rows.append({"prompt": p["prompt"], "chosen": p["chosen"], "rejected": p["rejected"]})
    return rows


def init_adapter(base_model: str, out_dir: Path, settings: TrainSettings) -> Path:
    """An untrained LoRA adapter (B = 0: it answers as the base does), for benches and tests
    of loading and swapping."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32)
    config = LoraConfig(r=settings.lora_r, lora_alpha=settings.lora_alpha, target_modules="all-linear", task_type="CAUSAL_LM")
    get_peft_model(model, config).save_pretrained(str(out_dir))
    return out_dir
