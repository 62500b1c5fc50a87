"""Serving a trained stage: the profile's choice of swap, and our side of the merged swap's exchange
with vLLM (a scripted HTTP server answers as vLLM 0.32's /collective_rpc and /reset_prefix_cache do,
read in its entrypoints/serve/dev/; the real exchange runs in tests/test_server.py)."""

import json
from http.server import BaseHTTPRequestHandler

import pytest
from conftest import ScriptedHTTP, scripted_vllm

import bootstrap
from cai import ROOT
from cai.config.curriculum import resolve_stage
from cai.serving.server import BASE_NAME, MERGED_NAME, ServerError, ServeSettings, command_line
from cai.serving.swap import LoraSwap, MergedSwap, make_swap


class ScriptedVLLM(ScriptedHTTP, BaseHTTPRequestHandler):
    log: list = []
    # /reset_prefix_cache answers success false this many times first (blocks still held)
    busy_resets = 0

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        self.log.append(
            (self.path, body.get("kwargs", {}).get("weights_path") or body.get("model"))
        )
        if self.path == "/collective_rpc":
            return self._answer({"results": [None]})
        if self.path.startswith("/reset_prefix_cache"):
            ScriptedVLLM.busy_resets -= 1
            return self._answer({"success": ScriptedVLLM.busy_resets < 0})
        return self._answer({"choices": [{"message": {"content": "Hello."}}]})


@pytest.fixture
def merged(tmp_path):
    ScriptedVLLM.log, ScriptedVLLM.busy_resets = [], 0
    for server in scripted_vllm(
        ScriptedVLLM, ServeSettings(model="/models/base", swap="merged"), tmp_path
    ):
        swap = make_swap(server, tmp_path / "run")
        assert isinstance(swap, MergedSwap)
        yield swap


def put_in(swap, name: str, checkpoint: str) -> None:
    """`name`'s checkpoint known to the merged swap, as make_servable leaves it (without
    merging)."""
    swap.weights[name] = checkpoint


def test_merged_serves_one_name_without_lora_and_lora_each_adapter_by_its_own():
    merged = ServeSettings(model="m", swap="merged")
    cmd = command_line(merged, 8011, "k")
    assert merged.served_name == MERGED_NAME and "--enable-lora" not in cmd
    assert cmd[cmd.index("--served-model-name") + 1] == MERGED_NAME
    assert "--enable-lora" in command_line(ServeSettings(model="m"), 8011, "k")
    assert LoraSwap(server=None).activate("stage3") == "stage3"  # lora: the adapter's name
    with pytest.raises(ValueError, match="swap must be one of"):
        ServeSettings(model="m", swap="restart")


def test_a_merged_swap_reloads_the_asked_for_weights_once_drops_the_prefix_cache_and_probes(merged):
    put_in(merged, "stage1", "/run/merged/stage1")
    assert merged.activate("stage1") == MERGED_NAME
    assert merged.activate("stage1") == MERGED_NAME  # in place already: no second reload
    assert merged.loaded == "stage1"
    assert merged.activate(BASE_NAME) == MERGED_NAME  # the guard's base, then the policy again
    assert [entry for entry in ScriptedVLLM.log if entry[0] == "/collective_rpc"] == [
        ("/collective_rpc", "/run/merged/stage1"),
        ("/collective_rpc", "/models/base"),
    ]
    # every reload: the weights, then the prefix cache (its blocks hold the old weights' keys), then
    # a probe
    assert [path for path, _ in ScriptedVLLM.log] == [
        "/collective_rpc",
        "/reset_prefix_cache",
        "/v1/chat/completions",
    ] * 2


def test_the_prefix_cache_reset_is_retried_while_blocks_are_held_and_a_stage_never_swapped_in_is_an_error(
    merged,
):
    ScriptedVLLM.busy_resets = 2
    put_in(merged, "stage2", "/run/merged/stage2")
    merged.activate("stage2")
    assert [path for path, _ in ScriptedVLLM.log].count("/reset_prefix_cache") == 3
    with pytest.raises(ServerError, match="no checkpoint for stage4"):
        merged.activate("stage4")


def test_after_a_restart_the_stage_in_place_is_put_back_and_the_base_needs_nothing(merged):
    merged.reapply()
    assert ScriptedVLLM.log == []  # the base is what a fresh server holds
    put_in(merged, "stage2", "/run/merged/stage2")
    merged.activate("stage2")
    ScriptedVLLM.log.clear()
    merged.reapply()
    assert [entry for entry in ScriptedVLLM.log if entry[0] == "/collective_rpc"] == [
        ("/collective_rpc", "/run/merged/stage2")
    ]


def test_make_servable_merges_once_and_keeps_only_the_checkpoints_in_use(merged, monkeypatch):
    import cai.training.adapters

    merges = []
    monkeypatch.setattr(
        cai.training.adapters,
        "merge_adapter",
        lambda base, adapter, out, trust=False: (
            merges.append(out.name) or out.mkdir(parents=True) or out
        ),
    )
    for old in ("stage1", "stage2"):
        (merged.merged_dir / old).mkdir(parents=True)
    merged.make_servable(
        "stage3", merged.merged_dir.parent / "stage3" / "adapter", keep=("stage2",)
    )
    assert (
        merges == ["stage3"]
        and merged.loaded == "stage3"
        and merged.weights["stage3"] == str((merged.merged_dir / "stage3").resolve())
    )
    # stage 1's is gone
    assert sorted(p.name for p in merged.merged_dir.iterdir()) == ["stage2", "stage3"]


def test_the_swap_step_records_the_way_it_served(ctx):
    ctx.server.settings = ServeSettings(model="m", swap="merged")
    ctx.swap = type("Swap", (), {"make_servable": lambda self, name, adapter, keep=(): None})()
    stats = bootstrap.swap(ctx, resolve_stage(*_cpu_stage(2)), "stage1")
    assert stats["swap"] == "merged" and stats["served_as"] == "stage2"


def _cpu_stage(n):
    from cai.config.curriculum import load_curriculum

    cur, _ = load_curriculum(ROOT / "curriculum.yaml")
    return cur, cur.profiles["cpu"], n
