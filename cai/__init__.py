"""The machinery the loop in bootstrap.py drives, one concern a module."""

import os
from pathlib import Path

# LiteLLM (under DSPy) fetches a price table from the internet at import unless told not to.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

# the checkout: curriculum.yaml, suites/, models/, runs/
ROOT = Path(__file__).resolve().parent.parent
