#!/usr/bin/env bash
# The GPU checks of the training path in one call to a lent GPU machine (the workplace's
# `device` tool: nothing there reaches the internet, Python 3.12 with a CUDA torch,
# transformers, peft and accelerate installed; what else is needed travels as wheels).
#
#   bash bench/gpu_check.sh prepare [RUN]   # here: wheels, tokenizer and RUN's pairs into .gpu/
#   bash bench/gpu_check.sh run             # there, with `.gpu` (git-ignored) carried; results in $OUT
#
# `run` trains a randomly initialised model of Qwen2.5-32B's shape cut to LAYERS decoder
# layers (default 16) on PAIRS pairs (default 512; the run's pairs repeated) with the
# `gpu` profile's settings (QLoRA NF4, bf16, gradient checkpointing), against plain TRL
# DPOTrainer defaults, and prints tokens/s of each, the peaks beside the memory plan's
# estimate, the rate projected to the full 64 layers, and `training_ratio=X` last.
# vLLM (the serving precisions, sleep and wake) cannot travel: its CUDA wheel is far over
# the 64 MiB a call may carry.
set -euo pipefail
cd "$(dirname "$0")/.."
GPU_DIR=.gpu

prepare() {
    local run=${1:-runs/full}
    mkdir -p "$GPU_DIR/whl" "$GPU_DIR/tokenizer" "$GPU_DIR/run/stage1"
    # The versions this project runs on the CPU (pip show), for the packages the machine lacks
    # or may hold at another version; --no-deps: each one needed is named.
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d "$GPU_DIR/whl" \
        trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 bitsandbytes==0.50.2 peft==0.21.2 \
        pydantic==2.13.4 pydantic-core==2.46.4 annotated-types typing-inspection
    local model
    model=$(python3 -c "from pathlib import Path; from cai.serving.model import EMBEDDED, resolve_model; print(resolve_model(EMBEDDED, Path('models')))")
    cp "$model"/tokenizer.json "$model"/tokenizer_config.json "$model"/chat_template.jinja "$GPU_DIR/tokenizer/"
    cat "$run"/stage*/pairs.jsonl > "$GPU_DIR/run/stage1/pairs.jsonl"
    echo "$(wc -l < "$GPU_DIR/run/stage1/pairs.jsonl") pairs from $run; carry: $(du -sh "$GPU_DIR" | cut -f1)"
}

run() {
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$GPU_DIR"/whl/*.whl
    export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
    local out=${OUT:-$GPU_DIR/out}
    mkdir -p "$out"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/device.txt"
    python3 -c "import torch, transformers, trl, peft, bitsandbytes, datasets; print('torch', torch.__version__, 'transformers', transformers.__version__, 'trl', trl.__version__, 'peft', peft.__version__, 'bitsandbytes', bitsandbytes.__version__, 'datasets', datasets.__version__)" | tee -a "$out/device.txt"
    python3 bench/training.py --run "$GPU_DIR/run" --profile gpu --random-layers "${LAYERS:-16}" \
        --tokenizer "$GPU_DIR/tokenizer" --pairs "${PAIRS:-512}" 2>&1 | tee "$out/training.log"
    # the same through `accelerate launch` on every GPU of the machine, as a stage trains (cai/training/process.py)
    python3 bench/training.py --run "$GPU_DIR/run" --profile gpu --random-layers "${LAYERS:-16}" \
        --tokenizer "$GPU_DIR/tokenizer" --pairs "${PAIRS:-512}" --processes "$(nvidia-smi -L | wc -l)" 2>&1 | tee "$out/training-launch.log"
}

"$@"
