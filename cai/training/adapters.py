"""A LoRA adapter outside training: a fresh one (`init_adapter`), and one merged into a full
checkpoint (`merge_adapter`) for a server that reloads weights in place."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from cai.config.settings import TrainSettings


def merge_adapter(
    base_model: str, adapter: Path, out_dir: Path, trust_remote_code: bool = False
) -> Path:
    """The base with `adapter` merged into its weights (PEFT's `merge_and_unload`), as one float32
    checkpoint in `out_dir`: what a server without LoRA serves (`serve.swap: merged`). Written
    once, atomically; float32 so that a small LoRA update is not rounded away."""
    if (out_dir / "MERGED").exists():
        return out_dir
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model = AutoModelForCausalLM.from_pretrained(
        base_model, dtype=torch.float32, trust_remote_code=trust_remote_code
    )
    model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    model.save_pretrained(str(tmp), safe_serialization=True)
    # LoRA leaves it as it was
    AutoTokenizer.from_pretrained(base_model, trust_remote_code=trust_remote_code).save_pretrained(
        str(tmp)
    )
    (tmp / "MERGED").write_text(json.dumps({"base": base_model, "adapter": str(adapter)}))
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, out_dir)
    return out_dir


def init_adapter(base_model: str, out_dir: Path, settings: TrainSettings) -> Path:
    """An untrained LoRA adapter (B = 0: it answers as the base does), for benches and tests
    of loading and swapping."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32)
    config = LoraConfig(
        r=settings.lora_r,
        lora_alpha=settings.lora_alpha,
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )
    get_peft_model(model, config).save_pretrained(str(out_dir))
    return out_dir
