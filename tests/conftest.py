import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


import pytest  # noqa: E402


def scripted_context(run, constitution, **settings):
    """A Context for step functions whose LM a test scripts: nothing listens where the server would
    be, and each policy is asked under its own name (runtime LoRA)."""
    from types import SimpleNamespace

    import bootstrap
    from cai.serving.server import ServeSettings
    from cai.serving.swap import LoraSwap

    server = SimpleNamespace(
        api_base="http://unused",
        base_url="http://unused",
        api_key="k",
        settings=ServeSettings(model="model"),
    )
    defaults = dict(model="model", adapter="plain", concurrency=4, timeout_s=30, seed=0)
    return bootstrap.Context(
        run=run,
        server=server,
        swap=LoraSwap(server),
        constitution=constitution,
        **{**defaults, **settings},
    )


class ScriptedHTTP:
    """The plumbing of a scripted HTTP server standing in for vLLM's endpoints (tests/test_sleep.py,
    tests/test_swap.py): subclasses answer; `serving(handler, settings, tmp)` runs one for a
    VLLMServer."""

    def _answer(self, body: dict, status: int = 200):
        import json

        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def scripted_vllm(handler, settings, tmp_path):
    """A VLLMServer whose port is `handler`'s scripted server, running until the generator is
    closed."""
    import threading
    from http.server import ThreadingHTTPServer

    from cai.serving.server import VLLMServer

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    server = VLLMServer(settings, tmp_path / "log", tmp_path / "pid")
    server.port = httpd.server_address[1]
    try:
        yield server
    finally:
        httpd.shutdown()


@pytest.fixture
def ctx(tmp_path):
    """A Context for step functions: a fresh run folder, no server (tests script the LM)."""
    from cai.config.constitution import load_constitution
    from cai.store import Run

    con, _ = load_constitution(ROOT / "constitution.yaml")
    run = Run(tmp_path / "run")
    run.manifest = {"config": {}, "stages": {}}
    return scripted_context(run, con)
