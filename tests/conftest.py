import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


import pytest  # noqa: E402


def scripted_server():
    """Where a scripted LM's server would be: nothing listens; each policy has its own name (runtime LoRA)."""
    from types import SimpleNamespace

    from cai.serve import ServeSettings

    return SimpleNamespace(api_base="http://unused", base_url="http://unused", api_key="k", settings=ServeSettings(model="model"),
                           request_name=lambda name: name)


@pytest.fixture
def ctx(tmp_path):
    """A Context for step functions: a fresh run folder, no server (tests script the LM)."""
    import bootstrap
    from cai.config import load_constitution
    from cai.store import Run

    con, _ = load_constitution(ROOT / "constitution.yaml")
    run = Run(tmp_path / "run")
    run.manifest = {"config": {}, "stages": {}}
    return bootstrap.Context(run, scripted_server(), con, "model", "plain", 4, 30, 0, False)
