"""Optimizing prompts on a scripted LM: compiled programs save and load back to the same
prompts, the optimize step records its metric before and after, `prompts` prints them."""

import dspy
import pytest
from dspy.utils.dummies import DummyLM

import bootstrap
from cai.config import OptimizeSettings
from cai.lm import Endpoint
from cai.optimize import compile_program, load, render
from programs.adapter import PlainAdapter
from programs.metrics import proposal_metric, revision_metric
from programs.propose import Propose
from test_steps import stage


def scripted(answers: dict):
    return DummyLM({k: {"out": v} for k, v in answers.items()}, adapter=PlainAdapter())


def test_a_compiled_program_saves_and_loads_back_to_the_same_prompts(tmp_path):
    examples = [dspy.Example(kind="Explicit instructions", examples=f"1. List {k} fruits.").with_inputs("kind", "examples")
                for k in ("two", "three", "four", "five")]
    lm = scripted({"List two": "Describe how a sailboat sails.", "List three": "ok", "List four": "Name three rivers in Europe.",
                   "List five": "Explain what a harbour is for."})
    metric = proposal_metric(lambda text: 0.0)
    settings = OptimizeSettings(trainset=2, devset=2, max_demos=2)
    program, report = compile_program(Propose(), metric, examples[:2], examples[2:], settings, lm, PlainAdapter(), 1, 0)
    assert report["demos"] == 1 and report["before"] == report["after"] == 1.0 and report["lm_calls"] >= 6
    program.save(str(tmp_path / "propose.json"))
    again = load(Propose, tmp_path / "propose.json")()
    assert render("propose", again, PlainAdapter()) == render("propose", program, PlainAdapter())
    text = render("propose", again, PlainAdapter())
    assert "Write one more request of the\nsame kind" in text and "Describe how a sailboat sails." in text and "{examples}" in text


def test_the_revision_metric_asks_the_checker_first_then_the_judge_in_both_orders():
    no_comma = {"instruction_id": "punctuation:no_comma", "kwargs": {}, "description": "Use no commas."}
    example = dspy.Example(request="Name fruits. Use no commas.", response="apple, pear", constraint=no_comma, principle="p")
    metric = revision_metric(judge=lambda *a: pytest.fail("the checker decides here"), guard=None)
    assert metric(example, dspy.Prediction(revision="apple and pear")) == 1.0
    assert metric(example, dspy.Prediction(revision="apple, pear")) == 0.0  # unchanged
    free = example.copy(constraint=None)
    always_b = revision_metric(judge=lambda request, principle, a, b: "B", guard=None)  # position bias: never both orders
    prefers_revision = revision_metric(judge=lambda request, principle, a, b: "B" if b == "Apples and pears." else "A", guard=None)
    assert always_b(free, dspy.Prediction(revision="Apples and pears.")) == 0.0
    assert prefers_revision(free, dspy.Prediction(revision="Apples and pears.")) == 1.0
    unsafe = revision_metric(judge=None, guard=lambda request, answer: False)
    assert unsafe(example, dspy.Prediction(revision="apple and pear"), trace=object()) is False


def test_the_optimize_step_records_the_metric_and_prompts_prints_each_program(ctx, monkeypatch, capsys):
    answers = {"Kind:": "Describe how a sailboat can move against the wind.", "Critique request": "It breaks the rule.",
               "Revision request": "a fixed answer without any commas at all", "Response A": "A"}
    monkeypatch.setattr(Endpoint, "lm", lambda self, sampling, seed: scripted({**answers, "": "an answer, with commas"}))
    ctx.guard = ctx.guard.model_copy(update={"mode": "off"})
    ctx.run.manifest["stages"] = {}
    st = stage(1)
    st = st.model_copy(update={"optimize": st.optimize.model_copy(update={"trainset": 2, "devset": 2})})
    stats = bootstrap.optimize(ctx, st, "stage0")
    assert stats["propose_before"] is not None and stats["propose_lm_calls"] > 0
    assert {"critique_revise_before", "critique_revise_after", "critique_revise_demos", "critique_revise_seconds"} <= set(stats)
    folder = ctx.run.stage_dir(1) / "programs"
    assert sorted(p.name for p in folder.glob("*.json")) == ["critique.json", "propose.json", "revise.json"]
    ctx.run.manifest.update(run="t", config={}, snapshot={})
    ctx.run.save()
    assert bootstrap.main(["prompts", "--run", str(ctx.run.root), "--stage", "1"]) == 0
    out = capsys.readouterr().out
    for name in ("## propose", "## respond", "## critique", "## revise", "## judge"):
        assert name in out
    assert "Rewrite the response to the request" in out  # the reviser's instructions, as the adapter sends them
    assert bootstrap.main(["prompts", "--run", str(ctx.run.root), "--stage", "1", "--program", "judge"]) == 0
    assert [line for line in capsys.readouterr().out.splitlines() if line.startswith("## ")] == ["## judge"]
    assert bootstrap.main(["prompts", "--run", str(ctx.run.root), "--stage", "2"]) == 2
    assert "stage 2's optimize step has not run" in capsys.readouterr().err


@pytest.mark.parametrize("name, kind", [("bootstrap_fewshot", "BootstrapFewShot"),
                                        ("bootstrap_random_search", "BootstrapFewShotWithRandomSearch"),
                                        ("miprov2", "MIPROv2"), ("gepa", "GEPA")])
def test_each_optimizer_the_curriculum_names_is_built(name, kind):
    from cai.optimize import make_optimizer

    lm = scripted({"": "x"})
    optimizer = make_optimizer(OptimizeSettings(optimizer=name, trainset=1, devset=1), lambda e, p, t=None: 1.0, lm, 2, 0)
    assert type(optimizer).__name__ == kind
    if name == "gepa":
        assert optimizer.reflection_lm is lm  # the current model reflects on its own prompts
