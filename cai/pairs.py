"""Turn a stage's records into preference pairs, each with where it came from.

Two sources:
- `revision`: the original answer against its constitutional revision. A checkable
  constraint decides where exactly one side keeps it; otherwise the judge decides,
  and only where it names the same side in both orders.
- `best_of_n`: two samples of the same task that the constraint checker separates
  (one keeps the rule, one breaks it).

Pairs are in TRL's conversational format: `prompt` is the exact messages the
policy was sent, `chosen`/`rejected` one assistant message each.
"""

from __future__ import annotations

from collections import Counter, defaultdict

from cai.constraints import keeps


def judge_preference(ab: dict | None, ba: dict | None) -> str | None:
    """'revision', 'original', or None (a tie, or a verdict that did not parse).

    `ab` showed the original as A and the revision as B; `ba` the other way round.
    """
    if not (ab and ba and ab["ok"] and ba["ok"]):
        return None
    first = "revision" if ab["better"] == "B" else "original"
    second = "revision" if ba["better"] == "A" else "original"
    return first if first == second else None


def checker_verdict(task: dict, original: str, revision: str) -> str | None:
    """'revision' or 'original' where the task's checker keeps exactly one of them, else None.

    The checker overrides the judge wherever it decides, so the judge step asks only
    where this is None.
    """
    kept_o = keeps(task.get("constraint"), task["prompt"], original)
    kept_r = keeps(task.get("constraint"), task["prompt"], revision)
    if kept_o is None or kept_o == kept_r:
        return None
    return "revision" if kept_r else "original"


def build_pairs(stage: int, tasks, responses, critiques, revisions, judgments) -> tuple[list[dict], Counter]:
    """All pairs of the stage, in task order, and the counts of what was kept or dropped."""
    counts: Counter = Counter()
    pairs: list[dict] = []
    samples_of, revisions_of = defaultdict(list), defaultdict(list)
    for r in sorted(responses, key=lambda r: r["sample"]):
        if r["ok"]:
            samples_of[r["task_id"]].append(r)
    for r in revisions:
        revisions_of[r["task_id"]].append(r)
    by_id = {r["id"]: r for r in (*responses, *critiques, *judgments)}
    for task in tasks:
        samples = samples_of[task["id"]]
        prompt_text = task["prompt"]

        # best-of-n: the checker separates a keeping sample from a breaking one
        if task.get("constraint") and len(samples) >= 2:
            verdicts = [keeps(task["constraint"], prompt_text, s["response"]) for s in samples]
            keeping = [s for s, ok in zip(samples, verdicts) if ok]
            breaking = [s for s, ok in zip(samples, verdicts) if not ok]
            if keeping and breaking:
                pairs.append(_pair(stage, task, "best_of_n", keeping[0], keeping[0]["response"], breaking[0]["response"],
                                   decided_by="constraint", constraint_kept={"chosen": True, "rejected": False},
                                   sides={"chosen": keeping[0]["id"], "rejected": breaking[0]["id"]}))
                counts["kept_best_of_n"] += 1
            else:
                counts["best_of_n_not_separated"] += 1

        # revision against original
        for rev in revisions_of[task["id"]]:
            if not rev["ok"]:
                counts["dropped_revision_unparseable"] += 1
                continue
            original, critique = by_id[rev["response_id"]], by_id[rev["critique_id"]]
            if rev["revision"].strip() == original["response"].strip():
                counts["dropped_revision_unchanged"] += 1
                continue
            ab, ba = by_id.get(rev["id"] + "-ab"), by_id.get(rev["id"] + "-ba")
            by_checker, by_judge = checker_verdict(task, original["response"], rev["revision"]), judge_preference(ab, ba)
            kept_o = keeps(task.get("constraint"), prompt_text, original["response"])
            if by_checker is not None:
                winner, decided_by = by_checker, "constraint"
            elif by_judge is not None:
                winner, decided_by = by_judge, "judge"
            else:
                counts["dropped_judge_tie"] += 1
                continue
            chosen, rejected = (rev["revision"], original["response"]) if winner == "revision" else (original["response"], rev["revision"])
            pairs.append(_pair(
                stage, task, "revision", original, chosen, rejected, decided_by=decided_by,
                principle_id=rev["principle_id"], critique=critique.get("critique"),
                judge={"ab": ab and ab.get("better"), "ba": ba and ba.get("better")},
                constraint_kept=None if kept_o is None else
                {"chosen": True, "rejected": False} if by_checker else {"chosen": kept_o, "rejected": kept_o},
                sides={"chosen": rev["id"] if winner == "revision" else original["id"],
                       "rejected": original["id"] if winner == "revision" else rev["id"]},
                programs={"respond": original.get("program"), "critique": critique.get("program"), "revise": rev.get("program")},
                models={"original": original["model"], "revision": rev["model"]},
            ))
            counts[f"kept_revision_by_{decided_by}"] += 1
    counts["pairs"] = len(pairs)
    return pairs, counts


def _pair(stage: int, task: dict, source: str, original: dict, chosen: str, rejected: str, **provenance) -> dict:
    return {
        "id": f"{task['id']}-{source}",
        "prompt": original.get("messages") or [{"role": "user", "content": task["prompt"]}],
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
        "provenance": {
            "stage": stage,
            "task_id": task["id"],
            "task_source": task["source"],
            "source": source,
            "constraint": (task.get("constraint") or {}).get("instruction_id"),
            "model": original["model"],
            **provenance,
        },
    }
