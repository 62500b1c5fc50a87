"""Steps of bootstrap.py on a scripted LM: self-instruct dedupe, the judge skipped where a checker decides."""

from types import SimpleNamespace

import pytest
from dspy.utils.dummies import DummyLM

import bootstrap
from cai.config import load_constitution, load_curriculum, resolve_stage
from cai.lm import Endpoint
from cai.store import Run
from programs.adapter import PlainAdapter

ROOT = bootstrap.ROOT


@pytest.fixture
def ctx(tmp_path, monkeypatch):
    con, _ = load_constitution(ROOT / "constitution.yaml")
    run = Run(tmp_path / "run")
    run.manifest = {"config": {}}
    server = SimpleNamespace(api_base="http://unused", api_key="k")
    return bootstrap.Context(run, server, con, "model", "plain", 4, 30, 0, False)


def script(monkeypatch, answers: dict):
    """Every request is answered from `answers`: the first key found in the prompt wins."""
    monkeypatch.setattr(Endpoint, "lm", lambda self, sampling, seed: DummyLM({k: {"out": v} for k, v in answers.items()}, adapter=PlainAdapter()))


def stage(n, **counts):
    cur, _ = load_curriculum(ROOT / "curriculum.yaml")
    st = resolve_stage(cur, cur.profiles["quick"], n)
    return st.model_copy(update={"counts": st.counts.model_copy(update=counts)})


def test_propose_keeps_distinct_tasks_and_drops_near_duplicates(ctx, monkeypatch):
    st = stage(1, proposed=3, seeds_used=2)
    # every proposal call gets the same reply, but the first is a near-copy of a seed
    script(monkeypatch, {"Kind:": "List three things to check before riding a bicycle today."})
    stats = bootstrap.propose(ctx, st, "stage0")
    tasks = [t for t in bootstrap._read(ctx.run, 1, "tasks")]
    assert stats["generated_duplicates"] == 3 and stats["generated_kept"] == 0 and len(tasks) == 2
    assert all(t["source"] == "seed" and t["constraint"]["instruction_id"] and t["prompt"].startswith(t["request"]) for t in tasks)


def test_propose_keeps_a_new_task_once(ctx, monkeypatch):
    st = stage(1, proposed=2, seeds_used=0)
    script(monkeypatch, {"Kind:": "Describe how a sailboat can move against the wind."})
    stats = bootstrap.propose(ctx, st, "stage0")
    tasks = bootstrap._read(ctx.run, 1, "tasks")
    # the second proposal repeats the first word for word: only one is kept
    assert [t["id"] for t in tasks] == ["s1-gen0000"] and stats["generated_duplicates"] == 1


def test_propose_with_nothing_usable_names_the_step(ctx, monkeypatch):
    script(monkeypatch, {"Kind:": "ok"})
    with pytest.raises(bootstrap.StageError, match="stage1: propose: no task"):
        bootstrap.propose(ctx, stage(1, proposed=2, seeds_used=0), "stage0")


def test_judge_is_not_asked_where_the_checker_decides(ctx, monkeypatch):
    no_comma = {"instruction_id": "punctuation:no_comma", "kwargs": {}, "description": "Use no commas."}
    tasks = [{"id": "s1-seed00", "prompt": "Name fruits. Use no commas.", "constraint": no_comma},
             {"id": "s1-seed01", "prompt": "Name trees.", "constraint": None}]
    responses, revisions = ctx.run.records(1, "responses"), ctx.run.records(1, "revisions")
    for t, original, revision in [(tasks[0], "apple, pear", "apple and pear"), (tasks[1], "oak", "Oak and elm.")]:
        responses.append({"id": f"{t['id']}-r0", "ok": True, "response": original})
        revisions.append({"id": f"{t['id']}-r0-v", "task_id": t["id"], "response_id": f"{t['id']}-r0", "ok": True,
                          "revision": revision, "principle_id": "follow-the-instruction"})
    script(monkeypatch, {"Response A": "B"})
    stats = bootstrap.judge(ctx, stage(1), "stage0", tasks)
    assert stats["skipped_checker_decides"] == 1 and stats["requested"] == 2
    assert {j["id"] for j in ctx.run.records(1, "judgments")} == {"s1-seed01-r0-v-ab", "s1-seed01-r0-v-ba"}
