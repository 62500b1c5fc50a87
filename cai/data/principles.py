"""The constitution's part in a stage: which principle a task is critiqued against, what the
critique and revision requests say, which answers are worth a critique, and the critique,
revision and judge requests built from them.

The principle is drawn from the task's id and the run seed alone, so the optimizer's slice
and the critique step draw the same one for the same task, and a resumed step draws again
what it drew before.
"""

from __future__ import annotations

from collections import Counter

from cai.config.constitution import Principle
from cai.data import constraints
from cai.data.verdicts import checker_verdict
from cai.serving.lm import Job, seeded
from programs.judge import both_orders


def draw(seed: int, task_id: str, principles: list[Principle]) -> Principle:
    """The principle task `task_id` is critiqued against, of those its stage may draw."""
    return seeded(seed, f"{task_id}-principle").choice(principles)


def critique_request(task: dict, principle: Principle, broken: bool) -> str:
    """The principle's critique request; where the answer breaks the task's rule, the rule is named
    first."""
    if broken:
        return f"The request set this rule: {task['constraint']['description']} The response breaks it. {principle.critique}"
    return principle.critique


def revision_request(task: dict, principle: Principle, broken: bool) -> str:
    """The principle's revision request; where the answer broke the task's rule, the rule is
    restated."""
    if broken:
        return f"{principle.revision} The new response must follow this rule: {task['constraint']['description']}"
    return principle.revision


def revision_yields(
    tasks: list[dict], revisions: list[dict], pairs: list[dict]
) -> dict[str, float]:
    """Per rule kind, the share of earlier stages' revisions that became kept pairs (smoothed,
    (k+1)/(t+2)), from their tasks, revisions and pairs (task ids are unique across stages)."""
    kind_of = {t["id"]: (t.get("constraint") or {}).get("instruction_id") for t in tasks}
    tried = Counter(kind_of.get(v["task_id"]) for v in revisions)
    kept = Counter(
        kind_of.get(p["provenance"]["task_id"])
        for p in pairs
        if p["provenance"]["source"] == "revision"
    )
    return {kind: (kept[kind] + 1) / (tried[kind] + 2) for kind in tried if kind}


def critique_jobs(
    tasks: list[dict],
    responses,
    drawn_from: list[Principle],
    seed: int,
    yields: dict[str, float],
    judge_trusted: bool,
    limit: int | None,
) -> tuple[list[Job], dict]:
    """A critique request for each answer whose revision can become a pair, at most `limit`, against
    the principle drawn for its task; and the counts of the answers passed over.

    A revision can become a pair where the answer breaks the task's checkable rule (the checker
    then decides it), or anywhere once the judge is trusted. First the tasks no sample of which
    kept the rule (best-of-n makes no pair of them), then the rules whose revisions earlier
    stages kept most often."""
    by_id = {t["id"]: t for t in tasks}
    kept_any = dict.fromkeys(by_id, False)  # some sample kept the rule: best-of-n can pair the task
    for r in responses:
        task = by_id.get(r["task_id"])
        if r["ok"] and task and not kept_any[task["id"]]:
            kept_any[task["id"]] = (
                constraints.keeps(task["constraint"], task["prompt"], r["response"]) is True
            )
    candidates, undecidable = [], 0
    for t in tasks:
        original = responses.get(f"{t['id']}-r0")
        if not original or not original["ok"]:
            continue
        broken = constraints.keeps(t["constraint"], t["prompt"], original["response"]) is False
        if not broken and not judge_trusted:
            undecidable += 1
            continue
        kind = (t["constraint"] or {}).get("instruction_id")
        candidates.append((kept_any[t["id"]], -yields.get(kind, 0.5), t, original, broken))
    chosen = sorted(candidates, key=lambda c: c[:2])[:limit]  # stable: task order breaks ties
    jobs = []
    for _, _, t, original, broken in chosen:
        principle = draw(seed, t["id"], drawn_from)
        jobs.append(
            Job(
                f"{original['id']}-c",
                {
                    "request": t["prompt"],
                    "response": original["response"],
                    "critique_request": critique_request(t, principle, broken),
                },
                {
                    "task_id": t["id"],
                    "response_id": original["id"],
                    "principle_id": principle.id,
                    "constraint_broken": broken,
                },
            )
        )
    return jobs, {
        "skipped_nothing_could_decide": undecidable,
        "skipped_over_budget": len(candidates) - len(chosen),
    }


def revision_jobs(
    critiques, responses, tasks: list[dict], constitution: list[Principle]
) -> list[Job]:
    """A revision request for each critique that parsed: the answer, its critique, the principle's
    revision request."""
    by_task, by_id = {t["id"]: t for t in tasks}, {p.id: p for p in constitution}
    return [
        Job(
            f"{c['response_id']}-v",
            {
                "request": by_task[c["task_id"]]["prompt"],
                "response": responses.get(c["response_id"])["response"],
                "critique": c["critique"],
                "revision_request": revision_request(
                    by_task[c["task_id"]], by_id[c["principle_id"]], c["constraint_broken"]
                ),
            },
            {
                "task_id": c["task_id"],
                "response_id": c["response_id"],
                "critique_id": c["id"],
                "principle_id": c["principle_id"],
            },
        )
        for c in critiques
        if c["ok"]
    ]


def judge_jobs(
    revisions, responses, tasks: list[dict], constitution: list[Principle]
) -> tuple[list[Job], int]:
    """Original against revision, in both orders, by the principle's revision request; not where the
    task's checker separates the two (its verdict wins anyway, cai/data/pairs.py). And how many it
    separated."""
    by_task, by_id, jobs, checker_decides = (
        {t["id"]: t for t in tasks},
        {p.id: p for p in constitution},
        [],
        0,
    )
    for v in (v for v in revisions if v["ok"]):
        task, original = by_task[v["task_id"]], responses.get(v["response_id"])["response"]
        if checker_verdict(task, original, v["revision"]) is not None:
            checker_decides += 1
            continue
        asked = both_orders(
            {"request": task["prompt"], "principle": by_id[v["principle_id"]].revision},
            original,
            v["revision"],
        )
        jobs += [
            Job(f"{v['id']}-{order}", inputs, {"revision_id": v["id"]})
            for order, inputs in asked.items()
        ]
    return jobs, checker_decides
