"""Rerunning one stage under a new constitution or new stage settings: upstream shared
unchanged, downstream recomputed from the first step the change reaches, the original run
byte for byte as it was."""

import hashlib
import json
import os
from collections import Counter
from pathlib import Path

import pytest
import yaml
from conftest import scripted_context
from dspy.utils.dummies import DummyLM

import bootstrap
from cai import ROOT
from cai.config.constitution import load_constitution
from cai.config.curriculum import load_curriculum, resolve_stage
from cai.config.settings import ConfigError, PairFilters
from cai.run import launch
from cai.run.rerun import STEPS, first_step_reached, rerun_stage
from cai.serving.lm import Endpoint
from cai.store import Run, write_json_atomic
from programs.adapter import PlainAdapter


def tree(root):
    """Every file under root (links followed) with its sha256."""
    files = [Path(d) / f for d, _, names in os.walk(root, followlinks=True) for f in names]
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(files)
    }


def rerun(run, stage, config, constitution=None, curriculum=None):
    con = constitution or load_constitution(ROOT / "constitution.yaml")[0]
    cur = curriculum or load_curriculum(ROOT / "curriculum.yaml")[0]
    return rerun_stage(
        run,
        stage,
        con,
        cur,
        config["profile"],
        launch.new_manifest(run.root, config, {"constitution": con.model_dump()}),
    )


def run_stages(run, constitution, stages, monkeypatch, filters=PairFilters(enabled=False)):
    """Stages through the real step functions on a scripted LM; training and serving stubbed."""
    # the judge prefers the revision
    answers = {
        "Response A:\na fixed answer": "A",
        "Response B:\na fixed answer": "B",
        "Kind:": "Describe how a sailboat can move against the wind.",
        "Critique request": "It breaks the rule.",
        "Revision request": "a fixed answer without any commas at all",
        "": "an answer, with commas",
    }
    monkeypatch.setattr(
        Endpoint,
        "lm",
        lambda self, sampling, seed: DummyLM(
            {k: {"out": v} for k, v in answers.items()}, adapter=PlainAdapter()
        ),
    )
    monkeypatch.setattr(bootstrap, "train", lambda ctx, st, previous: {})
    # the scripted judge decides
    monkeypatch.setattr(
        bootstrap, "trusted_sources", lambda st, optimized: (["best_of_n", "revision", "judge"], {})
    )
    monkeypatch.setattr(bootstrap, "swap", lambda ctx, st, policy: {})
    monkeypatch.setattr(
        bootstrap,
        "evaluate",
        lambda ctx, st, n, served, reference: (
            write_json_atomic(
                ctx.run.stage_dir(st.number) / "eval.json",
                {"instruction_following": {"score": 0.5, "low": 0.3, "high": 0.7, "n": 20}},
            )
            or {}
        ),
    )
    ctx = scripted_context(run, constitution, model="m", concurrency=2)
    ctx.guard = ctx.guard.model_copy(update={"mode": "off"})
    cur, _ = load_curriculum(ROOT / "curriculum.yaml")
    policy = "stage0"
    for n in stages:
        st = resolve_stage(cur, cur.profiles["cpu"], n)
        st = st.model_copy(
            update={
                "counts": st.counts.model_copy(update={"proposed": 2, "seeds_used": 2}),
                "judge_margin": 0.0,
                "train": st.train.model_copy(update={"min_pairs": 1}),
                # scripted answers are off topic by design: off unless asked
                "pair_filters": filters,
                "optimize": st.optimize.model_copy(
                    update={"trainset": 1, "devset": 1, "call_share": 1.0}
                ),
            }
        )
        policy = bootstrap.run_stage(ctx, st, policy)


@pytest.fixture
def original(tmp_path, monkeypatch):
    con, con_sha = load_constitution(ROOT / "constitution.yaml")
    cur, cur_sha = load_curriculum(ROOT / "curriculum.yaml")
    run = Run(tmp_path / "orig")
    config = {
        "constitution_sha256": con_sha,
        "curriculum_sha256": cur_sha,
        "profile": "cpu",
        "seed": 0,
        "model": "m",
    }
    run.manifest = launch.new_manifest(
        run.root,
        config,
        {"constitution": con.model_dump(), "curriculum": cur.model_dump(exclude_unset=True)},
    )
    write_json_atomic(
        run.stage_dir(0) / "eval.json",
        {"instruction_following": {"score": 0.4, "low": 0.2, "high": 0.6, "n": 20}},
    )
    run.mark_done(0, "evaluate", 1.0)
    run_stages(run, con, (1, 2), monkeypatch)
    return run, config


def edited(tmp_path, name, edit):
    """A copy of the project's `name` (constitution.yaml or curriculum.yaml) after `edit` of its
    data."""
    data = yaml.safe_load((ROOT / name).read_text())
    edit(data)
    path = tmp_path / f"edited-{name}"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def new_constitution(tmp_path, stage):
    def edit(data):
        for p in data["principles"]:
            if stage in p["stages"]:
                p["critique"] = "Say which words of the response a child would not understand."

    return load_constitution(edited(tmp_path, "constitution.yaml", edit))


def changed_curriculum(tmp_path, edit):
    return load_curriculum(edited(tmp_path, "curriculum.yaml", edit))


def test_the_rerun_shares_upstream_recomputes_downstream_and_leaves_the_original_alone(
    original, tmp_path, monkeypatch
):
    run, config = original
    before = tree(run.root)
    con, sha = new_constitution(tmp_path, 2)
    folder = rerun(run, 2, {**config, "constitution_sha256": sha}, constitution=con)
    assert folder.name == f"orig-stage2-constitution-{sha[:8]}"
    derived = Run(folder)
    assert derived.manifest["run"] == folder.name
    assert (
        derived.manifest["derived_from"]["constitution_sha256"]
        == config["constitution_sha256"]
        != sha
    )
    assert derived.manifest["derived_from"]["changed"] == ["constitution"]
    assert (
        derived.step_done(1, "gate")
        and derived.step_done(2, "respond")
        and not derived.step_done(2, "contrast")
    )
    run_stages(derived, con, (2,), monkeypatch)

    after = tree(derived.root)
    for shared in (
        "stage1/pairs.jsonl",
        "stage2/tasks.jsonl",
        "stage2/responses.jsonl",
        "stage2/programs/propose.json",
    ):
        assert after[shared] == before[shared], shared  # same bytes, by link
    assert (derived.root / "stage2" / "tasks.jsonl").stat().st_ino == (
        run.root / "stage2" / "tasks.jsonl"
    ).stat().st_ino
    assert after["stage2/critiques.jsonl"] != before["stage2/critiques.jsonl"]
    critiques = [
        json.loads(line)
        for line in (derived.root / "stage2" / "critiques.jsonl").read_text().splitlines()
    ]
    assert all("a child would not understand" in c["messages"][-1]["content"] for c in critiques)
    from cai.run.report import write_report

    report = write_report(Run(derived.root)).read_text()  # side by side with the run it came from
    assert (
        "## Against `orig`" in report
        and "| instruction_following | 0.50 [0.30, 0.70] | 0.50 [0.30, 0.70] |" in report
    )
    assert tree(run.root) == before  # the original, byte for byte


def test_a_constitution_that_changes_nothing_for_the_stage_reruns_nothing(original, tmp_path):
    run, config = original
    con, sha = load_constitution(
        edited(
            tmp_path,
            "constitution.yaml",
            lambda d: d["principles"].append(
                {
                    "id": "only-for-stage-five",
                    "category": "helpful",
                    "stages": [5],
                    "critique": "Is the rewrite shorter than the text it rewrites?",
                    "revision": "Make it shorter.",
                }
            ),
        )
    )
    assert sha != config["constitution_sha256"]
    assert rerun(run, 2, {**config, "constitution_sha256": sha}, constitution=con) is None
    assert not (run.root.parent / f"orig-stage2-constitution-{sha[:8]}").exists()


def test_changed_pair_filters_rerun_the_stage_from_the_guard_on_the_same_samples(
    original, tmp_path, monkeypatch
):
    run, config = original
    before = tree(run.root)
    cur, sha = changed_curriculum(
        tmp_path,
        lambda d: d["profiles"]["cpu"].update(
            pair_filters={"enabled": False, "min_relevance": 0.9}
        ),
    )
    folder = rerun(run, 2, {**config, "curriculum_sha256": sha}, curriculum=cur)
    assert folder.name == f"orig-stage2-curriculum-{sha[:8]}"
    derived = Run(folder)
    origin = derived.manifest["derived_from"]
    # the guard classifies the candidate pairs, which the filters decide: it is the first step
    # reached
    assert origin["changed"] == ["curriculum: pair_filters"] and origin["first_step"] == "guard"
    assert [k for k in STEPS if derived.step_done(2, k)] == [
        "optimize",
        "propose",
        "respond",
        "contrast",
        "critique",
        "revise",
        "judge",
        "quality",
    ]
    for shared in (
        "stage2/responses.jsonl",
        "stage2/contrasts.jsonl",
        "stage2/revisions.jsonl",
        "stage2/quality.jsonl",
        "stage2/programs/propose.json",
        "stage2/programs/contrast-avoid-harm.json",
    ):
        assert (derived.root / shared).stat().st_ino == (run.root / shared).stat().st_ino, shared
    assert not (derived.root / "stage2" / "pairs.jsonl").exists()
    run_stages(
        derived,
        load_constitution(ROOT / "constitution.yaml")[0],
        (2,),
        monkeypatch,
        filters=PairFilters(min_relevance=0.9),
    )
    assert derived.step_done(2, "gate")
    # strict filters: fewer pairs
    assert derived.stage(2)["steps"]["pairs"]["pairs"] < run.stage(2)["steps"]["pairs"]["pairs"]
    assert tree(run.root) == before


def test_a_changed_gate_shares_everything_up_to_the_gate(original, tmp_path):
    run, config = original
    cur, sha = changed_curriculum(
        tmp_path, lambda d: d["stages"][1].update(gate={"max_drop": {"instruction_following": 0.5}})
    )
    derived = Run(rerun(run, 2, {**config, "curriculum_sha256": sha}, curriculum=cur))
    assert derived.step_done(2, "evaluate") and not derived.step_done(2, "gate")
    assert (derived.root / "stage2" / "eval.json").exists()
    # stage 1's gate is unchanged
    assert rerun(run, 1, {**config, "curriculum_sha256": sha}, curriculum=cur) is None


def test_first_step_reached():
    assert first_step_reached(["suites", "train"], False) == "train"
    # the constitution is first read by the contrast step
    assert first_step_reached(["gate"], True) == "contrast"
    assert first_step_reached(["counts"], True) == "optimize"
    assert first_step_reached([], False) is None


def test_a_changed_model_or_server_is_a_new_run_not_a_rerun(original, tmp_path):
    run, config = original
    cur, sha = changed_curriculum(
        tmp_path, lambda d: d["profiles"]["cpu"]["serve"].update(max_model_len=1024)
    )
    with pytest.raises(ConfigError, match=r"profiles\.cpu\.serve"):
        rerun(run, 2, {**config, "curriculum_sha256": sha}, curriculum=cur)


def test_a_profile_that_differs_only_in_stage_settings_reruns_the_stage(original, tmp_path):
    run, config = original
    cur, sha = changed_curriculum(
        tmp_path,
        lambda d: d["profiles"].update(
            {"cpu-unfiltered": {**d["profiles"]["cpu"], "pair_filters": {"enabled": False}}}
        ),
    )
    folder = rerun(
        run, 2, {**config, "curriculum_sha256": sha, "profile": "cpu-unfiltered"}, curriculum=cur
    )
    assert folder.name == f"orig-stage2-cpu-unfiltered-curriculum-{sha[:8]}"
    origin = Run(folder).manifest["derived_from"]
    assert (
        origin["profile"] == "cpu"
        and origin["changed"] == ["curriculum: pair_filters"]
        and origin["first_step"] == "guard"
    )


def test_the_shipped_constitutions_are_constitution_yaml_plus_their_added_principle():
    from cai.config.constitution import load_constitution

    base, _ = load_constitution(ROOT / "constitution.yaml")
    for path in sorted((ROOT / "constitutions").glob("*.yaml")):
        con, _ = load_constitution(path)
        kept = [p for p in con.principles if p.id in {q.id for q in base.principles}]
        assert kept == base.principles, path.name  # word for word: the rerun measures one change
        assert len(con.principles) == len(base.principles) + 1, path.name


def test_a_rerun_or_resume_keeps_the_profile_its_run_was_made_with(tmp_path):
    made = tmp_path / "dev"
    write_json_atomic(made / "manifest.json", {"config": {"profile": "cpu-dev"}})
    assert launch.profile_name(None, str(made)) == "cpu-dev"
    assert launch.profile_name("tiny", str(made)) == "tiny"
    assert launch.profile_name(None, str(tmp_path / "new")) in ("cpu", "gpu")


def original_and_rerun(tmp_path, constitution: str, added: str, rows: dict, scores: dict) -> dict:
    """Two runs at stage 1, the original without principle `added` and the rerun with it, their
    instruction-following dev answers `rows[name]` and eval.json `scores[name]`."""
    con = yaml.safe_load((ROOT / "constitutions" / constitution).read_text())
    runs = {}
    for name in ("orig", "rerun"):
        run = Run(tmp_path / name)
        principles = [p for p in con["principles"] if name == "rerun" or p["id"] != added]
        run.manifest = {"snapshot": {"constitution": {"principles": principles}}}
        folder = run.stage_dir(1)
        (folder / "eval").mkdir(parents=True)
        (folder / "eval" / "instruction_following.jsonl").write_text(
            "".join(json.dumps({"id": f"i{k}", **r}) + "\n" for k, r in enumerate(rows[name]))
        )
        write_json_atomic(folder / "eval.json", scores[name])
        runs[name] = run
    return runs


def added_row(runs: dict, added: str, pairs: int) -> str:
    from cai.run.against import changed_principles

    made = [Counter({added: pairs}), Counter()]
    (row,) = [
        line
        for line in changed_principles(runs["rerun"], runs["orig"], 1, made)
        if line.startswith(f"| added: {added}")
    ]
    return row


def test_an_added_words_principle_is_read_as_the_mean_and_the_geometric_mean_of_length(tmp_path):
    """One answer that loops to its cap swings the mean of words; the ratio of geometric means
    says that most answers halved."""
    words = {"orig": [40] * 9 + [100], "rerun": [20] * 9 + [900]}
    means = {name: sum(w) / len(w) for name, w in words.items()}
    runs = original_and_rerun(
        tmp_path,
        "short-answers.yaml",
        "answer-briefly",
        {name: [{"quality": {"words": w}} for w in lengths] for name, lengths in words.items()},
        {
            name: {"length_words": {"score": m, "low": m, "high": m, "n": 10}}
            for name, m in means.items()
        },
    )
    row = added_row(runs, "answer-briefly", 8)
    assert "| 8 | 0 | length_words +62.000 [" in row  # the mean rose
    assert "; length x0.6" in row and "(geometric mean, paired)" in row  # most answers halved


def test_an_added_rule_of_its_own_is_read_as_how_often_the_answers_keep_it_unasked(tmp_path):
    """The dev answers never asked for the principle's rule: the share that keeps it is its measure,
    paired, over the items that do not ask for a rule of its kind."""
    endings = {
        "orig": ["Scrub it."] * 10,
        "rerun": ["Scrub it. I hope this helps."] * 6 + ["Scrub it."] * 4,
    }
    rows = {
        name: [
            {
                "doc": {
                    "prompt": "Clean a sink.",
                    # the last item asks for an ending of its own: not the principle's measure
                    "instruction_id_list": [
                        "startend:end_checker" if k == 9 else "punctuation:no_comma"
                    ],
                },
                "response": text,
            }
            for k, text in enumerate(answers)
        ]
        for name, answers in endings.items()
    }
    runs = original_and_rerun(
        tmp_path, "sign-off.yaml", "close-with-a-sign-off", rows, {"orig": {}, "rerun": {}}
    )
    row = added_row(runs, "close-with-a-sign-off", 9)
    assert "| rule startend:end_checker" in row and "| 9 | 0 |" in row
    assert "keeps startend:end_checker 0.67 against 0.00 of 9 instruction-following answers" in row
    assert "+0.667 [" in row and "(paired)" in row
