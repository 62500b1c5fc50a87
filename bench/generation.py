"""Respond-step throughput: our pipeline against the raw server, same prompts, same concurrency.

    python bench/generation.py [--requests 32] [--concurrency 16] [--max-tokens 128]

One server (the embedded default model, served as the cpu profile says), one set of prompts (seed
tasks of the curriculum). First the prompts go straight to `/v1/chat/completions` from a thread pool
(the raw engine); then through `run_jobs` with the respond program, a fresh `dspy.LM` per request
and a record appended per answer (our pipeline). Both use the same sampling settings and per-request
seeds (so the same tokens), and the raw side runs before and after ours. Prints completion tokens/s
of each and `generation_ratio=X` (ours / raw) last.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cai.config.curriculum import load_curriculum  # noqa: E402
from cai.config.settings import Sampling  # noqa: E402
from cai.serving.lm import Endpoint, Job, program_call, request_seed, run_jobs  # noqa: E402
from cai.serving.model import EMBEDDED, resolve_model  # noqa: E402
from cai.serving.server import BASE_NAME, ServeSettings, VLLMServer  # noqa: E402
from cai.store import Records  # noqa: E402
from programs.respond import Responder, turn  # noqa: E402


def raw(
    server: VLLMServer, prompts: list[str], sampling: Sampling, concurrency: int, tag: str
) -> tuple[int, float, float]:

    def one(i: int) -> int:
        r = requests.post(
            server.api_base + "/chat/completions",
            headers=server.headers(),
            timeout=600,
            json={
                "model": BASE_NAME,
                "temperature": sampling.temperature,
                "max_tokens": sampling.max_tokens,
                "seed": request_seed(0, f"{tag}{i}"),
                "messages": turn(prompts[i]),
            },
        )
        r.raise_for_status()
        return r.json()["usage"]["completion_tokens"]

    start, cpu = time.perf_counter(), time.process_time()
    with ThreadPoolExecutor(concurrency) as pool:
        tokens = sum(pool.map(one, range(len(prompts))))
    return tokens, time.perf_counter() - start, time.process_time() - cpu


def ours(
    server: VLLMServer, prompts: list[str], sampling: Sampling, concurrency: int, tag: str
) -> tuple[int, float, float]:
    endpoint = Endpoint(server.api_base, server.api_key, BASE_NAME)
    jobs = [Job(f"{tag}{i}", {"request": p}) for i, p in enumerate(prompts)]
    with tempfile.TemporaryDirectory() as tmp:
        start, cpu = time.perf_counter(), time.process_time()
        stats = run_jobs(
            jobs,
            program_call(Responder, "response", endpoint, sampling),
            Records(Path(tmp) / "r.jsonl"),
            concurrency,
            0,
        )
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return stats["completion_tokens"], seconds, cpu


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--requests", type=int, default=32)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=128)
    args = p.parse_args()
    cur, _ = load_curriculum(ROOT / "curriculum.yaml")
    seeds = [s for st in cur.stages for s in st.seeds]
    prompts = [seeds[i % len(seeds)] for i in range(args.requests)]
    sampling = Sampling(temperature=0.8, max_tokens=args.max_tokens)
    model = resolve_model(EMBEDDED, ROOT / "models")
    serve = ServeSettings(model=model, **cur.profiles["cpu"].serve.model_dump())
    with tempfile.TemporaryDirectory() as tmp:
        with VLLMServer(serve, Path(tmp) / "server.log", Path(tmp) / "server.pid") as server:
            raw(server, prompts[:4], sampling, args.concurrency, "warm")  # warm-up, not timed
            # raw, ours, raw: the raw rate is the mean of both sides, so drift over the run
            # (warm-up, a busy core) does not favour the one that runs later
            raw_runs = [raw(server, prompts, sampling, args.concurrency, "raw")]
            our_tokens, our_s, our_cpu = ours(server, prompts, sampling, args.concurrency, "raw")
            raw_runs.append(raw(server, prompts, sampling, args.concurrency, "raw"))
    raw_tokens, raw_s = sum(t for t, _, _ in raw_runs), sum(s for _, s, _ in raw_runs)
    raw_rate, our_rate = raw_tokens / raw_s, our_tokens / our_s
    print(f"requests={args.requests} concurrency={args.concurrency} max_tokens={args.max_tokens}")
    # The client's own CPU seconds: on a CPU-only machine they come out of the server's cores.
    for i, (t, s, cpu) in enumerate(raw_runs):
        print(
            f"raw #{i + 1}: {t} tokens in {s:.1f}s = {t / s:.1f} tokens/s (client CPU {cpu:.1f} s)"
        )
    print(
        f"ours: {our_tokens} tokens in {our_s:.1f}s = {our_rate:.1f} tokens/s (client CPU "
        f"{our_cpu:.1f} s)"
    )
    print(f"generation_ratio={our_rate / raw_rate:.3f}")


if __name__ == "__main__":
    main()
