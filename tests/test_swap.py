"""Serving a trained stage: the profile's choice of swap, and our side of the merged swap's exchange
with vLLM (a scripted HTTP server answers as vLLM 0.32's /collective_rpc and /reset_prefix_cache do,
read in its entrypoints/serve/dev/; the real exchange runs in tests/test_server.py)."""

import json
from http.server import BaseHTTPRequestHandler

import pytest

import bootstrap
from cai.serve import BASE_NAME, MERGED_NAME, ServeSettings, ServerError, VLLMServer, command_line
from conftest import ScriptedHTTP, scripted_vllm


class ScriptedVLLM(ScriptedHTTP, BaseHTTPRequestHandler):
    log: list = []
    busy_resets = 0  # /reset_prefix_cache answers success false this many times first (blocks still held)

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        self.log.append((self.path, body.get("kwargs", {}).get("weights_path") or body.get("model")))
        if self.path == "/collective_rpc":
            return self._answer({"results": [None]})
        if self.path.startswith("/reset_prefix_cache"):
            ScriptedVLLM.busy_resets -= 1
            return self._answer({"success": ScriptedVLLM.busy_resets < 0})
        return self._answer({"choices": [{"message": {"content": "Hello."}}]})


@pytest.fixture
def merged_server(tmp_path):
    ScriptedVLLM.log, ScriptedVLLM.busy_resets = [], 0
    yield from scripted_vllm(ScriptedVLLM, ServeSettings(model="/models/base", swap="merged"), tmp_path)


def test_merged_serves_one_name_without_lora_and_lora_each_adapter_by_its_own():
    merged = ServeSettings(model="m", swap="merged")
    cmd = command_line(merged, 8011, "k")
    assert merged.served_name == MERGED_NAME and "--enable-lora" not in cmd
    assert cmd[cmd.index("--served-model-name") + 1] == MERGED_NAME
    assert "--enable-lora" in command_line(ServeSettings(model="m"), 8011, "k")
    assert VLLMServer(ServeSettings(model="m"), None, None).request_name("stage3") == "stage3"  # lora: the adapter's name
    with pytest.raises(ValueError, match="swap must be one of"):
        ServeSettings(model="m", swap="restart")


def test_a_merged_swap_reloads_the_asked_for_weights_once_drops_the_prefix_cache_and_probes(merged_server):
    merged_server.add_weights("stage1", "/run/merged/stage1")
    assert merged_server.request_name("stage1") == MERGED_NAME
    assert merged_server.request_name("stage1") == MERGED_NAME  # in place already: no second reload
    assert merged_server.loaded == "stage1"
    assert merged_server.request_name(BASE_NAME) == MERGED_NAME  # the guard's base, then the policy again
    assert [entry for entry in ScriptedVLLM.log if entry[0] == "/collective_rpc"] == [
        ("/collective_rpc", "/run/merged/stage1"), ("/collective_rpc", "/models/base")]
    # every reload: the weights, then the prefix cache (its blocks hold the old weights' keys), then a probe
    assert [path for path, _ in ScriptedVLLM.log] == ["/collective_rpc", "/reset_prefix_cache", "/v1/chat/completions"] * 2


def test_the_prefix_cache_reset_is_retried_while_blocks_are_held_and_a_stage_never_swapped_in_is_an_error(merged_server):
    ScriptedVLLM.busy_resets = 2
    merged_server.add_weights("stage2", "/run/merged/stage2")
    merged_server.request_name("stage2")
    assert [path for path, _ in ScriptedVLLM.log].count("/reset_prefix_cache") == 3
    with pytest.raises(ServerError, match="no checkpoint for stage4"):
        merged_server.request_name("stage4")


def test_servable_merges_once_and_keeps_only_the_checkpoints_in_use(ctx, monkeypatch, tmp_path):
    merges, registered = [], {}
    monkeypatch.setattr(bootstrap, "merge_adapter", lambda base, adapter, out, trust=False: merges.append(out.name) or out.mkdir(parents=True) or out)
    ctx.server.settings = ServeSettings(model="m", swap="merged")
    ctx.server.add_weights = lambda name, path: registered.update({name: path})
    for old in ("stage1", "stage2"):
        (ctx.run.root / "merged" / old).mkdir(parents=True)
    bootstrap.servable(ctx, "stage3", keep=("stage2",))
    assert merges == ["stage3"] and registered == {"stage3": ctx.run.root / "merged" / "stage3"}
    assert sorted(p.name for p in (ctx.run.root / "merged").iterdir()) == ["stage2", "stage3"]  # stage 1's is gone


def test_the_swap_step_records_the_way_it_served(ctx, monkeypatch):
    monkeypatch.setattr(bootstrap, "servable", lambda ctx, name, keep=(): None)
    ctx.server.settings = ServeSettings(model="m", swap="merged")
    stats = bootstrap.swap(ctx, bootstrap.resolve_stage(*_cpu_stage(2)), "stage1")
    assert stats["swap"] == "merged" and stats["served_as"] == "stage2"


def _cpu_stage(n):
    from cai.config import load_curriculum

    cur, _ = load_curriculum(bootstrap.ROOT / "curriculum.yaml")
    return cur, cur.profiles["cpu"], n
