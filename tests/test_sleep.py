"""One GPU, two jobs: the policy server sleeps while training runs, then wakes, reloads its
adapters and answers a fixed-seed probe. vLLM's sleep mode is GPU-only, so a scripted HTTP
server stands in for vLLM's endpoints here; what is tested is our side of the exchange."""

import json
from http.server import BaseHTTPRequestHandler

import pytest
from conftest import ScriptedHTTP, scripted_vllm

from cai.serving.server import ServerError, ServeSettings
from cai.serving.swap import LoraSwap, gpu_lent


class ScriptedVLLM(ScriptedHTTP, BaseHTTPRequestHandler):
    """Answers /sleep, /wake_up and the /v1 calls a wake makes, and logs each request."""

    log: list = []
    wake_status = "awake"
    models = ["stage0"]

    def do_GET(self):
        self.log.append(("GET", self.path, self.headers.get("Authorization")))
        self._answer({"data": [{"id": m} for m in self.models]})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        self.log.append(
            (
                "POST",
                self.path,
                self.headers.get("Authorization"),
                body.get("lora_name") or body.get("model"),
                body.get("seed"),
            )
        )
        if self.path.startswith("/sleep"):
            return self._answer({"status": "sleeping", "level": 1})
        if self.path == "/wake_up":
            return self._answer({"status": self.wake_status, "tags": None})
        if self.path.endswith("/load_lora_adapter"):
            self.models.append(body["lora_name"])
            return self._answer({})
        if self.path.endswith("/unload_lora_adapter"):
            self.models.remove(body["lora_name"])
            return self._answer({})
        return self._answer({"choices": [{"message": {"content": "Hello."}}]})


@pytest.fixture
def scripted(tmp_path):
    ScriptedVLLM.log, ScriptedVLLM.wake_status, ScriptedVLLM.models = (
        [],
        "awake",
        ["stage0", "stage1"],
    )
    for server in scripted_vllm(
        ScriptedVLLM, ServeSettings(model="m", sleep_while_training=True), tmp_path
    ):
        swap = LoraSwap(server)
        swap.adapters = {"stage1": str(tmp_path / "stage1" / "adapter")}
        yield server, swap


def test_the_server_sleeps_while_training_then_wakes_with_its_adapters_and_a_probe(scripted):
    server, swap = scripted
    with gpu_lent(server, swap, probe_seed=7):
        assert [r[1] for r in ScriptedVLLM.log] == ["/sleep?level=1"]
    calls = [(r[0], r[1]) for r in ScriptedVLLM.log]
    assert calls == [
        ("POST", "/sleep?level=1"),
        ("POST", "/wake_up"),
        ("POST", "/v1/unload_lora_adapter"),
        ("POST", "/v1/load_lora_adapter"),
        ("GET", "/v1/models"),
        ("POST", "/v1/chat/completions"),  # the reloaded adapter answers
        ("POST", "/v1/chat/completions"),
    ]  # the fixed-seed probe of the base
    assert all(r[2] == f"Bearer {server.api_key}" for r in ScriptedVLLM.log)
    assert ScriptedVLLM.log[-2][3] == "stage1" and ScriptedVLLM.log[-1][3:] == ("stage0", 7)
    assert swap.adapters == {"stage1": swap.adapters["stage1"]}


def test_a_failed_training_still_wakes_the_server(scripted):
    server, swap = scripted
    with pytest.raises(RuntimeError, match="out of memory"):
        with gpu_lent(server, swap, probe_seed=7):
            raise RuntimeError("CUDA out of memory")
    assert ("POST", "/wake_up") in [(r[0], r[1]) for r in ScriptedVLLM.log]


def test_a_wake_that_leaves_the_engine_asleep_is_an_error(scripted):
    server, _ = scripted
    ScriptedVLLM.wake_status = "sleeping"
    server.sleep()
    with pytest.raises(ServerError, match="partly asleep"):
        server.wake_up()


def test_on_the_cpu_nothing_sleeps(scripted):
    server, swap = scripted
    server.settings.sleep_while_training = False
    with gpu_lent(server, swap):
        pass
    assert ScriptedVLLM.log == []
