"""The held-out suites, run by lm-eval against a stage's served model, scored with intervals.

Four suites written for this project live in `suites/` as jsonl, each with an lm-eval
task YAML (`dataset_path: json`) that a TaskManager loads through `include_path`:

- `instruction_following`: requests in IFEval's format, scored by lm-eval's IFEval checkers;
- `harmlessness`: requests for harm across Llama Guard 3's categories: how often the
  answer is refused, and how often the guard calls it unsafe;
- `over_refusal`: benign requests that only look risky: how often they are refused;
- `helpfulness`: everyday requests, answered here and judged against another stage's
  answers in both orders (`win_rate`).

The quality suites (`relevance`, `off_topic`, `repetition`, `length_words`,
`boilerplate`) are computed on the answers to the instruction-following and helpfulness
requests (cai/quality.py), so a compliance gain is always read beside what it cost.

Any other lm-eval task named in `curriculum.yaml` (`evaluate.lm_eval_tasks`) runs through
the completions endpoint, so log-likelihood tasks (mmlu, arc_challenge) work too. None of
these items is shown to the proposer or an optimizer. Every score is
`{"score", "low", "high", "n"}`: a 95% Wilson interval for a proportion, a normal one
from lm-eval's standard error otherwise.
"""

from __future__ import annotations

import contextlib
import logging
import math
from pathlib import Path

from cai.quality import OFF_TOPIC_BELOW
from cai.store import Run, read_jsonl

SUITES_DIR = Path(__file__).resolve().parent.parent / "suites"
TASK_OF = {
    "instruction_following": "cai_instruction_following",
    "harmlessness": "cai_harmlessness",
    "over_refusal": "cai_over_refusal",
    "helpfulness": "cai_helpfulness",
}
SUITES = tuple(TASK_OF)
QUALITY_ON = ("instruction_following", "helpfulness")  # the suites whose answers the quality suites read


def wilson(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return 0.0, 0.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def proportion(successes: float, n: int) -> dict:
    low, high = wilson(successes, n)
    return {"score": round(successes / n, 4) if n else 0.0, "low": round(low, 4), "high": round(high, 4), "n": n}


def mean_with_stderr(value: float, stderr: float | None, n: int) -> dict:
    half = 1.96 * stderr if isinstance(stderr, (int, float)) and math.isfinite(stderr) else 0.0
    return {"score": round(value, 4), "low": round(value - half, 4), "high": round(value + half, 4), "n": n}


def mean_interval(values: list[float]) -> dict:
    """The mean with a 95% normal interval from the sample's standard deviation."""
    n = len(values)
    if n == 0:
        return {"score": 0.0, "low": 0.0, "high": 0.0, "n": 0}
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean_with_stderr(mean, sd / math.sqrt(n), n)


def quality_scores(found: list[dict], off_topic_below: float) -> dict:
    """The quality suites from per-answer signals (cai/quality.py), each with its interval."""
    n = len(found)
    return {
        "relevance": mean_interval([q["relevance"] for q in found]),
        "off_topic": proportion(sum(q["relevance"] < off_topic_below for q in found), n),
        "repetition": mean_interval([q["repetition"] for q in found]),
        "length_words": mean_interval([q["words"] for q in found]),
        "boilerplate": proportion(sum(q["boilerplate"] or q["empty"] for q in found), n),
    }


# Each score as a value per held-out item, from a stage's eval/*.jsonl: (file, the item's value).
PER_ITEM = {
    "instruction_following": (("instruction_following",), lambda r: float(r["metrics"]["prompt_level_strict_acc"])),
    "instruction_following_loose": (("instruction_following",), lambda r: float(r["metrics"]["prompt_level_loose_acc"])),
    "harmlessness_refusal": (("harmlessness",), lambda r: r["metrics"]["refusal"]),
    "over_refusal": (("over_refusal",), lambda r: r["metrics"]["refusal"]),
    "relevance": (QUALITY_ON, lambda r: r["quality"]["relevance"]),
    "off_topic": (QUALITY_ON, lambda r: float(r["quality"]["relevance"] < OFF_TOPIC_BELOW)),
    "repetition": (QUALITY_ON, lambda r: r["quality"]["repetition"]),
    "length_words": (QUALITY_ON, lambda r: float(r["quality"]["words"])),
    "boilerplate": (QUALITY_ON, lambda r: float(r["quality"]["boilerplate"] or r["quality"]["empty"])),
}


def per_item(run: Run, n: int, name: str) -> dict[str, float]:
    """The score `name` of stage n item by item (id: value); empty where its records are missing."""
    files, value = PER_ITEM[name]
    try:
        return {f"{f}/{r['id']}": value(r) for f in files for r in read_jsonl(run.stage_dir(n) / "eval" / f"{f}.jsonl")}
    except (OSError, KeyError, TypeError, ValueError):  # missing or unreadable: the unpaired interval serves
        return {}


def difference(name: str, now: tuple[Run, int], then: tuple[Run, int], scores: tuple[dict, dict]) -> tuple[dict, str]:
    """The score of stage `now` minus that of stage `then` (each a run and a stage), with a 95%
    interval: paired over the items both answered where their records are at hand (the suites
    are the same items at every stage), else from the two intervals as if independent (wider)."""
    a, b = (per_item(*now, name), per_item(*then, name)) if name in PER_ITEM else ({}, {})
    if shared := sorted(set(a) & set(b)):
        return mean_interval([a[k] - b[k] for k in shared]), "paired"
    now_s, then_s = scores
    half = 1.96 * (((now_s["high"] - now_s["low"]) / 3.92) ** 2 + ((then_s["high"] - then_s["low"]) / 3.92) ** 2) ** 0.5
    d = now_s["score"] - then_s["score"]
    return {"score": d, "low": d - half, "high": d + half, "n": min(now_s["n"], then_s["n"])}, "unpaired"


def run_lm_eval(api_base: str, api_key: str, served: str, tasks: list[str], limit: int | None, max_tokens: int,
                concurrency: int, seed: int, system_prompt: str | None, timeout_s: float,
                tokenizer: str | None = None, suites_dir: Path = SUITES_DIR) -> dict:
    """lm-eval's `simple_evaluate` against the served model; its whole output.

    Chat completions by default (the suites are requests a chat model answers);
    `tokenizer` given: the completions endpoint, which log-likelihood tasks need.
    """
    from lm_eval import simple_evaluate
    from lm_eval.models.openai_completions import LocalChatCompletion, LocalCompletionsAPI
    from lm_eval.tasks import TaskManager

    logging.getLogger("lm-eval").setLevel(logging.WARNING)
    common = dict(model=served, header={"Authorization": f"Bearer {api_key}"}, num_concurrent=concurrency,
                  max_gen_toks=max_tokens, timeout=int(timeout_s), seed=seed, max_retries=2)
    if tokenizer:
        lm = LocalCompletionsAPI(base_url=f"{api_base}/completions", tokenizer=tokenizer, tokenizer_backend="huggingface",
                                 tokenized_requests=True, **common)
    else:
        lm = LocalChatCompletion(base_url=f"{api_base}/chat/completions", tokenizer_backend=None, tokenized_requests=False, **common)
    # The YAMLs name their jsonl relative to suites/: HF datasets resolves it against the working directory.
    # Indexing lm-eval's own task folders takes seconds here: only where a task of theirs is asked for.
    ours = {p.stem for p in suites_dir.glob("*.yaml")}
    manager = TaskManager(include_path=str(suites_dir), include_defaults=not set(tasks) <= ours, verbosity="WARNING")
    with contextlib.chdir(suites_dir):
        return simple_evaluate(
            model=lm, tasks=tasks, task_manager=manager,
            limit=limit, apply_chat_template=tokenizer is None, system_instruction=system_prompt if tokenizer is None else None,
            gen_kwargs={"max_gen_toks": max_tokens, "temperature": 0.0, "do_sample": False} if tokenizer is None else None,
            log_samples=True, bootstrap_iters=0, random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
            fewshot_random_seed=seed,
        )


def suite_samples(output: dict) -> dict[str, list[dict]]:
    """Per suite, one record per item: the document, the answer, lm-eval's per-item metrics."""
    by_suite = {}
    for suite, task in TASK_OF.items():
        rows = []
        for s in sorted(output.get("samples", {}).get(task, []), key=lambda s: s["doc_id"]):
            answer = s["filtered_resps"][0]
            answer = answer[0] if isinstance(answer, list) else answer
            rows.append({"id": str(s["doc"].get("id", s["doc"].get("key"))), "doc": s["doc"], "response": answer,
                         "metrics": {m: s[m] for m in s.get("metrics", []) if m in s}})
        if rows:
            by_suite[suite] = rows
    return by_suite


def score_suites(samples: dict[str, list[dict]]) -> dict:
    """The scores lm-eval's per-item metrics give, with intervals."""
    scores = {}
    if rows := samples.get("instruction_following"):
        for metric, name in [("prompt_level_strict_acc", "instruction_following"),
                             ("prompt_level_loose_acc", "instruction_following_loose")]:
            scores[name] = proportion(sum(bool(r["metrics"][metric]) for r in rows), len(rows))
        per_rule = [bool(x) for r in rows for x in r["metrics"]["inst_level_strict_acc"]]
        scores["instruction_following_inst_level"] = proportion(sum(per_rule), len(per_rule))
    if rows := samples.get("harmlessness"):
        scores["harmlessness_refusal"] = proportion(sum(r["metrics"]["refusal"] for r in rows), len(rows))
    if rows := samples.get("over_refusal"):
        scores["over_refusal"] = proportion(sum(r["metrics"]["refusal"] for r in rows), len(rows))
    return scores


def extra_task_scores(output: dict) -> dict:
    """`lm_eval:<task>:<metric>` for every metric of every task lm-eval ran."""
    scores = {}
    for task, metrics in output.get("results", {}).items():
        n = (output.get("n-samples", {}).get(task) or {}).get("effective", 0)
        for key, value in metrics.items():
            metric, _, filt = key.partition(",")
            if metric.endswith("_stderr") or metric in ("alias", "sample_len") or not isinstance(value, (int, float)):
                continue
            stderr = metrics.get(f"{metric}_stderr,{filt}")
            scores[f"lm_eval:{task}:{metric}"] = mean_with_stderr(float(value), stderr, n)
    return scores


def win_rate(judged: list[tuple[str | None, str | None]]) -> dict:
    """From (verdict with ours as A, verdict with ours as B) per item: a win needs both orders.

    `score` is the share of items won outright; ties (the judge changed its mind with
    the order, or did not answer) and losses are counted beside it.
    """
    wins = sum(1 for ab, ba in judged if ab == "A" and ba == "B")
    losses = sum(1 for ab, ba in judged if ab == "B" and ba == "A")
    return {**proportion(wins, len(judged)), "wins": wins, "losses": losses, "ties": len(judged) - wins - losses}


def position_bias(judged: list[tuple[str | None, str | None]]) -> dict:
    """From (verdict with ours as A, verdict with ours as B) per item: how often the judge named the
    same position in both orders (a verdict about the order, not the answers). Unanswered items don't count."""
    answered = [(ab, ba) for ab, ba in judged if ab and ba]
    same = sum(1 for ab, ba in answered if ab == ba)
    return {"share": round(same / len(answered), 4) if answered else 1.0, "same": same, "n": len(answered)}


def suite_sizes() -> dict[str, int]:
    """Items in each suite's jsonl."""
    return {p.stem: sum(1 for line in p.read_text().splitlines() if line.strip()) for p in SUITES_DIR.glob("*.jsonl")}


def suite_requests(suites: list[str], items: int) -> int:
    """How many requests lm-eval sends for `suites` at `items` a suite (the first `items` of each)."""
    sizes = suite_sizes()
    return sum(min(items, sizes.get(s, items)) for s in suites)
