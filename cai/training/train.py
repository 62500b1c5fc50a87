"""Train a stage's LoRA adapter on its preference pairs with TRL.

Stage 1 starts a fresh adapter on the base model (reference = the base). Later
stages continue the previous stage's adapter, loaded trainable; with no `ref_model`,
TRL copies it into a frozen "ref" adapter, so the reference is the previous policy.

The base can be loaded in bitsandbytes 4-bit NF4 (QLoRA, `train.quantization: nf4`: for
the GPU, though bitsandbytes' CPU backend runs it too), and on a GPU Unsloth's
FastLanguageModel can load it (`train.backend: unsloth`); TRL's trainer runs either way.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from pathlib import Path

from cai.config.settings import TrainSettings
from cai.progress import StepProgress
from cai.training import TrainingError
from cai.training.loading import prepare_for_qlora, quantized_loading, scoped_env, unsloth_model


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


def progress_callback(label: str):
    """A TrainerCallback that shows the training's steps, tokens/s and time left
    (cai/progress.py)."""
    from transformers import TrainerCallback

    class ShowProgress(TrainerCallback):
        shown: StepProgress | None = None

        def on_train_begin(self, args, state, control, **kwargs):
            self.shown = StepProgress(label, state.max_steps, unit="steps").__enter__()

        def on_step_end(self, args, state, control, **kwargs):
            self.shown.set(state.global_step, self.shown.tokens)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if self.shown and (logs or {}).get("num_tokens") is not None:
                self.shown.set(state.global_step, int(logs["num_tokens"]))

        def on_train_end(self, args, state, control, **kwargs):
            self.shown.__exit__(None, None, None)

    return ShowProgress()


def train_adapter(
    base_model: str,
    previous_adapter: Path | None,
    pairs: list[dict],
    out_dir: Path,
    settings: TrainSettings,
    seed: int,
    trust_remote_code: bool = False,
    tensorboard_dir: Path | None = None,
    progress: str | None = None,
) -> dict:
    """Train on `pairs` (TRL conversational preference rows) and save the adapter to
    `out_dir` atomically. Returns training stats for the manifest. The training curves go
    to `tensorboard_dir` (TRL's `report_to` TensorBoard), `progress` names the progress line."""
    import torch
    from accelerate import PartialState
    from datasets import Dataset
    from peft import LoraConfig, PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    # under `accelerate launch` (cai/training/process.py), one of N processes; without CUDA they
    # join over gloo
    main = PartialState(cpu=not torch.cuda.is_available()).is_main_process
    if settings.backend != "trl" and not torch.cuda.is_available():
        raise TrainingError(
            f"train: backend {settings.backend!r} needs a CUDA GPU; on the CPU use train.backend: "
            "trl"
        )
    dtype = torch.bfloat16 if settings.bf16 else torch.float32
    peft_config = None
    if settings.backend == "unsloth":
        model, tokenizer = unsloth_model(
            base_model, previous_adapter, settings, seed, trust_remote_code
        )
    else:
        tokenizer = AutoTokenizer.from_pretrained(base_model, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            base_model,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            **quantized_loading(settings),
        )
        if settings.quantization == "nf4":
            model = prepare_for_qlora(model, settings.gradient_checkpointing)
        if previous_adapter is not None:
            model = PeftModel.from_pretrained(model, str(previous_adapter), is_trainable=True)
        else:
            peft_config = LoraConfig(
                r=settings.lora_r,
                lora_alpha=settings.lora_alpha,
                lora_dropout=settings.lora_dropout,
                target_modules="all-linear",
                task_type="CAUSAL_LM",
            )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    rows = fitting_pairs(pairs, tokenizer, settings.max_length)
    if not rows:
        raise TrainingError(
            f"train: none of {len(pairs)} pairs fits max_length={settings.max_length} tokens"
        )
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
        # TRL's default is on; off trades memory for speed
        gradient_checkpointing=settings.gradient_checkpointing,
        logging_steps=1,
        save_strategy="no",
        report_to=["tensorboard"] if tensorboard_dir else [],
        seed=seed,
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    if tensorboard_dir and main:  # a training cut short is redone whole: its old curves go with it
        shutil.rmtree(tensorboard_dir, ignore_errors=True)
    # transformers' TensorBoard callback reads its folder from this variable when the trainer is
    # made
    with scoped_env(TENSORBOARD_LOGGING_DIR=str(tensorboard_dir) if tensorboard_dir else None):
        if settings.method == "dpo":
            from trl import DPOConfig, DPOTrainer

            # Over several epochs, the reference's log-probs once per pair instead of once per pair
            # per epoch.
            losses = (
                dict(loss_type=["sigmoid", "sft"], loss_weights=[1.0, settings.sft_weight])
                if settings.sft_weight
                else {}
            )
            args = DPOConfig(
                beta=settings.beta, precompute_ref_log_probs=settings.epochs > 1, **losses, **common
            )
            trainer = DPOTrainer(
                model=model,
                args=args,
                train_dataset=dataset,
                processing_class=tokenizer,
                peft_config=peft_config,
            )
        else:
            from trl.experimental.orpo import ORPOConfig, ORPOTrainer

            args = ORPOConfig(beta=settings.beta, **common)
            trainer = ORPOTrainer(
                model=model,
                args=args,
                train_dataset=dataset,
                processing_class=tokenizer,
                peft_config=peft_config,
            )
    if progress:
        trainer.add_callback(progress_callback(progress))

    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    if trainable == 0:  # PeftModel.from_pretrained defaults to frozen (trl #6700)
        raise TrainingError("train: the adapter has no trainable parameters")
    guard = divergence_guard(settings.max_loss)
    trainer.add_callback(guard)
    result = trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    if guard.reason or not losses:
        shutil.rmtree(work, ignore_errors=True)
        return {
            "diverged": f"{guard.reason or 'no loss logged'}; training stopped, the previous adapter is kept",
            "steps": trainer.state.global_step,
            "pairs_used": len(rows),
        }

    tmp = out_dir.with_name(out_dir.name + ".partial")
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    # every process takes part: the trainer gathers the shards, the main one writes
    if settings.sharding != "none":
        trainer.save_model(str(tmp))
    elif main:  # only the policy adapter: TRL's frozen "ref" copy is not part of the result
        trainer.model.save_pretrained(str(tmp), selected_adapters=["default"])
    if main:
        tokenizer.save_pretrained(str(tmp))
        shutil.rmtree(out_dir, ignore_errors=True)
        os.replace(tmp, out_dir)
    trainer.accelerator.wait_for_everyone()
    shutil.rmtree(work, ignore_errors=True)
    rewards = [
        h.get("rewards/accuracies") for h in trainer.state.log_history if "rewards/accuracies" in h
    ]
    tokens = next(
        (h["num_tokens"] for h in reversed(trainer.state.log_history) if "num_tokens" in h), None
    )
    return {
        "pairs_used": len(rows),
        "pairs_too_long": len(pairs) - len(rows),
        "trainable_params": trainable,
        "steps": trainer.state.global_step,
        "loss_first": round(losses[0], 4),
        "loss_last": round(losses[-1], 4),
        "reward_accuracy_last": rewards[-1] if rewards else None,
        "train_seconds": round(result.metrics.get("train_runtime", 0.0), 2),
        # what `plan --run` measures training throughput from
        "train_tokens": int(tokens) if tokens else None,
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
        if chat_length(tokenizer, p["prompt"] + longest) <= max_length:
            rows.append({"prompt": p["prompt"], "chosen": p["chosen"], "rejected": p["rejected"]})
    return rows


def chat_length(tokenizer, messages: list[dict]) -> int:
    """Tokens of `messages` as the chat template writes them (what TRL trains on)."""
    ids = tokenizer.apply_chat_template(messages, tokenize=True)
    return len(ids["input_ids"] if hasattr(ids, "input_ids") or isinstance(ids, dict) else ids)
