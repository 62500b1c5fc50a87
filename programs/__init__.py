"""DSPy programs, one file each, and the adapter that formats them for small models."""

import os

# LiteLLM (under DSPy) fetches a price table from the internet at import unless told not to.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
