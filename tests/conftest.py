import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


import pytest  # noqa: E402


@pytest.fixture
def ctx(tmp_path):
    """A Context for step functions: a fresh run folder, no server (tests script the LM)."""
    from types import SimpleNamespace

    import bootstrap
    from cai.config import load_constitution
    from cai.serve import ServeSettings
    from cai.store import Run

    con, _ = load_constitution(ROOT / "constitution.yaml")
    run = Run(tmp_path / "run")
    run.manifest = {"config": {}, "stages": {}}
    server = SimpleNamespace(api_base="http://unused", api_key="k", settings=ServeSettings(model="model"))
    return bootstrap.Context(run, server, con, "model", "plain", 4, 30, 0, False)
