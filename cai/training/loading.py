"""How the base model is loaded for training where it is not plain: QLoRA's 4-bit NF4 base
(bitsandbytes), Unsloth's FastLanguageModel, and the environment a load needs."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from cai.config.settings import TrainSettings
from cai.training import TrainingError


@contextlib.contextmanager
def scoped_env(**values: str | None):
    """Environment variables set (those given not None) for the block, then restored."""
    before = {k: os.environ.get(k) for k in values}
    os.environ.update({k: v for k, v in values.items() if v is not None})
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def quantized_loading(settings: TrainSettings) -> dict:
    """`from_pretrained` arguments for QLoRA: linear layers in bitsandbytes NF4, computing in bf16.
    On the GPU; bitsandbytes' CPU backend runs the same path without one (slowly), which is how
    the tests check it."""
    if settings.quantization != "nf4":
        return {}
    import importlib.util

    import torch
    from transformers import BitsAndBytesConfig

    if importlib.util.find_spec("bitsandbytes") is None:
        raise TrainingError(
            "train: quantization 'nf4' needs bitsandbytes (pip install -e .[gpu]), which is not "
            "installed"
        )
    if settings.sharding == "fsdp":
        # FSDP shards tensors of one dtype: the 4-bit weights stored as bf16 (bitsandbytes' quant_storage),
        # loaded without a device map so that FSDP places the shards (PEFT's FSDP + QLoRA guide)
        return {
            "quantization_config": BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=torch.bfloat16,
                bnb_4bit_quant_storage=torch.bfloat16,
            )
        }
    # each of `accelerate launch`'s processes on its own GPU
    rank = int(os.environ.get("LOCAL_RANK", 0))
    return {
        "quantization_config": BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        ),
        "device_map": {"": rank if torch.cuda.is_available() else "cpu"},
    }


def prepare_for_qlora(model, gradient_checkpointing: bool):
    """PEFT's k-bit preparation; it has been seen to leave checkpointing off when asked for it
    (PITFALLS.md: a 32B step then peaked at 57 GiB instead of 27), so that is checked."""
    from peft import prepare_model_for_kbit_training

    model = prepare_model_for_kbit_training(
        model, use_gradient_checkpointing=gradient_checkpointing
    )
    if gradient_checkpointing and not getattr(model, "is_gradient_checkpointing", False):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def unsloth_model(
    base_model: str,
    previous_adapter: Path | None,
    settings: TrainSettings,
    seed: int,
    trust_remote_code: bool,
):
    """Unsloth's FastLanguageModel with a LoRA (new, or the previous stage's, trainable).
    Unsloth patches transformers when imported; it is imported here, on first use."""
    import unsloth  # noqa: F401  (before peft, as Unsloth asks)
    from peft import PeftModel
    from unsloth import FastLanguageModel

    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=base_model,
        max_seq_length=settings.max_length,
        load_in_4bit=settings.quantization == "nf4",
        dtype=None,
        trust_remote_code=trust_remote_code,
    )
    if previous_adapter is not None:
        return PeftModel.from_pretrained(model, str(previous_adapter), is_trainable=True), tokenizer
    model = FastLanguageModel.get_peft_model(
        model,
        r=settings.lora_r,
        lora_alpha=settings.lora_alpha,
        lora_dropout=settings.lora_dropout,
        target_modules=[
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ],
        use_gradient_checkpointing="unsloth" if settings.gradient_checkpointing else False,
        random_state=seed,
    )
    return model, tokenizer
