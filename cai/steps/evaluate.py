"""evaluate and test: a policy on the dev suites (every stage) or the test set (the base and the
final policy), through lm-eval."""

from __future__ import annotations

import shutil

from cai.config.curriculum import StageConfig
from cai.data import guard
from cai.measuring import suites
from cai.measuring.intervals import proportion
from cai.measuring.scores import all_scores, cap_shares, eval_record
from cai.measuring.win_rate import win_rates
from cai.steps.guard import classify
from cai.store import BASE_NAME, Records, stage_number, write_json_atomic, write_jsonl_atomic
from programs.judge import Judge


def evaluate(
    ctx, st: StageConfig, n: int, policy: str, step: str = "evaluate", reference: str = BASE_NAME
) -> dict:
    """Stage n's evaluation of `policy`: `evaluate`, the dev suites (every stage; the gate reads
    them), or `test`, the test set (the base and the final policy; only the verdict reads it), with
    the base as guard and judge: a score does not move because the stage's own judgement moved."""
    which = "dev" if step == "evaluate" else "test"
    folder = ctx.run.stage_dir(n) / ("eval" if step == "evaluate" else "test")
    plan = suites.batches(st, which, n)
    # a step cut short is redone whole: lm-eval does not resume
    shutil.rmtree(folder, ignore_errors=True)
    repetition = st.suites.repetition and st.suites.repetition.model_dump()
    samples = suites.answer(
        ctx.server,
        ctx.swap.activate(policy),
        policy,
        plan,
        ctx.concurrency,
        ctx.seed,
        ctx.system_prompt,  # the one turn (programs/respond.py)
        ctx.timeout_s,
        f"stage{n} {step}",
        ctx.embedding_model,
        ctx.model,
        repetition,
    )
    for suite, rows in samples.items():
        write_jsonl_atomic(folder / f"{suite}.jsonl", rows)
    scores, not_measured = all_scores(samples), {}
    for suite in ("harmlessness", "harmbench"):  # the base's guard on each answer
        if suite not in samples or ctx.guard.mode == "off":
            continue
        jobs, verdicts = guard.answer_jobs(samples[suite]), Records(folder / f"{suite}_guard.jsonl")
        classify(ctx, jobs, verdicts, f"stage{n} {step}: guard")
        unsafe = sum(not verdicts.get(j.id)["verdict"]["safe"] for j in jobs)
        scores[f"{suite}_unsafe"] = proportion(unsafe, len(jobs))
    if "helpfulness" in samples and n:  # the base judges our answers against another stage's
        found, not_measured = helpfulness_win_rates(
            ctx, st, n, step, samples["helpfulness"], folder, reference
        )
        scores.update(found)
    if st.suites.lm_eval_tasks and which == "dev":
        scores.update(
            suites.extra_tasks(
                ctx.server,
                ctx.swap.activate(policy),
                st.suites.lm_eval_tasks,
                plan[0].items,
                plan[0].cap,
                ctx.concurrency,
                ctx.seed,
                ctx.timeout_s,
                ctx.model,
            )
        )
    optimized = ctx.run.step_stats(n, "optimize") if n else {}
    record = eval_record(
        policy,
        which,
        ctx.guard.mode,
        scores,
        cap_shares(samples, plan),
        not_measured,
        optimized,
        st.optimize.programs,
    )
    write_json_atomic(folder.with_suffix(".json"), record)  # eval.json, test.json
    shown = {k: v["score"] for k, v in scores.items() if "score" in v}
    return {**shown, **({"not_measured": sorted(not_measured)} if not_measured else {})}


def helpfulness_win_rates(
    ctx, st: StageConfig, n: int, step: str, answers: list[dict], folder, reference: str
) -> tuple[dict, dict]:
    """The win rates against the previous stage and the base, the base judging
    (cai/measuring/win_rate.py)."""
    out = Records(folder / "win_judgments.jsonl")

    def ask(jobs, label):
        return ctx.jobs(
            jobs,
            Judge,
            "better",
            BASE_NAME,
            st.generation.judge,
            out,
            "evaluate/judge",
            f"stage{n} {step}: {label}",
        )

    def answers_of(other):
        return {
            r["id"]: r["response"] for r in ctx.run.read(stage_number(other), "eval/helpfulness")
        }

    against = {"win_rate_vs_previous": reference, "win_rate_vs_base": BASE_NAME}
    return win_rates(
        answers,
        against,
        answers_of,
        ask,
        out,
        st.suites.position_check_items,
        st.suites.max_position_bias,
    )
