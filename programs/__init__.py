"""DSPy programs, one file each, and the adapter that formats them for small models."""

import os

# LiteLLM (under DSPy) fetches a price table from the internet at import unless told not to.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


def sha(value) -> str:
    """A short sha256 of a JSON-able value: names a prompt's version in records."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:10]


def version(make_program, label: str) -> str:
    """`label@sha`: the sha covers each predictor's instructions, fields and demos, so a
    record says which prompt produced it (an optimized program gets a new sha)."""
    program = make_program()
    return f"{label}@" + sha(
        {
            name: {
                "instructions": p.signature.instructions,
                "fields": list(p.signature.fields),
                **p.dump_state(),
            }
            for name, p in program.named_predictors()
        }
    )
