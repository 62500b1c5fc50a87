"""What each program's prompt is compiled on and against (cai/prompts/optimize.py): its examples,
from the stage's seed tasks and earlier stages' records (never from an evaluation suite), and its
metric.

    propose          a seed task held out as the answer, the other seeds as the examples shown;
                     a usable, novel task passes
    critique_revise  a seed task's answer (those that break their rule first) with the principle the
    critique step would draw for it; a revision the checker (else the judge) prefers passes
    judge            earlier stages' pairs the checker decided, in both orders: naming the known
    better side passes contrast-<id>    a principle's held-out requests (seed tasks, or the first of
    its known-kind set), each answered under both instructions: a pair the principle's check
    separates and the quality filters pass counts (its contrast yield)
"""

from __future__ import annotations

import dspy

from cai.config.constitution import Principle
from cai.config.curriculum import StageConfig
from cai.data import constraints, contrast, principles, quality
from cai.data.filters import acceptable
from cai.data.leakage import Novelty
from cai.data.requests import held_out
from cai.data.tasks import proposer_examples
from cai.prompts.optimize import Compilable
from cai.serving.lm import seeded
from programs.critique_revise import CritiqueAndRevise
from programs.judge import Judge, both_orders
from programs.metrics import judge_metric, proposal_metric, revision_metric
from programs.propose import Propose


def seed_slice(seed: int, st: StageConfig, count: int) -> list[dict]:
    """`count` seed tasks of the stage with their rules: what its programs are optimized on."""
    n = st.number
    seeds = seeded(seed, f"stage{n}-optimize").sample(st.seeds, min(count, len(st.seeds)))
    tasks = [{"id": f"s{n}-opt{k:02d}", "request": s} for k, s in enumerate(seeds)]
    for task in tasks:
        constraints.attach(task, seeded(seed, task["id"]) if st.constraints else None)
    return tasks


def for_propose(seed: int, st: StageConfig, earlier: list[str], count: int) -> Compilable:
    """Each example holds out one seed task as its answer: the labeled demos the proposer is shown.
    Novelty is measured against the seeds and `earlier` stages' tasks."""
    data = [
        dspy.Example(
            kind=st.description,
            request=t["request"],
            examples=proposer_examples(
                seeded(seed, t["id"]),
                [s for s in st.seeds if s != t["request"]],
                [],
                st.counts.examples_shown,
                0,
            ),
        ).with_inputs("kind", "examples")
        for t in seed_slice(seed, st, count)
    ]
    return Compilable(
        Propose(),
        proposal_metric(Novelty(list(st.seeds) + earlier, st.dedupe_threshold).closest),
        data,
        st.generation.propose,
    )


def for_critique_revise(
    seed: int,
    st: StageConfig,
    tasks: list[dict],
    answers,
    drawn_from: list[Principle],
    count: int,
    judge,
) -> Compilable:
    """The answered `tasks` (twice the seeds asked for: those whose answer breaks its rule go first,
    as in the critique step), each with the principle the critique step would draw for it; `judge`
    (programs/judge.py's `asker`) decides where the checker is silent."""
    examples = []
    for t in tasks:
        answer = answers.get(f"{t['id']}-r0")
        if not answer["ok"]:
            continue
        principle = principles.draw(seed, t["id"], drawn_from)
        broken = constraints.keeps(t["constraint"], t["prompt"], answer["response"]) is False
        examples.append(
            dspy.Example(
                request=t["prompt"],
                response=answer["response"],
                critique_request=principles.critique_request(t, principle, broken),
                revision_request=principles.revision_request(t, principle, broken),
                constraint=t["constraint"],
                principle=principle.revision,
                broken=broken,
            ).with_inputs("request", "response", "critique_request", "revision_request")
        )
    return Compilable(
        CritiqueAndRevise(),
        revision_metric(judge),
        sorted(examples, key=lambda e: not e.broken)[:count],
        st.generation.revise,
    )


def for_judge(seed: int, st: StageConfig, earlier_pairs: list[dict], count: int) -> Compilable:
    """Earlier stages' pairs the checker decided, asked both ways, shuffled: the judge's answer is
    known."""
    examples = []
    for p in earlier_pairs:
        if p["provenance"]["decided_by"] != "constraint":
            continue
        common = {
            "request": p["prompt"][-1]["content"],
            "principle": "Follow the request's rule exactly.",
        }
        asked = both_orders(common, p["chosen"][0]["content"], p["rejected"][0]["content"])
        examples += [
            dspy.Example(**asked[order], better=better).with_inputs(*asked[order])
            for order, better in (("ab", "A"), ("ba", "B"))
        ]
    seeded(seed, f"stage{st.number}-judge-examples").shuffle(examples)
    return Compilable(Judge(), judge_metric, examples[:count], st.generation.judge)


def compilable(
    name: str,
    seed: int,
    st: StageConfig,
    run,
    drawn_from: list[Principle],
    count: int,
    answered=None,
    judge=None,
    embedder=None,
    make_contrast=None,
) -> Compilable:
    """Program `name` of stage `st` with `count` examples: earlier stages' tasks and pairs from
    `run`; for critique + revise, `answered` (the seed slice and its answers) and the `judge` it
    falls back on; for a principle's contrast (`contrast-<id>`), the embedder its yield is measured
    with and `make_contrast`, the factory of its program (cai/data/contrast.py's `program`)."""
    if name.startswith("contrast-"):
        p = next(p for p in drawn_from if f"contrast-{p.id}" == name)
        return for_contrast(seed, st, p, count, embedder, make_contrast)
    if name == "propose":
        return for_propose(seed, st, [t["request"] for t in run.earlier(st.number, "tasks")], count)
    if name == "critique_revise":
        return for_critique_revise(seed, st, *answered, drawn_from, count, judge)
    return for_judge(seed, st, run.earlier(st.number, "pairs"), count)


def for_contrast(
    seed: int, st: StageConfig, p: Principle, count: int, embedder, make_contrast
) -> Compilable:
    """Principle `p`'s contrast, compiled against its yield on held-out requests: the seed tasks
    with their rules, or the optimizer's share of its known-kind set (cai/data/contrast.py)."""
    kind = p.contrast.requests
    requests = (
        [
            {
                "id": t["id"],
                "request": t["request"],
                "prompt": t["prompt"],
                "constraint": t["constraint"],
            }
            for t in seed_slice(seed, st, count)
        ]
        if kind == "tasks"
        else held_out(seed, kind, count)
    )
    data = [
        dspy.Example(
            request=r["prompt"], bare=r["request"], constraint=r.get("constraint")
        ).with_inputs("request")
        for r in requests
    ]

    def kept(example, prediction, trace=None) -> float | bool:
        record = {
            "positive": prediction.positive,
            "negative": prediction.negative,
            "request": example.bare,
            "constraint": example.constraint,
        }
        q_pos, q_neg = quality.signals(
            [example.bare] * 2, [prediction.positive, prediction.negative], embedder
        )
        ok, _ = contrast.separates(p, record, q_pos, q_neg)
        ok = (
            ok
            and acceptable(q_pos, st.pair_filters, contrast.FILTERS_SPARED.get(p.check.signal, ()))
            is None
        )
        return ok if trace is not None else float(ok)

    return Compilable(make_contrast(), kept, data, contrast.sampling_for(p, st.generation.contrast))


def warm_start(previous, make_contrast=None):
    """The optimizer's start: the last stage's compiled program; for a principle's contrast
    (`make_contrast`, its factory), its demos with the principle's own instructions (a new
    constitution may have changed them)."""
    if previous is None or make_contrast is None:
        return previous
    program = make_contrast()
    program.positive.demos, program.negative.demos = (
        list(previous.positive.demos),
        list(previous.negative.demos),
    )
    return program
