"""The GPU profile's arithmetic, checked on the CPU: vLLM's command line per precision, the
memory plan for Qwen2.5-32B on 80 GB, the cost plan, and the budget's stop."""

import json
import subprocess
import sys

import pytest

from cai import ROOT
from cai.config.constitution import load_constitution
from cai.config.curriculum import load_curriculum, resolve_stage
from cai.run import budget, launch
from cai.serving.server import ServeSettings, command_line
from cai.training import memory

QWEN_32B = memory.ModelShape(32.76, 64, 5120, 8, 128, 152064, 27648)


@pytest.mark.parametrize(
    "quantization,flags",
    [
        ("none", []),
        ("fp8", ["--quantization", "fp8"]),
        ("bitsandbytes", ["--quantization", "bitsandbytes"]),
    ],
)
def test_the_vllm_command_line_for_each_precision(quantization, flags):
    cmd = command_line(
        ServeSettings(
            model="Qwen/Qwen2.5-32B", quantization=quantization, sleep_while_training=True
        ),
        8000,
        "k",
    )
    found = (
        cmd[cmd.index("--quantization") : cmd.index("--quantization") + 2]
        if "--quantization" in cmd
        else []
    )
    assert found == flags and cmd[cmd.index("--dtype") + 1] == "bfloat16"
    assert "--enable-sleep-mode" in cmd  # the GPU is lent to training while the server sleeps
    # the CPU default: no sleep mode
    assert "--enable-sleep-mode" not in command_line(ServeSettings(model="m"), 8000, "k")


@pytest.mark.parametrize(
    "quantization,weights_gib,in_flight",
    [("none", 61.0, 25), ("fp8", 32.0, 64), ("bitsandbytes", 20.8, 64)],
)
def test_the_memory_plan_for_the_32b_policy_server_on_80_gb(quantization, weights_gib, in_flight):
    job = memory.serving(QWEN_32B, quantization, 80, 0.85, 4096, 64, 640)
    # 61 GiB in bf16 as measured (DESIGN.md)
    assert job.parts["weights"] == pytest.approx(weights_gib, abs=0.2)
    assert job.fits and f"{in_flight} of 64 requests in flight" in job.note


def test_the_memory_plan_for_training_the_32b_matches_the_measured_peaks_and_refuses_bf16_on_80_gb():
    # DESIGN.md, one H200: bf16 LoRA at 8 x 1024 tokens peaked at 84 GiB; NF4 at 4 x 1024 at 35.9
    # GiB
    assert memory.training(QWEN_32B, "none", 141, 4, 1024, 16, True).total == pytest.approx(
        84, rel=0.05
    )
    assert memory.training(QWEN_32B, "nf4", 141, 2, 1024, 16, True).total == pytest.approx(
        35.9, rel=0.05
    )
    bf16 = memory.training(QWEN_32B, "none", 80, 8, 512, 16, True)
    assert not bf16.fits and "train.quantization: nf4" in memory.advice(bf16)
    assert memory.training(QWEN_32B, "nf4", 80, 8, 512, 16, True).fits


def test_the_shape_of_a_model_folder_comes_from_its_config(tmp_path):
    config = {
        "hidden_size": 576,
        "num_hidden_layers": 30,
        "vocab_size": 49152,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "intermediate_size": 1536,
        "tie_word_embeddings": True,
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    shape = memory.shape_from_config(tmp_path)
    assert shape.params_b == pytest.approx(0.1346, abs=0.001)  # SmolLM2-135M: 134.5M parameters
    assert shape.head_dim == 64 and shape.kv_heads == 3 and shape.tied_embeddings


def test_a_profile_that_does_not_fit_stops_before_anything_is_written(tmp_path):
    cur, _ = load_curriculum(ROOT / "curriculum.yaml")
    gpu = cur.profiles["gpu"]
    stages = {n: resolve_stage(cur, gpu, n) for n in range(1, 7)}
    launch.check_memory(gpu, stages, gpu.model, "curriculum.yaml: profiles.gpu")  # as shipped: fits
    bf16 = {
        n: st.model_copy(update={"train": st.train.model_copy(update={"quantization": "none"})})
        for n, st in stages.items()
    }
    with pytest.raises(
        launch.ConfigError,
        match=r"profiles.gpu: memory plan: training: .* DOES NOT FIT. To fit: train with `train.quantization: nf4`",
    ):
        launch.check_memory(gpu, bf16, gpu.model, "curriculum.yaml: profiles.gpu")


def test_the_cost_plan_counts_each_steps_work():
    cur, _ = load_curriculum(ROOT / "curriculum.yaml")
    st = resolve_stage(cur, cur.profiles["gpu"], 1)
    work = budget.stage_work(st)
    tasks = st.counts.seeds_used + st.counts.proposed
    assert (
        work["respond"]["generated"] == tasks * st.counts.samples * st.generation.respond.max_tokens
    )
    assert work["judge"]["generated"] == 0  # stage 1 does not use the judge
    # each contrasting principle's requests, both sides, each sample, at the principle's cap
    con, _ = load_constitution(ROOT / "constitution.yaml")
    caps = budget.contrast_caps(con, {1: st})[1]
    assert len(caps) == sum(bool(p.contrast) for p in con.for_stage(1))
    with_contrasts = budget.stage_work(st, caps)
    c = st.counts
    assert with_contrasts["contrast"]["generated"] == c.contrasts * 2 * c.contrast_samples * sum(
        caps
    )
    assert with_contrasts["train"]["trained"] > work["train"]["trained"]  # their pairs trained too
    assert (
        budget.stage_work(resolve_stage(cur, cur.profiles["gpu"], 4))["judge"]["generated"]
        == 2 * tasks * st.generation.judge.max_tokens
    )
    speed = budget.Throughput(1 / 1000, 0.0, 1 / 500, "test")
    hours = budget.stage_hours(
        {"respond": {"generated": 3_600_000}, "train": {"trained": 900_000}}, speed, 0
    )
    assert hours == pytest.approx(1 + 900_000 * budget.DPO_WORK / 500 / 3600)


def test_plan_prints_tokens_hours_dollars_and_memory():
    result = subprocess.run(
        [sys.executable, str(ROOT / "bootstrap.py"), "plan", "--gpu-price-per-hour", "2"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "at $2.00 per GPU-hour" in result.stdout and "| all |" in result.stdout
    assert "training: weights" in result.stdout and "DOES NOT FIT" not in result.stdout
    refused = subprocess.run(
        [sys.executable, str(ROOT / "bootstrap.py"), "plan", "--profile", "cpu"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode == 2 and "profiles.cpu: has no gpu section" in refused.stderr


def test_the_budget_stops_at_a_step_boundary_and_a_larger_one_goes_on(ctx):
    ctx.gpus, ctx.budget_usd, ctx.gpu_price = 1, 1.0, 2.0
    ctx.step(1, "propose", lambda: {"kept": 3})
    ctx.run.stage(1)["steps"]["propose"]["gpu_hours"] = 0.6  # $1.20 spent
    before = json.loads(ctx.run.manifest_path.read_text())
    with pytest.raises(
        budget.BudgetSpent,
        match=r"\$1.20 of \$1.00 spent .* stopped before stage1 respond. Re-run .* larger --budget-usd",
    ):
        ctx.step(1, "respond", lambda: pytest.fail("ran past the budget"))
    assert json.loads(ctx.run.manifest_path.read_text()) == before  # nothing written
    ctx.budget_usd = 5.0
    ctx.step(1, "respond", lambda: {"ok": 1})
    assert (
        ctx.run.step_done(1, "respond") and ctx.run.stage(1)["steps"]["respond"]["gpu_hours"] >= 0
    )
    with pytest.raises(budget.BudgetSpent, match="stage2 is estimated at up to"):
        budget.check(ctx.run.manifest, 5.0, 2.0, "stage2", next_usd=4.0)
