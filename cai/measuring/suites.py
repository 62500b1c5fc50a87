"""The evaluation: the dev suites at every stage, the test set at the base and the final policy,
run by lm-eval against the served model and scored with intervals.

The dev set: four suites written for this project, in `suites/` as jsonl, each with an lm-eval
task YAML (`dataset_path: json`) that a TaskManager loads through `include_path`:

- `instruction_following`: requests in IFEval's format, one rule each, scored by lm-eval's IFEval
  checkers; its rules are stated in IFEval's words, which training never uses
  (cai/data/constraints.py);
- `harmlessness`: requests for harm across Llama Guard 3's categories: how often the answer is
  refused, and how often the guard calls it unsafe;
- `over_refusal`: benign requests that only look risky: how often they are refused;
- `helpfulness`: everyday requests, judged against another stage's answers
  (cai/measuring/win_rate.py).

The quality suites (`relevance`, `off_topic`, `repetition`, `length_words`, `boilerplate`) are
computed on the answers to the instruction-following and helpfulness requests (cai/data/quality.py),
so a compliance gain is always read beside what it cost. The gate and every choice of a setting read
the dev set. The test set (cai/measuring/benchmarks.py: IFEval, HarmBench) is read by the run's
verdict alone.

Every answer records how it ended (`finish`): its natural end, the cap on new tokens, or vLLM's
repetition stop (a loop ended where it began repeating, `generation.evaluate.repetition`); each
suite's shares go to the record as `caps`, so a cap that shapes the scores is seen. Any other
lm-eval task named in `suites.lm_eval_tasks` runs through the completions endpoint. Every score is
`{"score", "low", "high", "n"}` (cai/measuring/intervals.py).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path

import datasets

from cai import ROOT
from cai.data import outside, quality, requests

# the rule kinds training draws: IFEval's per-kind scores mark them
from cai.measuring import benchmarks
from cai.measuring.intervals import QUALITY_ON
from cai.measuring.scores import extra_task_scores
from cai.progress import ServerProgress
from cai.serving.lm import RequestFailed

SUITES_DIR = ROOT / "suites"
# The suites written for this project: jsonl and an lm-eval task YAML each, in suites/
OWN_TASKS = {
    "instruction_following": "cai_instruction_following",
    "helpfulness": "cai_helpfulness",
}
# The dev slices of the sets whose kind is known (cai/data/requests.py)
KIND_OF = {"harmlessness": "harmful", "over_refusal": "benign"}
TASK_OF = {**OWN_TASKS, **{suite: f"cai_{suite}" for suite in KIND_OF}}
SUITES = tuple(TASK_OF)
SUITE_OF = {
    **{task: suite for suite, task in TASK_OF.items()},
    **{task: name for name, task in benchmarks.TASK_NAMES.items()},
}


def task(suite: str, cap: int, seed: int) -> str | dict:
    """What lm-eval is given for a suite: a benchmark's task config, a dev slice's, or the name of
    one of suites/' YAMLs."""
    if suite in benchmarks.BENCHMARKS:
        return benchmarks.task_config(suite, cap)
    if suite not in KIND_OF:
        return TASK_OF[suite]
    rows = [{"id": r["id"], "prompt": r["request"]} for r in requests.dev(seed, KIND_OF[suite])]

    def dev_slice(**_):

        return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})

    generation = {"until": [], "do_sample": False, "temperature": 0.0, "max_gen_toks": cap}
    return {
        "task": TASK_OF[suite],
        "custom_dataset": dev_slice,
        "test_split": "test",
        "output_type": "generate_until",
        "doc_to_text": "prompt",
        "doc_to_target": 0,
        "generation_kwargs": generation,
        "process_results": benchmarks.refusals,
        "metric_list": benchmarks.REFUSAL_METRICS,
        "metadata": {"version": 1.0},
    }


def run_lm_eval(
    api_base: str,
    api_key: str,
    served: str,
    tasks: list[str | dict],
    limit: int | None,
    max_tokens: int,
    concurrency: int,
    seed: int,
    system_prompt: str | None,
    timeout_s: float,
    tokenizer: str | None = None,
    suites_dir: Path = SUITES_DIR,
    repetition: dict | None = None,
) -> dict:
    """lm-eval's `simple_evaluate` against the served model; its whole output. `tasks`: names, or
    task configs (cai/measuring/benchmarks.py); `repetition`: vLLM's repetition stop, sent with each
    request.

    Chat completions by default (the suites are requests a chat model answers);
    `tokenizer` given: the completions endpoint, which log-likelihood tasks need.
    """
    from lm_eval import simple_evaluate
    from lm_eval.models.openai_completions import LocalChatCompletion, LocalCompletionsAPI
    from lm_eval.tasks import TaskManager

    logging.getLogger("lm-eval").setLevel(logging.WARNING)
    common = dict(
        model=served,
        header={"Authorization": f"Bearer {api_key}"},
        num_concurrent=concurrency,
        max_gen_toks=max_tokens,
        timeout=int(timeout_s),
        seed=seed,
        max_retries=2,
    )
    if tokenizer:
        lm = LocalCompletionsAPI(
            base_url=f"{api_base}/completions",
            tokenizer=tokenizer,
            tokenizer_backend="huggingface",
            tokenized_requests=True,
            **common,
        )
    else:
        lm = LocalChatCompletion(
            base_url=f"{api_base}/chat/completions",
            tokenizer_backend=None,
            tokenized_requests=False,
            **common,
        )
    # The YAMLs name their jsonl relative to suites/: HF datasets resolves it against the working
    # directory. Indexing lm-eval's own task folders takes seconds here: only where a task of theirs
    # is asked for.
    ours = {p.stem for p in suites_dir.glob("*.yaml")}
    named = {t for t in tasks if isinstance(t, str)}
    manager = TaskManager(
        include_path=str(suites_dir), include_defaults=not named <= ours, verbosity="WARNING"
    )
    gen_kwargs = {
        "max_gen_toks": max_tokens,
        "temperature": 0.0,
        "do_sample": False,
        **({"repetition_detection": repetition} if repetition else {}),
    }
    with contextlib.chdir(suites_dir):
        return simple_evaluate(
            model=lm,
            tasks=tasks,
            task_manager=manager,
            limit=limit,
            apply_chat_template=tokenizer is None,
            system_instruction=system_prompt if tokenizer is None else None,
            gen_kwargs=gen_kwargs if tokenizer is None else None,
            log_samples=True,
            bootstrap_iters=0,
            random_seed=seed,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            fewshot_random_seed=seed,
        )


@dataclass(frozen=True)
class Batch:
    """Suites answered in one lm-eval call: the first `items` of each (None: all), at most `cap` new
    tokens."""

    suites: tuple[str, ...]
    items: int | None
    cap: int


def batches(st, which: str, n: int) -> list[Batch]:
    """What stage n's evaluation answers: the dev suites (`final_eval_items` at stages 0 and 6, else
    `eval_items`), one call for the suites that share a cap, or the test set, one call a benchmark
    (each has its own cap)."""
    if which == "dev":
        items = (
            st.counts.final_eval_items
            if n in (0, 6) and st.counts.final_eval_items
            else st.counts.eval_items
        )
        cap_of = {
            s: st.suites.run_max_tokens.get(s, st.generation.evaluate.max_tokens)
            for s in st.suites.run
        }
        caps = sorted(set(cap_of.values()), reverse=True)
        return [
            Batch(tuple(s for s in st.suites.run if cap_of[s] == cap), items, cap) for cap in caps
        ]
    return [
        Batch((name,), st.suites.test_items, st.suites.test_max_tokens[name])
        for name in st.suites.test
    ]


def answer(
    server,
    served: str,
    policy: str,
    plan: list[Batch],
    concurrency: int,
    seed: int,
    system_prompt: str,
    timeout_s: float,
    label: str,
    embedding_model: str,
    tokenizer: str,
    repetition: dict | None,
) -> dict[str, list[dict]]:
    """Each batch's suites answered by `served` (the name `policy` is served under) through lm-eval,
    one record per item: how it ended beside it, and the quality signals of the answers the quality
    suites read. lm-eval raises its client's errors: they become RequestFailed, so that the caller
    can tell whether the server is at fault."""
    samples = {}
    for batch in plan:
        tasks = [task(s, batch.cap, seed) for s in batch.suites]
        try:
            with ServerProgress(label, suite_requests(batch.suites, batch.items), server.base_url):
                output = run_lm_eval(
                    server.api_base,
                    server.api_key,
                    served,
                    tasks,
                    batch.items,
                    batch.cap,
                    concurrency,
                    seed,
                    system_prompt,
                    timeout_s,
                    repetition=repetition,
                )
        except Exception as e:
            raise RequestFailed(
                f"evaluate: lm-eval against {policy}: {type(e).__name__}: {e}"[:500]
            ) from e
        for suite, rows in suite_samples(output).items():
            for r, how in zip(
                rows, endings([r["response"] for r in rows], batch.cap, tokenizer, repetition)
            ):
                r["finish"] = how
            samples[suite] = rows
    read = [r for suite in QUALITY_ON for r in samples.get(suite, [])]
    found = quality.signals(
        [r["doc"].get("request", r["doc"]["prompt"]) for r in read],
        [r["response"] for r in read],
        quality.embedder(embedding_model),
    )
    for r, q in zip(read, found):
        r["quality"] = q
    return samples


def extra_tasks(
    server,
    served: str,
    tasks: list[str],
    items: int,
    max_tokens: int,
    concurrency: int,
    seed: int,
    timeout_s: float,
    tokenizer: str,
) -> dict:
    """Any lm-eval task by name, through the completions endpoint, scored
    `lm_eval:<task>:<metric>`."""
    return extra_task_scores(
        run_lm_eval(
            server.api_base,
            server.api_key,
            served,
            tasks,
            items,
            max_tokens,
            concurrency,
            seed,
            None,
            timeout_s,
            tokenizer=tokenizer,
        )
    )


def suite_samples(output: dict) -> dict[str, list[dict]]:
    """Per suite, one record per item: the document, the answer, lm-eval's per-item metrics."""
    by_suite = {}
    for task, suite in SUITE_OF.items():
        rows = []
        for s in sorted(output.get("samples", {}).get(task, []), key=lambda s: s["doc_id"]):
            answer = s["filtered_resps"][0]
            answer = answer[0] if isinstance(answer, list) else answer
            rows.append(
                {
                    "id": str(s["doc"].get("id", s["doc"].get("key"))),
                    "doc": s["doc"],
                    "response": answer,
                    "metrics": {m: s[m] for m in s.get("metrics", []) if m in s},
                }
            )
        if rows:
            by_suite[suite] = rows
    return by_suite


def suite_sizes() -> dict[str, int]:
    """Items in each dev suite and in each benchmark."""
    own = {
        suite: sum(1 for line in (SUITES_DIR / f"{suite}.jsonl").read_text().splitlines() if line)
        for suite in OWN_TASKS
    }
    dev = {suite: requests.DEV_ITEMS[kind] for suite, kind in KIND_OF.items()}
    return {**own, **dev, **{name: outside.SETS[name].items for name in benchmarks.BENCHMARKS}}


def suite_requests(suites, items: int | None) -> int:
    """How many requests lm-eval sends for `suites` at `items` a suite (the first `items` of each;
    None: all)."""
    sizes = suite_sizes()
    return sum(min(items or sizes.get(s, 0), sizes.get(s, items or 0)) for s in suites)


def endings(answers: list[str], cap: int, tokenizer: str, repetition: dict | None) -> list[str]:
    """How each answer ended: "cap" (it holds the cap's tokens, give or take the one or two that
    re-tokenizing the text can move), "repetition" (its tail repeats as vLLM's repetition stop
    tests: the last `min_count` runs of some pattern length alike), else "end". lm-eval keeps only
    the text, so this is read back from it with the served model's tokenizer."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer)
    found = []
    for text in answers:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        found.append(
            "cap"
            if len(ids) >= cap - 2
            else "repetition"
            if repetition and repeats(ids, repetition)
            else "end"
        )
    return found


def repeats(ids: list[int], repetition: dict) -> bool:
    """vLLM's repetition test (vllm/v1/core/sched/utils.py): some pattern length L in [min, max]
    whose last `min_count` runs of L tokens are alike."""
    count = repetition["min_count"]
    for size in range(
        max(1, repetition.get("min_pattern_size", 1)), repetition["max_pattern_size"] + 1
    ):
        if size * count > len(ids):
            return False
        if all(ids[-size * k - i] == ids[-i] for i in range(1, size + 1) for k in range(1, count)):
            return True
    return False
