"""Rerunning one stage under a new constitution: upstream shared unchanged, downstream
recomputed, the original run byte for byte as it was."""

import hashlib
import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from dspy.utils.dummies import DummyLM

import bootstrap
from cai.config import PairFilters, load_constitution, load_curriculum, resolve_stage
from cai.lm import Endpoint
from cai.serve import ServeSettings
from cai.store import Run, write_json_atomic
from programs.adapter import PlainAdapter

ROOT = bootstrap.ROOT


def tree(root):
    """Every file under root (links followed) with its sha256."""
    files = [Path(d) / f for d, _, names in os.walk(root, followlinks=True) for f in names]
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(files)}


def run_stages(run, constitution, stages, monkeypatch):
    """Stages through the real step functions on a scripted LM; training and serving stubbed."""
    answers = {"Response A:\na fixed answer": "A", "Response B:\na fixed answer": "B",  # the judge prefers the revision
               "Kind:": "Describe how a sailboat can move against the wind.", "Critique request": "It breaks the rule.",
               "Revision request": "a fixed answer without any commas at all", "": "an answer, with commas"}
    monkeypatch.setattr(Endpoint, "lm", lambda self, sampling, seed: DummyLM({k: {"out": v} for k, v in answers.items()}, adapter=PlainAdapter()))
    monkeypatch.setattr(bootstrap, "train", lambda ctx, st, previous: {})
    monkeypatch.setattr(bootstrap, "trusted_sources", lambda ctx, st: (["best_of_n", "revision", "judge"], {}))  # the scripted judge decides
    monkeypatch.setattr(bootstrap, "swap", lambda ctx, st: {})
    monkeypatch.setattr(bootstrap, "evaluate", lambda ctx, st, served, reference: write_json_atomic(
        ctx.run.stage_dir(st.number) / "eval.json", {"instruction_following": {"score": 0.5, "low": 0.3, "high": 0.7, "n": 20}}) or {})
    ctx = bootstrap.Context(run, SimpleNamespace(api_base="http://unused", api_key="k", settings=ServeSettings(model="m")), constitution, "m", "plain", 2, 30, 0, False)
    ctx.guard = ctx.guard.model_copy(update={"mode": "off"})
    cur, _ = load_curriculum(ROOT / "curriculum.yaml")
    policy = "stage0"
    for n in stages:
        st = resolve_stage(cur, cur.profiles["quick"], n)
        st = st.model_copy(update={"counts": st.counts.model_copy(update={"proposed": 2, "seeds_used": 2}), "judge_margin": 0.0,
                                   "pair_filters": PairFilters(enabled=False),  # scripted answers are off topic by design
                                   "optimize": st.optimize.model_copy(update={"trainset": 1, "devset": 1})})
        policy = bootstrap.run_stage(ctx, st, policy)


@pytest.fixture
def original(tmp_path, monkeypatch):
    con, con_sha = load_constitution(ROOT / "constitution.yaml")
    run = Run(tmp_path / "orig")
    config = {"constitution_sha256": con_sha, "curriculum_sha256": "c", "profile": "quick", "seed": 0, "model": "m"}
    run.manifest = bootstrap.new_manifest(run.root, config, {"constitution": con.model_dump(), "curriculum": {}})
    write_json_atomic(run.stage_dir(0) / "eval.json", {"instruction_following": {"score": 0.4, "low": 0.2, "high": 0.6, "n": 20}})
    run.mark_done(0, "evaluate", 1.0)
    run_stages(run, con, (1, 2), monkeypatch)
    return run, config


def new_constitution(tmp_path, stage):
    data = yaml.safe_load((ROOT / "constitution.yaml").read_text())
    for p in data["principles"]:
        if stage in p["stages"]:
            p["critique"] = "Say which words of the response a child would not understand."
    path = tmp_path / "new.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return load_constitution(path)


def test_the_rerun_shares_upstream_recomputes_downstream_and_leaves_the_original_alone(original, tmp_path, monkeypatch):
    run, config = original
    before = tree(run.root)
    con, sha = new_constitution(tmp_path, 2)
    folder = bootstrap.rerun_with_constitution(run, 2, con, {**config, "constitution_sha256": sha}, {"constitution": con.model_dump()})
    assert folder.name == f"orig-constitution-{sha[:8]}"
    derived = Run(folder)
    assert derived.manifest["derived_from"]["constitution_sha256"] == config["constitution_sha256"] != sha
    assert derived.step_done(1, "gate") and derived.step_done(2, "respond") and not derived.step_done(2, "critique")
    run_stages(derived, con, (2,), monkeypatch)

    after = tree(derived.root)
    for shared in ("stage1/pairs.jsonl", "stage2/tasks.jsonl", "stage2/responses.jsonl", "stage2/programs/propose.json"):
        assert after[shared] == before[shared], shared  # same bytes, by link
    assert (derived.root / "stage2" / "tasks.jsonl").stat().st_ino == (run.root / "stage2" / "tasks.jsonl").stat().st_ino
    assert after["stage2/critiques.jsonl"] != before["stage2/critiques.jsonl"]
    critiques = [json.loads(line) for line in (derived.root / "stage2" / "critiques.jsonl").read_text().splitlines()]
    assert all("a child would not understand" in c["messages"][-1]["content"] for c in critiques)
    from cai.report import write_report

    report = write_report(Run(derived.root)).read_text()  # side by side with the run it came from
    assert "## Against `orig`" in report and "| instruction_following | 0.50 [0.30, 0.70] | 0.50 [0.30, 0.70] |" in report
    assert tree(run.root) == before  # the original, byte for byte


def test_a_constitution_that_changes_nothing_for_the_stage_reruns_nothing(original, tmp_path):
    run, config = original
    data = yaml.safe_load((ROOT / "constitution.yaml").read_text())
    data["principles"].append({"id": "only-for-stage-five", "category": "helpful", "stages": [5],
                               "critique": "Is the rewrite shorter than the text it rewrites?", "revision": "Make it shorter."})
    path = tmp_path / "stage5-only.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    con, sha = load_constitution(path)
    assert sha != config["constitution_sha256"]
    assert bootstrap.rerun_with_constitution(run, 2, con, {**config, "constitution_sha256": sha}, {}) is None
    assert not (run.root.parent / f"orig-constitution-{sha[:8]}").exists()
