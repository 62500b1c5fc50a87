"""Optimizing prompts on a scripted LM: compiled programs save and load back to the same
prompts, the optimize step records its metric before and after, `prompts` prints them."""

import threading

import dspy
import pytest
from dspy.utils.dummies import DummyLM
from test_steps import stage

import bootstrap
from cai.config.settings import OptimizeSettings
from cai.prompts.optimize import compile_program, load, planned_calls, render
from cai.serving.lm import Endpoint
from cai.steps import optimize as optimize_step
from programs.adapter import PlainAdapter
from programs.metrics import proposal_metric, revision_metric
from programs.propose import Propose


def scripted(answers: dict):
    return DummyLM({k: {"out": v} for k, v in answers.items()}, adapter=PlainAdapter())


def test_a_compiled_program_saves_and_loads_back_to_the_same_prompts(tmp_path):
    examples = [
        dspy.Example(kind="Explicit instructions", examples=f"1. List {k} fruits.").with_inputs(
            "kind", "examples"
        )
        for k in ("two", "three", "four", "five")
    ]
    lm = scripted(
        {
            "List two": "Describe how a sailboat sails.",
            "List three": "ok",
            "List four": "Name three rivers in Europe.",
            "List five": "Explain what a harbour is for.",
        }
    )
    metric = proposal_metric(lambda text: 0.0)
    settings = OptimizeSettings(trainset=2, devset=2, max_demos=2)
    program, report = compile_program(
        Propose(), metric, examples[:2], examples[2:], settings, lm, PlainAdapter(), 1, 0
    )
    assert (
        report["demos"] == 1
        and report["before"] == report["after"] == 1.0
        and report["lm_calls"] >= 6
    )
    program.save(str(tmp_path / "propose.json"))
    again = load(Propose, tmp_path / "propose.json")()
    assert render("propose", again, PlainAdapter()) == render("propose", program, PlainAdapter())
    text = render("propose", again, PlainAdapter())
    assert (
        "Write one more request of the\nsame kind" in text
        and "Describe how a sailboat sails." in text
        and "{examples}" in text
    )


def test_the_revision_metric_asks_the_checker_first_then_the_judge_in_both_orders():
    no_comma = {
        "instruction_id": "punctuation:no_comma",
        "kwargs": {},
        "description": "Use no commas.",
    }
    example = dspy.Example(
        request="Name fruits. Use no commas.",
        response="apple, pear",
        constraint=no_comma,
        principle="p",
    )
    metric = revision_metric(judge=lambda **inputs: pytest.fail("the checker decides here"))
    assert metric(example, dspy.Prediction(revision="apple and pear")) == 1.0
    assert metric(example, dspy.Prediction(revision="apple, pear")) == 0.0  # unchanged
    free = example.copy(constraint=None)
    always_b = revision_metric(judge=lambda **inputs: "B")  # position bias: never both orders
    prefers_revision = revision_metric(
        judge=lambda **inputs: "B" if inputs["response_b"] == "Apples and pears." else "A"
    )
    assert always_b(free, dspy.Prediction(revision="Apples and pears.")) == 0.0
    assert prefers_revision(free, dspy.Prediction(revision="Apples and pears.")) == 1.0
    # pass or fail while bootstrapping
    assert metric(example, dspy.Prediction(revision="apple and pear"), trace=object()) is True


def test_the_optimize_step_records_the_metric_and_prompts_prints_each_program(
    ctx, monkeypatch, capsys
):
    answers = {
        "Kind:": "Describe how a sailboat can move against the wind.",
        "Critique request": "It breaks the rule.",
        "Revision request": "a fixed answer without any commas at all",
        "Response A": "A",
    }
    monkeypatch.setattr(
        Endpoint,
        "lm",
        lambda self, sampling, seed: scripted({**answers, "": "an answer, with commas"}),
    )
    ctx.guard = ctx.guard.model_copy(update={"mode": "off"})
    ctx.run.manifest["stages"] = {}
    st = stage(1)
    st = st.model_copy(
        update={
            "optimize": st.optimize.model_copy(
                update={
                    "trainset": 2,
                    "devset": 2,
                    "programs": ["propose", "contrast", "critique_revise"],
                }
            )
        }
    )
    stats = bootstrap.optimize(ctx, st, "stage0")
    assert stats["propose_before"] is not None and stats["propose_lm_calls"] > 0
    assert {
        "critique_revise_before",
        "critique_revise_after",
        "critique_revise_demos",
        "critique_revise_seconds",
    } <= set(stats)
    folder = ctx.run.stage_dir(1) / "programs"
    # each principle's own
    contrasts = sorted(f"contrast-{p.id}.json" for p in ctx.constitution.for_stage(1) if p.contrast)
    assert sorted(p.name for p in folder.glob("*.json")) == sorted(
        ["critique.json", "propose.json", "revise.json", *contrasts]
    )
    ctx.run.manifest.update(run="t", config={}, snapshot={})
    ctx.run.save()
    assert bootstrap.main(["prompts", "--run", str(ctx.run.root), "--stage", "1"]) == 0
    out = capsys.readouterr().out
    for name in (
        "## propose",
        "## respond",
        "## critique",
        "## revise",
        "## judge",
        "## contrast-avoid-harm",
    ):
        assert name in out
    # the reviser's instructions, as the adapter sends them
    assert "Rewrite the response to the request" in out
    assert (
        bootstrap.main(
            ["prompts", "--run", str(ctx.run.root), "--stage", "1", "--program", "judge"]
        )
        == 0
    )
    assert [line for line in capsys.readouterr().out.splitlines() if line.startswith("## ")] == [
        "## judge"
    ]
    assert bootstrap.main(["prompts", "--run", str(ctx.run.root), "--stage", "2"]) == 2
    assert "stage 2's optimize step has not run" in capsys.readouterr().err


@pytest.mark.parametrize(
    "name, kind",
    [
        ("bootstrap_fewshot", "ConcurrentBootstrapFewShot"),
        ("bootstrap_random_search", "BootstrapFewShotWithRandomSearch"),
        ("miprov2", "MIPROv2"),
        ("gepa", "GEPA"),
    ],
)
def test_each_optimizer_the_curriculum_names_is_built(name, kind):
    from cai.prompts.optimize import make_optimizer

    lm = scripted({"": "x"})
    optimizer = make_optimizer(
        OptimizeSettings(optimizer=name, trainset=1, devset=1), lambda e, p, t=None: 1.0, lm, 2, 0
    )
    assert type(optimizer).__name__ == kind and isinstance(optimizer, dspy.teleprompt.Teleprompter)
    if name == "gepa":
        assert optimizer.reflection_lm is lm  # the current model reflects on its own prompts


def test_traces_run_in_waves_and_stop_when_a_wave_passes_none():
    from cai.prompts.optimize import ConcurrentBootstrapFewShot

    examples = [
        dspy.Example(kind="k", examples=f"1. Example {i}.").with_inputs("kind", "examples")
        for i in range(9)
    ]
    calls = []
    lm = scripted({"Example": "ok"})
    lm.forward = (lambda forward: lambda *a, **k: calls.append(1) or forward(*a, **k))(lm.forward)
    optimizer = ConcurrentBootstrapFewShot(
        metric=lambda e, p, t=None: False,
        max_bootstrapped_demos=2,
        max_labeled_demos=0,
        num_threads=4,
        wave=3,
    )
    with dspy.context(lm=lm, adapter=PlainAdapter()):
        compiled = optimizer.compile(Propose(), trainset=examples)
    # the first wave, then no more
    assert optimizer.traced == 3 and optimizer.passed == 0 and len(calls) == 3
    assert optimizer.stopped == "none of 3 traces passed" and compiled.write.demos == []


def test_passing_traces_become_demos_in_trainset_order_and_labeled_ones_fill_up():
    from cai.prompts.optimize import ConcurrentBootstrapFewShot

    examples = [
        dspy.Example(
            kind="k", examples=f"1. Example {i}.", request=f"Seed request {i}."
        ).with_inputs("kind", "examples")
        for i in range(6)
    ]
    lm = scripted({f"Example {i}.": f"New request number {i}." for i in range(6)})
    passes = {"New request number 1.", "New request number 3.", "New request number 4."}
    optimizer = ConcurrentBootstrapFewShot(
        metric=lambda e, p, t=None: p.request in passes,
        max_bootstrapped_demos=2,
        max_labeled_demos=3,
        num_threads=4,
        wave=3,
    )
    with dspy.context(lm=lm, adapter=PlainAdapter()):
        compiled = optimizer.compile(Propose(), trainset=examples)
    demos = compiled.write.demos
    assert optimizer.stopped == "enough demos" and optimizer.traced == 6
    # in order, not by finish
    assert [d.request for d in demos[:2]] == ["New request number 1.", "New request number 3."]
    # a labeled seed fills the third place
    assert len(demos) == 3 and demos[2].request.startswith("Seed request")


def test_the_optimize_step_cuts_each_program_to_its_share_of_the_stages_calls(ctx, monkeypatch):
    st = stage(1)
    tiny_share = st.optimize.model_copy(update={"call_share": 0.001})
    monkeypatch.setattr(
        optimize_step,
        "compile_program",
        lambda *a, **k: pytest.fail("over budget: nothing is compiled"),
    )
    stats = optimize_step.optimize_program(
        ctx, st.model_copy(update={"optimize": tiny_share}), "stage0", "critique_revise"
    )
    budget = int(0.001 * planned_calls(st))
    assert (
        stats == {"critique_revise_skipped": f"the budget ({budget} LM calls) allows no example"}
        and budget < 4
    )
    seen = {}

    def fake_compile(
        program, metric, train, dev, settings, lm, adapter, concurrency, seed, start=None
    ):
        seen.update(train=len(train), dev=len(dev), start=start)
        return program, {"optimizer": "x", "before": 0.0, "after": 0.0}

    monkeypatch.setattr(optimize_step, "compile_program", fake_compile)
    monkeypatch.setattr(Endpoint, "lm", lambda self, sampling, seed: scripted({"": "x"}))
    share = st.optimize.model_copy(update={"call_share": 0.04, "trainset": 8, "devset": 4})
    stats = optimize_step.optimize_program(
        ctx, st.model_copy(update={"optimize": share}), "stage0", "propose"
    )
    budget = int(0.04 * planned_calls(st))
    assert (
        stats["propose_budget"] == budget
        and seen["dev"] == min(4, budget // 3)
        and seen["train"] == min(8, budget - 2 * seen["dev"])
    )
    assert seen["start"] is None  # stage 1: nothing to start from


def test_a_warm_start_that_scores_higher_stays_the_stages_program():
    examples = [
        dspy.Example(kind="k", examples=f"1. Example {i}.").with_inputs("kind", "examples")
        for i in range(4)
    ]
    lock = threading.Lock()

    class SeesDemos(DummyLM):  # DummyLM reads the last message only; the demos are earlier turns
        def forward(self, prompt=None, messages=None, **kwargs):
            old = any("An old demo request" in m["content"] for m in messages)
            with lock:  # the start's score runs beside the traces
                self.answers = {
                    "": {
                        "out": "Old style request."
                        if old
                        else "A fresh request about sailing boats."
                    }
                }
                return super().forward(prompt=prompt, messages=messages, **kwargs)

    # the warm start's demo changes its answer
    lm = SeesDemos({"": {"out": ""}}, adapter=PlainAdapter())
    warm = Propose()
    warm.write.demos = [dspy.Example(kind="k", examples="1. x", request="An old demo request.")]

    def metric(example, prediction, trace=None):
        right = prediction.request == "Old style request."
        return right if trace is not None else float(right)

    program, report = compile_program(
        Propose(),
        metric,
        examples[:2],
        examples[2:],
        OptimizeSettings(trainset=2, devset=2),
        lm,
        PlainAdapter(),
        2,
        0,
        start=warm,
    )
    assert (
        report["warm_start"]
        and report["before"] == 1.0
        and report["kept"] == "the start: it scored higher"
    )
    assert program is warm and report["after"] == 1.0


def test_a_principles_exemplars_teach_the_first_traces_and_stay_where_none_passes():
    """A start with demos (a principle's exemplars) is the optimizer's teacher as it is: DSPy would
    otherwise give the teacher labeled demos from a trainset that has no answers, and the 135M model
    follows a contrast instruction only from such turns (docs/constitution.md)."""
    from cai import ROOT
    from cai.config.constitution import load_constitution
    from cai.data.contrast import program

    con, _ = load_constitution(ROOT / "constitution.yaml")
    avoid = next(p for p in con.principles if p.id == "avoid-harm")
    shown = []

    class Scripted(DummyLM):
        def forward(self, prompt=None, messages=None, **kwargs):
            shown.append(len(messages))
            return super().forward(prompt=prompt, messages=messages, **kwargs)

    lm = Scripted(
        {"": {"response": "I'm sorry, but I can't help with that."}}, adapter=PlainAdapter()
    )
    data = [dspy.Example(request=f"Harmful request {i}.").with_inputs("request") for i in range(4)]
    kept, summary = compile_program(
        program(avoid)(),
        lambda ex, pred, trace=None: False,
        data[:2],
        data[2:],
        OptimizeSettings(),
        lm,
        PlainAdapter(),
        2,
        0,
    )
    # the positive side's traces carried the exemplars
    assert max(shown) == 2 + 2 * len(avoid.contrast.examples)
    assert summary["kept"] == "no trace passed: the start" and len(kept.positive.demos) == len(
        avoid.contrast.examples
    )
