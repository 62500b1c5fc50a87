"""Adapter swap against a server restart, on the embedded default model.

    python bench/swap.py

Loads a LoRA adapter into the running server through `/v1/load_lora_adapter` (what
the swap step does), then times the alternative: stopping the server and starting it
again until it answers (what a merged model or a server without runtime LoRA needs).
Prints both and `swap_seconds=X` last.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cai.config import TrainSettings, load_curriculum  # noqa: E402
from cai.model import EMBEDDED, resolve_model  # noqa: E402
from cai.serve import ServeSettings, VLLMServer  # noqa: E402
from cai.train import init_adapter  # noqa: E402


def main() -> None:
    model = resolve_model(EMBEDDED, ROOT / "models")
    cur, _ = load_curriculum(ROOT / "curriculum.yaml")
    serve = ServeSettings(model=model, **cur.profiles["quick"].serve.model_dump())
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        adapter = init_adapter(model, tmp / "adapter", TrainSettings())
        server = VLLMServer(serve, tmp / "server.log", tmp / "server.pid")
        start = time.perf_counter()
        server.start()
        first_start = time.perf_counter() - start
        try:
            start = time.perf_counter()
            load_s = server.load_adapter("stage1", adapter)
            swap_s = time.perf_counter() - start  # the load plus its check: /v1/models and a probe request
            answer = server.complete("stage1", "Say hello.", max_tokens=8)
            start = time.perf_counter()
            server.stop()
            server.start()
            restart_s = time.perf_counter() - start
        finally:
            server.stop()
    print(f"server start: {first_start:.1f}s")
    print(f"adapter load request: {load_s:.3f}s; load + check (models list, probe): {swap_s:.3f}s; answer: {answer!r}")
    print(f"restart (stop + start until ready): {restart_s:.1f}s; swap is {restart_s / swap_s:.0f}x faster")
    print(f"swap_seconds={swap_s:.3f}")


if __name__ == "__main__":
    main()
