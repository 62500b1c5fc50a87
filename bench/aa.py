"""The noise floor of the evaluation: the unchanged base evaluated twice on the same items, once as
the server loaded it (stage 0's way) and once after the merged swap path reloaded the same weights
in place (how every later stage arrives: `reload_weights`, the prefix cache reset). Greedy answers
that differ between the two, and the item scores that flip, are noise the serving path adds.

    python bench/aa.py [--profile cpu] [--items N] [--sets dev,test]

Prints each score's flipped items and `aa_flips=N of M` last (items with any score flipped, of the
items compared); writes runs/aa-<profile>/aa.json, which the report's verdict reads as its noise
floor.
"""

from __future__ import annotations

import datetime
import tempfile
from pathlib import Path

import common  # noqa: E402 (bench/common.py: puts the checkout on the path)

ROOT = common.ROOT

from cai.measuring import suites  # noqa: E402
from cai.serving.server import ServeSettings, VLLMServer  # noqa: E402
from cai.serving.swap import MergedSwap  # noqa: E402
from cai.store import BASE_NAME, write_json_atomic  # noqa: E402

# The 0/1 item scores compared, by suite: (score name as the verdict calls it, lm-eval's per-item
# metric)
ITEM_SCORES = {
    "instruction_following": [
        ("instruction_following", "prompt_level_strict_acc"),
        ("instruction_following_loose", "prompt_level_loose_acc"),
    ],
    "harmlessness": [("harmlessness_refusal", "refusal")],
    "over_refusal": [("over_refusal", "refusal")],
    "ifeval": [
        ("ifeval_prompt_strict", "prompt_level_strict_acc"),
        ("ifeval_prompt_loose", "prompt_level_loose_acc"),
    ],
    "harmbench": [("harmbench_refusal", "refusal")],
    "rho_overrefusal": [("rho_overrefusal", "refusal")],
}


def evaluate(
    server,
    swap,
    name: str,
    st,
    sets: list[str],
    items: int | None,
    repetition: dict | None,
    model: str,
    profile,
) -> dict:
    plan = [b for which in sets for b in suites.batches(st, which, 0)]
    if items:
        plan = [suites.Batch(b.suites, min(items, b.items or items), b.cap) for b in plan]
    return suites.answer(
        server,
        swap.activate(name),
        name,
        plan,
        profile.concurrency,
        0,
        profile.system_prompt,  # the one turn (programs/respond.py)
        profile.request_timeout_s,
        f"aa: {name}",
        profile.embedding_model,
        model,
        repetition,
    )


def main() -> None:
    p = common.parser(__doc__)
    p.add_argument(
        "--items",
        type=int,
        help="the first N items of each suite and benchmark (default: as the profile evaluates)",
    )
    p.add_argument("--sets", default="dev,test", help="dev, test, or both (default)")
    p.add_argument("--out", type=Path, help="default: runs/aa-<profile>/aa.json")
    args = p.parse_args()
    run = common.load(args.profile)
    profile, st, model = run.profile, run.stage, run.model
    repetition = st.suites.repetition and st.suites.repetition.model_dump()
    settings = ServeSettings(
        model=model, seed=0, **{**profile.serve.model_dump(), "swap": "merged"}
    )
    sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    with (
        tempfile.TemporaryDirectory() as tmp,
        VLLMServer(settings, Path(tmp) / "server.log", Path(tmp) / "server.pid") as server,
    ):
        swap = MergedSwap(server, Path(tmp) / "merged")
        # as loaded
        first = evaluate(server, swap, BASE_NAME, st, sets, args.items, repetition, model, profile)
        # the same weights, through reload_weights and a prefix-cache reset
        swap.put("base-reloaded", Path(model))
        again = evaluate(
            server, swap, "base-reloaded", st, sets, args.items, repetition, model, profile
        )
    flips, flipped_items, answers_differ, compared = {}, set(), 0, 0
    for suite, rows in first.items():
        other = {r["id"]: r for r in again.get(suite, [])}
        compared += len(rows)
        for r in rows:
            answers_differ += r["response"] != other[r["id"]]["response"]
        for score, metric in ITEM_SCORES.get(suite, []):
            changed = [
                r["id"]
                for r in rows
                if float(r["metrics"][metric]) != float(other[r["id"]]["metrics"][metric])
            ]
            flips[score] = len(changed)
            flipped_items.update(f"{suite}/{i}" for i in changed)
            print(
                f"{score}: {len(changed)} of {len(rows)} items flipped"
                + (f" ({', '.join(changed[:10])})" if changed else ""),
                flush=True,
            )
    print(f"answers that differ: {answers_differ} of {compared}")
    out = args.out or ROOT / "runs" / f"aa-{args.profile}" / "aa.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(
        out,
        {
            "profile": args.profile,
            "model": profile.model,
            "date": datetime.date.today().isoformat(),
            "sets": sets,
            "items": compared,
            "answers_differ": answers_differ,
            "flips": flips,
        },
    )
    print(f"wrote {out}")
    print(f"aa_flips={len(flipped_items)} of {compared}")


if __name__ == "__main__":
    main()
