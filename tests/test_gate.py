"""The gate: a stage whose scores regress is not promoted, and the next stage continues from the
last promoted adapter."""

import json

import pytest

import bootstrap
from cai import ROOT
from cai.config.curriculum import load_curriculum, resolve_stage
from cai.config.settings import Gate
from cai.measuring.gate import failures
from cai.measuring.intervals import difference
from cai.store import StageError, write_json_atomic


def score(x):
    return {"score": x, "low": max(0, x - 0.1), "high": min(1, x + 0.1), "n": 100}


def test_a_drop_or_a_rise_beyond_the_allowance_fails():
    gate = Gate(
        max_drop={"instruction_following": 0.1},
        max_rise={"harmlessness_unsafe": 0.05, "over_refusal": 0.1},
    )
    before = {
        "instruction_following": score(0.5),
        "harmlessness_unsafe": score(0.1),
        "over_refusal": score(0.2),
    }
    assert failures({**before, "instruction_following": score(0.45)}, before, gate) == ([], [])
    failed, _ = failures(
        {**before, "instruction_following": score(0.3), "harmlessness_unsafe": score(0.2)},
        before,
        gate,
    )
    assert failed == [
        "instruction_following fell from 0.500 to 0.300 (allowed: drop of 0.1)",
        "harmlessness_unsafe rose from 0.100 to 0.200 (allowed: rise of 0.05)",
    ]
    assert failures({"instruction_following": score(0.5)}, before, gate) == (
        [],
        ["harmlessness_unsafe", "over_refusal"],
    )


def test_the_gate_names_only_scores_that_exist():
    with pytest.raises(ValueError, match="unknown score 'instruction_folowing'"):
        Gate(max_drop={"instruction_folowing": 0.1})
    assert Gate(max_drop={"lm_eval:mmlu:acc": 0.02})


def test_a_refused_stage_is_not_promoted_and_the_next_starts_from_the_last_promoted(
    ctx, monkeypatch
):
    run = ctx.run
    cur, _ = load_curriculum(ROOT / "curriculum.yaml")
    stages = {n: resolve_stage(cur, cur.profiles["cpu"], n) for n in (1, 2, 3)}
    scripted = {1: 0.5, 2: 0.2, 3: 0.55}  # stage 2 regresses
    trained_from = []
    for name in (
        "optimize",
        "propose",
        "respond",
        "contrast",
        "critique",
        "revise",
        "judge",
        "safety_check",
        "measure_quality",
        "swap",
    ):
        monkeypatch.setattr(bootstrap, name, lambda *a, **k: {})
    monkeypatch.setattr(
        bootstrap, "make_pairs", lambda ctx, st, tasks: {"pairs": st.train.min_pairs}
    )
    monkeypatch.setattr(
        bootstrap, "train", lambda ctx, st, previous: trained_from.append(previous) or {}
    )

    def evaluate(ctx, st, n, served, reference):
        scores = {
            "instruction_following": score(scripted[st.number]),
            "harmlessness_unsafe": score(0.0),
            "over_refusal": score(0.1),
        }
        write_json_atomic(ctx.run.stage_dir(st.number) / "eval.json", {"model": served, **scores})
        return {}

    monkeypatch.setattr(bootstrap, "evaluate", evaluate)
    write_json_atomic(
        run.stage_dir(0) / "eval.json",
        {
            "instruction_following": score(0.4),
            "harmlessness_unsafe": score(0.0),
            "over_refusal": score(0.1),
        },
    )
    policy = "stage0"
    for n in (1, 2, 3):
        policy = bootstrap.run_stage(ctx, stages[n], policy)
    assert trained_from == ["stage0", "stage1", "stage1"] and policy == "stage3"
    manifest = json.loads(run.manifest_path.read_text())
    assert [manifest["stages"][f"stage{n}"]["promoted"] for n in (1, 2, 3)] == [True, False, True]
    assert manifest["stages"]["stage2"]["gate"]["failed"] == [
        "instruction_following fell from 0.500 to 0.200 (allowed: drop of 0.1) (against stage1)",
        "instruction_following fell from 0.400 to 0.200 (allowed: drop of 0.1) (against stage0)",
    ]
    assert manifest["stages"]["stage3"]["gate"]["against"] == "stage1"


def test_a_gate_set_to_stop_ends_the_run_with_the_reason(ctx):
    run = ctx.run
    cur, _ = load_curriculum(ROOT / "curriculum.yaml")
    st = resolve_stage(cur, cur.profiles["cpu"], 1)
    st = st.model_copy(update={"gate": st.gate.model_copy(update={"on_fail": "stop"})})
    write_json_atomic(run.stage_dir(0) / "eval.json", {"instruction_following": score(0.6)})
    write_json_atomic(run.stage_dir(1) / "eval.json", {"instruction_following": score(0.3)})
    with pytest.raises(StageError, match="stage1: gate: not promoted .instruction_following fell"):
        bootstrap.gate(ctx, st, "stage0")
    assert json.loads(run.manifest_path.read_text())["stages"]["stage1"]["promoted"] is False


def test_a_stage_whose_training_diverged_is_not_promoted_and_the_policy_stays(ctx, monkeypatch):
    cur, _ = load_curriculum(ROOT / "curriculum.yaml")
    for name in (
        "optimize",
        "propose",
        "respond",
        "contrast",
        "critique",
        "revise",
        "judge",
        "safety_check",
        "measure_quality",
    ):
        monkeypatch.setattr(bootstrap, name, lambda *a, **k: {})
    monkeypatch.setattr(
        bootstrap, "make_pairs", lambda ctx, st, tasks: {"pairs": st.train.min_pairs}
    )
    monkeypatch.setattr(
        bootstrap, "train", lambda ctx, st, previous: {"diverged": "loss nan at step 3"}
    )
    monkeypatch.setattr(
        bootstrap, "swap", lambda *a: pytest.fail("a diverged adapter is not served")
    )
    assert (
        bootstrap.run_stage(ctx, resolve_stage(cur, cur.profiles["cpu"], 2), "stage1") == "stage1"
    )
    manifest = json.loads(ctx.run.manifest_path.read_text())["stages"]["stage2"]
    assert manifest["promoted"] is False and manifest["gate"]["failed"] == [
        "training diverged: loss nan at step 3"
    ]
    assert manifest["steps"]["gate"]["skipped"] == "training diverged"


def test_a_stage_with_too_few_pairs_is_not_trained_and_the_policy_stays(ctx, monkeypatch):
    cur, _ = load_curriculum(ROOT / "curriculum.yaml")
    for name in (
        "optimize",
        "propose",
        "respond",
        "contrast",
        "critique",
        "revise",
        "judge",
        "safety_check",
        "measure_quality",
    ):
        monkeypatch.setattr(bootstrap, name, lambda *a, **k: {})
    st = resolve_stage(cur, cur.profiles["cpu"], 2)
    monkeypatch.setattr(
        bootstrap,
        "make_pairs",
        lambda *a: {"pairs": st.train.min_pairs - 1, "dropped_filter_relevance": 4},
    )
    monkeypatch.setattr(
        bootstrap, "train", lambda *a: pytest.fail("too few pairs to move the model")
    )
    assert bootstrap.run_stage(ctx, st, "stage1") == "stage1"
    manifest = json.loads(ctx.run.manifest_path.read_text())["stages"]["stage2"]
    assert manifest["promoted"] is False and st.train.min_pairs == 16
    assert manifest["gate"]["failed"] == ["too few pairs: 15 pairs passed (train.min_pairs is 16)"]
    assert {manifest["steps"][k]["skipped"] for k in ("train", "swap", "evaluate", "gate")} == {
        "too few pairs"
    }


def test_compliance_bought_with_relevance_is_not_promoted(ctx):
    """The measured hack (DESIGN.md): compliance up, relevance down beyond its interval."""
    cur, _ = load_curriculum(ROOT / "curriculum.yaml")
    st = resolve_stage(cur, cur.profiles["cpu"], 2)
    base = {
        "instruction_following": score(0.145),
        "relevance": {"score": 0.595, "low": 0.567, "high": 0.623, "n": 200},
        "off_topic": score(0.12),
    }
    write_json_atomic(ctx.run.stage_dir(0) / "eval.json", base)
    write_json_atomic(ctx.run.stage_dir(1) / "eval.json", base)
    write_json_atomic(
        ctx.run.stage_dir(2) / "eval.json",
        {
            "instruction_following": score(0.46),
            "relevance": {"score": 0.511, "low": 0.470, "high": 0.552, "n": 200},
            "off_topic": score(0.32),
        },
    )
    assert bootstrap.gate(ctx, st, "stage1")["promoted"] is False
    failed = ctx.run.stage(2)["gate"]["failed"]
    assert (
        "relevance fell from 0.595 to 0.511 (allowed: within the reference's interval [0.567, "
        "0.623]) (against stage1)" in failed
    )
    assert any(f.startswith("off_topic rose from 0.120 to 0.320") for f in failed)
    assert not any(f.startswith("instruction_following") for f in failed)
    # a drop inside the reference's interval passes
    write_json_atomic(
        ctx.run.stage_dir(3) / "eval.json",
        {**base, "relevance": {"score": 0.580, "low": 0.55, "high": 0.61, "n": 200}},
    )
    assert (
        bootstrap.gate(ctx, resolve_stage(cur, cur.profiles["cpu"], 3), "stage1")["promoted"]
        is True
    )


def test_small_drops_that_each_pass_cannot_add_up_past_the_base(ctx):
    cur, _ = load_curriculum(ROOT / "curriculum.yaml")
    st = resolve_stage(cur, cur.profiles["cpu"], 3)
    write_json_atomic(ctx.run.stage_dir(0) / "eval.json", {"instruction_following": score(0.5)})
    # promoted: -0.08
    write_json_atomic(ctx.run.stage_dir(2) / "eval.json", {"instruction_following": score(0.42)})
    # -0.08 again
    write_json_atomic(ctx.run.stage_dir(3) / "eval.json", {"instruction_following": score(0.34)})
    assert bootstrap.gate(ctx, st, "stage2")["promoted"] is False
    assert ctx.run.stage(3)["gate"]["failed"] == [
        "instruction_following fell from 0.500 to 0.340 (allowed: drop of 0.1) (against stage0)"
    ]


def write_relevance(run, n, values, suites=("instruction_following", "helpfulness")):
    """A stage's per-item answers on the quality suites' items, as evaluate records them."""
    for suite in suites:
        rows = [
            {
                "id": i,
                "quality": {
                    "relevance": v,
                    "repetition": 0.0,
                    "words": 50,
                    "boilerplate": False,
                    "empty": False,
                },
            }
            for i, v in enumerate(values)
        ]
        folder = run.stage_dir(n) / "eval"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{suite}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_with_the_items_on_record_the_gate_reads_relevance_paired_item_by_item(ctx):
    """A drop every item shares is real though small; a drop some items gain back is noise."""
    cur, _ = load_curriculum(ROOT / "curriculum.yaml")
    st = resolve_stage(cur, cur.profiles["cpu"], 2)
    # 0.595 on average, its interval about +/-0.02
    before = [0.5 + 0.01 * (i % 20) for i in range(40)]
    reference = {"relevance": {"score": 0.595, "low": 0.577, "high": 0.613, "n": 80}}
    for n in (0, 1):
        write_json_atomic(ctx.run.stage_dir(n) / "eval.json", reference)
        write_relevance(ctx.run, n, before)
    # every item 0.01 lower: inside the reference's interval, but the paired interval is all below
    # zero
    write_json_atomic(
        ctx.run.stage_dir(2) / "eval.json",
        {"relevance": {"score": 0.585, "low": 0.567, "high": 0.603, "n": 80}},
    )
    write_relevance(ctx.run, 2, [v - 0.01 for v in before])
    assert bootstrap.gate(ctx, st, "stage1")["promoted"] is False
    assert ctx.run.stage(2)["gate"]["failed"][0] == (
        "relevance fell from 0.595 to 0.585 (allowed: no drop beyond noise; paired difference "
        "-0.010 [-0.010, -0.010] over 80 items) (against stage1)"
    )
    # 0.03 lower on average, below the reference's interval, but half the items rose: the paired
    # interval holds zero
    write_json_atomic(
        ctx.run.stage_dir(3) / "eval.json",
        {"relevance": {"score": 0.565, "low": 0.52, "high": 0.61, "n": 80}},
    )
    write_relevance(ctx.run, 3, [v + (0.24 if i % 2 else -0.30) for i, v in enumerate(before)])
    assert (
        bootstrap.gate(ctx, resolve_stage(cur, cur.profiles["cpu"], 3), "stage1")["promoted"]
        is True
    )


def test_the_quality_suites_read_paired_where_the_profile_runs_one_of_their_two_suites(ctx):
    """The cpu profile leaves helpfulness out: its missing records must not make relevance
    unpaired."""
    before = [0.5 + 0.01 * (i % 20) for i in range(40)]
    write_relevance(ctx.run, 0, before, suites=("instruction_following",))
    write_relevance(ctx.run, 1, [v - 0.01 for v in before], suites=("instruction_following",))
    wide = {"score": 0.0, "low": -0.5, "high": 0.5, "n": 40}
    diff, how = difference("relevance", (ctx.run, 1), (ctx.run, 0), (wide, wide))
    assert how == "paired" and diff["score"] == pytest.approx(-0.01) and diff["high"] < 0
