"""Serving the policy: `server` (the vLLM process), `swap` (a trained stage put into the running
server), `lm` (DSPy programs against it, many requests at once), `model` (resolving the base
model, building the embedded default)."""
