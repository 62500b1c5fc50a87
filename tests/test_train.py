"""Training on the embedded model: ORPO selectable, pairs that don't fit dropped."""

from pathlib import Path

from cai.config.settings import TrainSettings
from cai.serving.model import EMBEDDED, resolve_model
from cai.training.train import fitting_pairs, train_adapter

ROOT = Path(__file__).resolve().parent.parent


def training_bench():
    """bench/training.py as a module: its random Qwen2 model stands in for Qwen2.5's weights."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_training", ROOT / "bench" / "training.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def pair(i, chosen="Blue is calm", rejected="Blue, green, and red"):
    return {
        "prompt": [{"role": "user", "content": f"Name a colour ({i}). Use no commas."}],
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
    }


def test_pairs_that_do_not_fit_or_have_an_empty_side_are_dropped():
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(EMBEDDED, ROOT / "models"))
    pairs = [pair(0), pair(1, rejected=" "), pair(2, chosen="word " * 400)]
    assert [p["prompt"][0]["content"] for p in fitting_pairs(pairs, tokenizer, 128)] == [
        "Name a colour (0). Use no commas."
    ]


def test_orpo_trains_and_saves_an_adapter(tmp_path):
    model = resolve_model(EMBEDDED, ROOT / "models")
    stats = train_adapter(
        model,
        None,
        [pair(i) for i in range(2)],
        tmp_path / "adapter",
        TrainSettings(method="orpo", batch_size=2, max_length=128),
        seed=0,
    )
    assert stats["steps"] == 1 and stats["trainable_params"] > 0
    assert (tmp_path / "adapter" / "adapter_config.json").exists()
    assert not (tmp_path / "adapter" / "ref").exists()


def test_dpo_with_an_sft_weight_adds_the_chosen_sides_likelihood_to_the_loss(tmp_path):
    """At the first step the policy is its reference, so DPO's loss is log 2 whatever the pairs; the
    SFT term adds the chosen side's negative log-likelihood on top of it, and nothing without a
    weight."""
    model = resolve_model(EMBEDDED, ROOT / "models")
    first = {
        w: train_adapter(
            model,
            None,
            [pair(i) for i in range(2)],
            tmp_path / f"adapter-{w}",
            TrainSettings(batch_size=2, max_length=128, sft_weight=w),
            seed=0,
        )["loss_first"]
        for w in (0.0, 1.0)
    }
    assert abs(first[0.0] - 0.6931) < 1e-3
    assert first[1.0] > first[0.0] + 0.5


def test_a_runaway_loss_stops_training_and_saves_no_adapter(tmp_path):
    model = resolve_model(EMBEDDED, ROOT / "models")
    # DPO starts at log(2) = 0.69: with max_loss 0.01 the first logged step counts as runaway
    stats = train_adapter(
        model,
        None,
        [pair(i) for i in range(4)],
        tmp_path / "adapter",
        TrainSettings(batch_size=1, max_length=128, max_loss=0.01),
        seed=0,
    )
    assert stats["diverged"].startswith("loss 0.69") and stats["steps"] == 1
    assert not (tmp_path / "adapter").exists()


def test_a_random_model_of_qwen25s_architecture_trains_and_its_shape_reads_back(tmp_path):
    """bench/training.py's stand-in for Qwen2.5 where no weights can be had: our training runs on
    its architecture, and the memory plan reads the shape it was built with."""
    from cai.training.memory import ModelShape, shape_from_config

    bench = training_bench()
    shape = ModelShape(
        params_b=1.0, layers=24, hidden=64, kv_heads=2, head_dim=16, vocab=50000, intermediate=128
    )
    model = bench.random_qwen2(
        shape, 2, resolve_model(EMBEDDED, ROOT / "models"), tmp_path / "model"
    )
    built = shape_from_config(model)
    assert (
        built.layers,
        built.hidden,
        built.kv_heads,
        built.head_dim,
        built.vocab,
        built.intermediate,
    ) == (2, 64, 2, 16, 50000, 128)
    assert 0 < bench.compute_params(built) < bench.compute_params(shape)
    from transformers import AutoTokenizer

    pairs = [pair(i) for i in range(2)]
    assert bench.pair_tokens(pairs, AutoTokenizer.from_pretrained(model)) > 4 * len(pairs)
    stats = train_adapter(
        str(model),
        None,
        pairs,
        tmp_path / "adapter",
        TrainSettings(batch_size=2, max_length=128),
        seed=0,
    )
    assert stats["steps"] == 1 and stats["trainable_params"] > 0
    assert (tmp_path / "adapter" / "adapter_config.json").exists()


def test_qlora_loads_the_base_in_nf4_with_checkpointing_and_trains(tmp_path):
    """The GPU profile's training path (NF4 base, PEFT's k-bit preparation, gradient checkpointing,
    LoRA on top), run through bitsandbytes' CPU backend on a small random Qwen2 (bitsandbytes is
    in the test extra: missing, this fails rather than skips)."""
    from transformers import AutoModelForCausalLM

    from cai.training.loading import prepare_for_qlora, quantized_loading
    from cai.training.memory import ModelShape

    bench = training_bench()
    shape = ModelShape(
        params_b=1.0, layers=2, hidden=128, kv_heads=2, head_dim=32, vocab=50000, intermediate=256
    )
    model = bench.random_qwen2(
        shape, 2, resolve_model(EMBEDDED, ROOT / "models"), tmp_path / "model"
    )
    settings = TrainSettings(
        quantization="nf4", bf16=True, gradient_checkpointing=True, batch_size=2, max_length=128
    )
    loaded = prepare_for_qlora(
        AutoModelForCausalLM.from_pretrained(model, **quantized_loading(settings)), True
    )
    assert type(loaded.model.layers[0].mlp.down_proj).__name__ == "Linear4bit"
    assert loaded.is_gradient_checkpointing
    del loaded
    stats = train_adapter(
        str(model), None, [pair(i) for i in range(2)], tmp_path / "adapter", settings, seed=0
    )
    assert stats["steps"] == 1 and stats["trainable_params"] > 0 and "diverged" not in stats
    assert (tmp_path / "adapter" / "adapter_config.json").exists()


def test_qlora_without_bitsandbytes_is_one_clear_error(monkeypatch):
    import importlib.util

    import pytest

    from cai.training import TrainingError
    from cai.training.loading import quantized_loading

    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else object()
    )
    with pytest.raises(TrainingError, match=r"quantization 'nf4' needs bitsandbytes"):
        quantized_loading(TrainSettings(quantization="nf4"))
