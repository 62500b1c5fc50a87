"""Serving a trained stage on the CPU: runtime LoRA against a merged checkpoint reloaded in place.

    python bench/swap.py [--profile cpu] [--requests N]

Both ways a stage's policy can be served without a restart (`serve.swap`, cai/serving/server.py):

- `lora`: the server runs with `--enable-lora` and the adapter is hot-loaded
  (`/v1/load_lora_adapter`); requests name the adapter.
- `merged`: the adapter is merged into a checkpoint (PEFT's merge_and_unload) whose weights the
  server reloads in place (`reload_weights` through `/collective_rpc`), with no LoRA in the engine.

Each way times the swap (merge + reload, or the adapter load, each with its check) and a
stage-sized generation: the profile's respond step (its tasks times its samples, at its
concurrency and sampling) through the new policy, on the stage-1 seed tasks with their rules.
Prints both, the ratio, and `swap_seconds=X` last: the swap of the way the profile chose.
"""

from __future__ import annotations

import random
import tempfile
import time
from pathlib import Path

import common  # noqa: E402 (bench/common.py: puts the checkout on the path)

ROOT = common.ROOT

from cai.data import constraints  # noqa: E402
from cai.serving.lm import Endpoint, Job, program_call, run_jobs  # noqa: E402
from cai.serving.server import ServeSettings, VLLMServer  # noqa: E402
from cai.serving.swap import make_swap  # noqa: E402
from cai.store import Records  # noqa: E402
from cai.training.adapters import init_adapter  # noqa: E402
from programs.respond import Responder  # noqa: E402


def stage_jobs(st, count: int | None) -> list[Job]:
    """The respond step's requests for a stage of the profile's size, on the stage's seed tasks."""
    tasks = st.counts.seeds_used + st.counts.proposed
    jobs = []
    for k in range(st.counts.samples):
        for i in range(tasks):
            request = st.seeds[i % len(st.seeds)]
            rule = constraints.draw(random.Random(f"bench-{i}"))
            jobs.append(Job(f"t{i:03d}-r{k}", {"request": f"{request} {rule['description']}"}))
    return jobs[:count] if count else jobs


def generate(
    server: VLLMServer, served: str, name: str, jobs: list[Job], st, concurrency: int, folder: Path
) -> tuple[float, int]:
    """Seconds and completion tokens of `jobs` sent to `name` (served as `served`) through our
    pipeline (cai/serving/lm.py)."""
    endpoint = Endpoint(server.api_base, server.api_key, served, "plain", 600, label=name)
    start = time.perf_counter()
    stats = run_jobs(
        jobs,
        program_call(Responder, "response", endpoint, st.generation.respond),
        Records(folder / f"{name}.jsonl"),
        concurrency,
        0,
        progress=f"{server.settings.swap}: generation",
    )
    return time.perf_counter() - start, stats["completion_tokens"]


def main() -> None:
    p = common.parser(__doc__)
    p.add_argument("--requests", type=int, help="send only the first N of the stage's requests")
    args = p.parse_args()
    run = common.load(args.profile)
    profile, st, model = run.profile, run.stage, run.model
    jobs = stage_jobs(st, args.requests)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        adapter = init_adapter(model, tmp / "adapter", st.train)
        for way in ("lora", "merged"):
            settings = ServeSettings(
                model=model,
                max_lora_rank=st.train.lora_r,
                **{**profile.serve.model_dump(), "swap": way},
            )
            with VLLMServer(settings, tmp / f"{way}.log", tmp / f"{way}.pid") as server:
                start = time.perf_counter()
                # lora: the load, its /v1/models check and a probe; merged: the merge, the reload,
                # the prefix cache reset, a probe
                (strategy := make_swap(server, tmp / way)).make_servable("stage1", adapter)
                swap = time.perf_counter() - start
                seconds, tokens = generate(
                    server,
                    strategy.activate("stage1"),
                    "stage1",
                    jobs,
                    st,
                    profile.concurrency,
                    tmp / way,
                )
            results[way] = (swap, seconds, tokens)
            print(
                f"{way}: swap {swap:.2f} s; {len(jobs)} requests (the respond step of a stage of "
                f"profile {args.profile}) in {seconds:.1f} s, {tokens / seconds:.0f} tokens/s",
                flush=True,
            )
    chosen = profile.serve.swap
    lora, merged = results["lora"], results["merged"]
    print(
        f"stage-sized generation: runtime LoRA {lora[1]:.1f} s, merged {merged[1]:.1f} s: merged "
        f"is {lora[1] / merged[1]:.2f}x as fast; swap {lora[0]:.2f} s against {merged[0]:.2f} s; "
        f"profile {args.profile} serves `{chosen}`"
    )
    print(f"swap_seconds={results[chosen][0]:.3f}")


if __name__ == "__main__":
    main()
