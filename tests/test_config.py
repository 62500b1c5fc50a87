"""Config validation: good files load, bad ones give one line naming file and field."""

from pathlib import Path

import pytest
import yaml

from cai.config.constitution import load_constitution
from cai.config.curriculum import check_together, load_curriculum, resolve_stage
from cai.config.settings import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path, name, data) -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def shipped(name):
    return yaml.safe_load((ROOT / name).read_text())


def test_shipped_files_load_and_fit_together():
    con, con_sha = load_constitution(ROOT / "constitution.yaml")
    cur, cur_sha = load_curriculum(ROOT / "curriculum.yaml")
    check_together(con, cur, ROOT / "constitution.yaml")
    assert len(cur.stages) == 6 and len(con_sha) == 64 != len(cur_sha) - 1
    assert all(len(s.seeds) >= 20 and len(set(s.seeds)) == len(s.seeds) for s in cur.stages)
    assert (
        cur.profiles["cpu"].guard.mode == "self" and cur.profiles["gpu"].guard.mode == "llama-guard"
    )


def test_stage_settings_merge_defaults_profile_stage(tmp_path):
    data = shipped("curriculum.yaml")
    data["stages"][2]["counts"] = {"samples": 5}
    cur, _ = load_curriculum(write(tmp_path, "c.yaml", data))
    cpu = cur.profiles["cpu"]
    st3, st1 = resolve_stage(cur, cpu, 3), resolve_stage(cur, cpu, 1)
    assert (
        st3.counts.samples == 5
        and st1.counts.samples == data["profiles"]["cpu"]["counts"]["samples"]
    )
    # what the profile leaves, the defaults give
    assert st1.counts.examples_shown == data["defaults"]["counts"]["examples_shown"]
    # untouched fields keep the profile/default value
    assert st3.counts.proposed == st1.counts.proposed
    assert (
        st1.train.learning_rate
        == cpu.train.learning_rate
        != data["defaults"]["train"]["learning_rate"]
    )


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (
            lambda d: d["stages"][0].update(sedes=["x"]),
            "stages.0.sedes: Extra inputs are not permitted",
        ),
        (
            lambda d: d["stages"][1].update(seeds=[]),
            "stages.1.seeds: List should have at least 1 item",
        ),
        (lambda d: d["defaults"]["counts"].update(samples="many"), "defaults.counts.samples"),
        (lambda d: d["stages"].reverse(), "stages must be, in order"),
        (lambda d: d["defaults"]["train"].update(method="ppo"), "defaults.train.method"),
        (lambda d: d.pop("profiles"), "profiles: Field required"),
        (
            lambda d: d["profiles"]["cpu"].update(guard={"mode": "llama-guard"}),
            "profiles.cpu.guard: mode llama-guard needs `model`",
        ),
        (
            lambda d: d["profiles"]["cpu"].update(guard={"mode": "shield"}),
            "profiles.cpu.guard.mode",
        ),
        (lambda d: d["defaults"].update(judge_margin=1.5), "defaults.judge_margin"),
        (
            lambda d: d["defaults"]["pair_filters"].update(min_relevence=0.3),
            "defaults.pair_filters.min_relevence: Extra inputs",
        ),
        (lambda d: d["stages"][3].update(pair_sources=["oracle"]), "stages.3.pair_sources.0"),
        (
            lambda d: d["defaults"]["gate"]["max_drop"].update(relevance="loose"),
            "defaults.gate.max_drop.relevance",
        ),
        (
            lambda d: d["profiles"]["gpu"]["train"].update(quantization="int3"),
            "profiles.gpu.train.quantization",
        ),
        (
            lambda d: d["profiles"]["gpu"]["gpu"].pop("train_tokens_per_s"),
            "profiles.gpu.gpu.train_tokens_per_s: Field required",
        ),
    ],
)
def test_bad_curriculum_names_the_field(tmp_path, mutate, expected):
    data = shipped("curriculum.yaml")
    mutate(data)
    path = write(tmp_path, "curriculum.yaml", data)
    with pytest.raises(ConfigError) as e:
        load_curriculum(path)
    assert str(path) in str(e.value) and expected in str(e.value)


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (
            lambda d: d["principles"].append(dict(d["principles"][0])),
            "duplicate principle id 'follow-the-instruction'",
        ),
        (lambda d: d["principles"][0].update(stages=[7]), "stage 7 is out of range"),
        (lambda d: d["principles"][0].update(stages=[]), "principles.0.stages"),
        (lambda d: d["principles"][0].update(category="nice"), "principles.0.category"),
        (lambda d: d["principles"][0].pop("revision"), "principles.0.revision: Field required"),
        (  # its exemplar's negative answer would never be shown
            lambda d: d["principles"][0]["contrast"].pop("negative"),
            "principles.0.contrast: an exemplar's negative answer is never shown",
        ),
    ],
)
def test_bad_constitution_names_the_field(tmp_path, mutate, expected):
    data = shipped("constitution.yaml")
    mutate(data)
    path = write(tmp_path, "constitution.yaml", data)
    with pytest.raises(ConfigError) as e:
        load_constitution(path)
    assert expected in str(e.value)


def test_malformed_yaml_names_the_line(tmp_path):
    path = write(tmp_path, "constitution.yaml", "principles:\n  - id: a\n    stages: [1, 2\n")
    with pytest.raises(ConfigError, match=r"constitution.yaml: line \d+ is not valid YAML"):
        load_constitution(path)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_curriculum(tmp_path / "nope.yaml")


def test_a_stage_without_principles_is_refused(tmp_path):
    data = shipped("constitution.yaml")
    for p in data["principles"]:
        p["stages"] = [s for s in p["stages"] if s != 4] or [1]
    path = write(tmp_path, "constitution.yaml", data)
    con, _ = load_constitution(path)
    cur, _ = load_curriculum(ROOT / "curriculum.yaml")
    with pytest.raises(ConfigError, match="no principle lists stage 4"):
        check_together(con, cur, path)


def test_the_cpu_default_serves_merged_on_every_core_and_reads_its_verdict_on_the_whole_test_set():
    cur, _ = load_curriculum(ROOT / "curriculum.yaml")
    cpu = cur.profiles["cpu"]
    assert (
        cpu.serve.swap == "merged"
        and cpu.serve.cpu_all_cores
        and cur.profiles["gpu"].serve.swap == "lora"
    )
    st = resolve_stage(cur, cpu, 6)
    # the gate's paired test; every dev item at stages 0 and 6
    assert st.counts.eval_items >= 40 and st.counts.final_eval_items >= 100
    # the verdict: every item of the three
    assert st.suites.test == ["ifeval", "harmbench", "rho_overrefusal"]
    assert st.suites.test_items is None
    assert st.suites.test_max_tokens["ifeval"] == 1280  # as lm-eval's ifeval task generates


def test_the_gate_cannot_read_the_test_set(tmp_path):
    cur = yaml.safe_load((ROOT / "curriculum.yaml").read_text())
    cur["defaults"]["gate"]["max_drop"]["ifeval_prompt_strict"] = 0.1
    path = tmp_path / "curriculum.yaml"
    path.write_text(yaml.safe_dump(cur))
    with pytest.raises(ConfigError, match="unknown score 'ifeval_prompt_strict'"):
        load_curriculum(path)


def test_cpu_unfiltered_is_cpu_without_the_filters():
    cur, _ = load_curriculum(ROOT / "curriculum.yaml")
    full, off = cur.profiles["cpu"].model_dump(), cur.profiles["cpu-unfiltered"].model_dump()
    assert {k for k in full if full[k] != off[k]} == {"pair_filters"}
    assert (
        off["pair_filters"]["enabled"] is False
        and resolve_stage(cur, cur.profiles["cpu-unfiltered"], 1).pair_filters.enabled is False
    )


def test_cpu_dev_is_cpu_without_the_test_set():
    cur, _ = load_curriculum(ROOT / "curriculum.yaml")
    for n in range(1, 7):
        cpu = resolve_stage(cur, cur.profiles["cpu"], n).model_dump()
        dev = resolve_stage(cur, cur.profiles["cpu-dev"], n).model_dump()
        assert cpu["suites"].pop("test") and dev["suites"].pop("test") == []
        assert cpu == dev
