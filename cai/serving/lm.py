"""DSPy programs against the served model, many requests in flight at once.

Each request gets its own `dspy.LM` carrying its seed (derived from the record id),
so results don't depend on scheduling and a resumed step reproduces what an
uninterrupted one would have written. Records are appended as each request
finishes, so a kill loses only what was in flight. DSPy's cache is off: its key
leaves out `api_base`, so a rebuilt adapter under an old name would get stale
answers (PITFALLS.md).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import random
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Callable

import dspy
from dspy.utils.exceptions import AdapterParseError, LMInvalidRequestError

from cai.config.settings import Sampling
from cai.progress import StepProgress
from cai.store import Records
from programs.adapter import PlainAdapter

# A reply cut at `max_tokens` is expected (the profiles cap answers on purpose) and its tokens are
# counted in the record; DSPy's warning for each one would bury the progress lines.
logging.getLogger("dspy.clients.lm").setLevel(logging.ERROR)


class RequestFailed(RuntimeError):
    """A request failed for a reason other than its own content: the server is down or hung."""


@dataclass
class Endpoint:
    """Where a stage's model is served and how to talk to it."""

    api_base: str
    api_key: str
    # the name requests are sent to: stage0, stageN (an adapter), or the merged server's one name
    model: str
    adapter: str = "plain"
    timeout_s: float = 300.0
    label: str | None = None  # which policy answers (stage0, stageN), recorded; default: `model`

    @property
    def policy(self) -> str:
        return self.label or self.model

    def lm(self, sampling: Sampling, seed: int) -> dspy.LM:
        return dspy.LM(
            f"openai/{self.model}",
            api_base=self.api_base,
            api_key=self.api_key,
            temperature=sampling.temperature,
            max_tokens=sampling.max_tokens,
            seed=seed,
            cache=False,
            num_retries=3,
            timeout=self.timeout_s,
            **(
                {"logprobs": True, "top_logprobs": sampling.top_logprobs}
                if sampling.top_logprobs
                else {}
            ),
        )

    def dspy_adapter(self) -> dspy.Adapter:
        if self.adapter == "plain":
            return PlainAdapter()
        return dspy.ChatAdapter(use_json_adapter_fallback=False)


@dataclass
class Job:
    id: str
    inputs: dict
    meta: dict = field(default_factory=dict)  # copied into the record as it is


def request_seed(base_seed: int, rid: str) -> int:
    """A per-request seed from the run seed and the record id (stable across resumes)."""
    digest = hashlib.sha256(f"{base_seed}:{rid}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def seeded(base_seed: int, label: str) -> random.Random:
    """A generator for one draw (a task's rule, a stage's seed tasks), seeded from the run seed and
    what it draws for: the same draw on a resumed run, whatever else was drawn before it."""
    return random.Random(f"{base_seed}-{label}")


def program_call(
    make_program: Callable[[], dspy.Module],
    output: str | tuple[str, ...],
    endpoint: Endpoint,
    sampling: Sampling,
):
    """A `run_jobs` call that runs a fresh DSPy program on one job and returns its record fields:
    its `output` field (or fields, for a program of several calls), and the tokens of all its calls.

    A reply that does not parse, or a request the server refuses (too long for the
    context), is a record with ok=False; anything else propagates (the server is down).
    """
    outputs = (output,) if isinstance(output, str) else output
    adapter = endpoint.dspy_adapter()

    def call(job: Job, seed: int) -> dict:
        lm = endpoint.lm(sampling, seed)
        rec: dict = {"model": endpoint.policy}
        with dspy.context(lm=lm, adapter=adapter):
            try:
                pred = make_program()(**job.inputs)
                rec.update(ok=True, **{name: getattr(pred, name) for name in outputs})
                if sampling.top_logprobs and pred.get("logprobs"):
                    rec["logprobs"] = token_logprobs(pred.logprobs)
            except AdapterParseError as e:
                rec.update(ok=False, error=f"unparseable: {e.lm_response!r:.200}")
            # this one request was refused (e.g. longer than the context)
            except LMInvalidRequestError as e:
                rec.update(ok=False, error=f"rejected: {str(e)[:200]}")
        usages = [entry.get("usage") or {} for entry in lm.history]
        rec["messages"] = lm.history[-1].get("messages") if lm.history else None
        rec["tokens"] = {
            "prompt": sum(u.get("prompt_tokens", 0) for u in usages),
            "completion": sum(u.get("completion_tokens", 0) for u in usages),
        }
        return rec

    return call


def token_logprobs(logprobs) -> list[dict]:
    """Per generated token: the token and its top alternatives {token: logprob} (how sure a verdict
    was)."""

    def get(obj, name):
        return getattr(obj, name) if hasattr(obj, name) else obj.get(name)

    return [
        {
            "token": get(t, "token"),
            "top": {
                get(a, "token"): round(get(a, "logprob"), 4) for a in get(t, "top_logprobs") or []
            },
        }
        for t in (get(logprobs, "content") or [])
    ]


def run_jobs(
    jobs: list[Job],
    call: Callable[[Job, int], dict],
    out: Records,
    concurrency: int,
    base_seed: int,
    program_version: str = "",
    progress: str | None = None,
    prime: int = 0,
) -> dict:
    """Run `call(job, seed)` for every job not yet in `out`; append one record each.

    `call` returns the record's fields: ok, the output or an `error` starting with
    "unparseable" or "rejected", tokens. Any exception means the server is down or
    hung: RequestFailed. Returns counts and tokens for the manifest. `progress` names
    the step in a progress line (cai/progress.py). `prime`: the first this many requests go
    ahead, so that a prefix the jobs share (the guard's instructions, the proposer's demos) is
    in vLLM's prefix cache before the rest arrive; sent together, each computes it again.
    """
    todo = [j for j in jobs if j.id not in out]
    shown = (
        StepProgress(progress, len(jobs), done=len(jobs) - len(todo))
        if progress
        else contextlib.nullcontext()
    )

    def one(job: Job) -> dict:
        seed = request_seed(base_seed, job.id)
        try:
            fields = call(job, seed)
        except RequestFailed:
            raise
        except Exception as e:  # the server is down, hung or refuses us: not a record to keep
            raise RequestFailed(
                f"{program_version or 'request'} {job.id}: {type(e).__name__}: {e}"[:500]
            ) from e
        return {"id": job.id, **job.meta, "program": program_version, "seed": seed, **fields}

    pool = ThreadPoolExecutor(max_workers=concurrency)
    try:
        with shown:
            waves = [todo[:prime], todo[prime:]] if prime else [todo]
            for wave in waves:
                for f in as_completed([pool.submit(one, j) for j in wave]):
                    rec = f.result()
                    out.append(rec)
                    if progress:
                        shown.advance(tokens=rec["tokens"]["completion"])
    finally:
        # On an error or a signal, drop the queued requests instead of running them all
        # first; in-flight ones end when the server is stopped on the way out.
        pool.shutdown(wait=False, cancel_futures=True)

    records = [out.get(j.id) for j in jobs]
    return {
        "requested": len(jobs),
        "resumed": len(jobs) - len(todo),
        "ok": sum(1 for r in records if r and r["ok"]),
        "unparseable": sum(
            1 for r in records if r and not r["ok"] and r["error"].startswith("unparseable")
        ),
        "rejected": sum(
            1 for r in records if r and not r["ok"] and r["error"].startswith("rejected")
        ),
        "prompt_tokens": sum(r["tokens"]["prompt"] for r in records if r),
        "completion_tokens": sum(r["tokens"]["completion"] for r in records if r),
    }
