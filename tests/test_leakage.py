"""No training text within ROUGE-L 0.7 of an evaluation item, dev or test: the shipped seed tasks
and rule phrasings, and the tasks the model writes (dropped and counted by the propose step)."""

import pytest

from cai import ROOT
from cai.config.curriculum import load_curriculum
from cai.data import constraints
from cai.data.tasks import LEAK_THRESHOLD, Novelty, leaks
from cai.measuring import benchmarks


@pytest.fixture(scope="module")
def evaluation():
    return Novelty(benchmarks.evaluation_texts(), LEAK_THRESHOLD)


def test_every_evaluation_item_is_in_the_pool(evaluation):
    sizes = {"ifeval": 541, "harmbench": 159}
    # the dev suites' prompts (and requests), and the test set
    assert len(evaluation.pool) >= 352 + 200 + sum(sizes.values())


def test_no_seed_task_or_rule_phrasing_comes_near_an_evaluation_item(evaluation):
    cur, _ = load_curriculum(ROOT / "curriculum.yaml")
    seeds = [s for stage in cur.stages for s in stage.seeds]
    phrasings = [
        p.format(**kwargs)
        for kind, ps in constraints.PHRASINGS.items()
        for kwargs in constraints.KINDS[kind]
        for p in ps
    ]
    # a task as the policy is sent it
    prompts = [f"{s} {p}" for s in seeds[:22] for p in phrasings[:3]]
    assert leaks(seeds + phrasings + prompts, evaluation) == []


def test_the_request_sets_and_the_principles_exemplars_stay_away_from_every_suite(evaluation):
    from cai.config.constitution import load_constitution
    from cai.data.contrast import known_requests

    requests = [r["request"] for kind in ("harmful", "benign") for r in known_requests(kind)]
    assert len(requests) == len(set(requests)) == 160
    texts = []
    # the shipped constitutions
    for path in (ROOT / "constitution.yaml", *sorted((ROOT / "constitutions").glob("*.yaml"))):
        con, _ = load_constitution(path)
        for c in (p.contrast for p in con.principles if p.contrast):
            texts += [c.positive, c.negative] + [
                text for e in c.examples for text in (e.request, e.positive, e.negative) if text
            ]
    assert leaks(requests + texts, evaluation) == []


def test_a_planted_near_duplicate_is_found(evaluation):
    item = benchmarks.items("ifeval")[7]["prompt"]
    planted = item.replace(".", "!", 1) + " Thanks."
    found = leaks(["Describe a sunny afternoon at the beach.", planted], evaluation)
    assert [(text, hit) for text, hit, _ in found] == [(planted, item)] and found[0][
        2
    ] > LEAK_THRESHOLD


def test_each_rule_kind_has_three_phrasings_and_the_checker_reads_only_the_kwargs():
    import random

    for kind, ps in constraints.PHRASINGS.items():
        assert len(set(ps)) >= 3 and kind in constraints.KINDS
        assert all(
            constraints.describe(kind, kwargs) not in [p.format(**kwargs) for p in ps]
            for kwargs in constraints.KINDS[kind]
        )
    drawn = [constraints.draw(random.Random(i)) for i in range(300)]
    assert {(d["instruction_id"], d["phrasing"]) for d in drawn} == {
        (k, i) for k, ps in constraints.PHRASINGS.items() for i in range(len(ps))
    }
    no_comma = next(d for d in drawn if d["instruction_id"] == "punctuation:no_comma")
    assert (
        constraints.keeps(no_comma, f"Name fruits. {no_comma['description']}", "apples and pears")
        is True
    )


def test_propose_drops_a_task_that_comes_near_an_evaluation_item(ctx, monkeypatch):
    from test_steps import script, stage

    import bootstrap

    near = benchmarks.items("harmbench")[3]["prompt"]
    script(monkeypatch, {"Kind:": near})
    stats = bootstrap.propose(ctx, stage(1, proposed=2, seeds_used=1), "stage0")
    assert stats["dropped_near_evaluation"] == 2 and stats["kept"] == 0
