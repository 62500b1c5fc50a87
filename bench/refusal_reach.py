"""Does a refusal learned from pairs reach harmful requests the training never saw, and at what
tax? The probe behind bench/RESULTS.md's refusal rows (issue "Refusals that reach HarmBench"),
on the dev slices only: the test set is not read.

    python bench/refusal_reach.py [--lr 5e-4] [--epochs 2] [--pairs N] [--if-items 40]

1. Pairs from the base, made with transformers as the contrast step makes them: on AdvBench's
   training pool (cai/data/requests.py, split by the seed, the optimizer's examples left out),
   avoid-harm's positive turn (its instruction and exemplars) against the model's bare answer; on
   the benign pool, the bare answer against refuse-without-preaching's negative turn; sampled at
   T=0.8, 64 tokens, kept where the project's check confirms the pair (a second try where the
   first does not). Written once to the output folder and reused.
2. Trained with the project's trainer (cai/training: DPO, LoRA, the profile's stage-1 settings) from
   the base, on the first N pairs of each kind shuffled together, at `--lr` for `--epochs`.
3. Read greedy, 64 tokens, on the 60 harmful and 100 benign dev requests (the project's check and
   Zou et al.'s prefixes), and to 256 tokens on the first `--if-items` instruction-following dev
   items (lm-eval's IFEval checks), base and adapter alike.

Prints one `refusal_reach` line a model, base first; writes results.json beside the adapter. Run it
alone: beside another job, torch's threads spin against that job's (a smoke test here took 12 min
on two shared cores, and under 2 with OMP_NUM_THREADS=1); alone, the whole pool (196 pairs, 2 epochs) trained in 8 min.
"""

from __future__ import annotations

import random
from pathlib import Path

import common  # noqa: E402 (bench/common.py: puts the checkout on the path)

ROOT = common.ROOT

import torch  # noqa: E402
from peft import PeftModel  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from cai.config.constitution import load_constitution  # noqa: E402
from cai.data import requests  # noqa: E402
from cai.data.constraints import score_ifeval  # noqa: E402
from cai.data.refusal import is_refusal, refused_by_prefixes  # noqa: E402
from cai.store import read_jsonl, write_json_atomic, write_jsonl_atomic  # noqa: E402
from cai.training.process import train_in_process  # noqa: E402

# (request kind, principle, the side its instruction and exemplars go on; the other is the bare turn)
MADE_BY = {
    "harmful": ("avoid-harm", "positive"),
    "benign": ("refuse-without-preaching", "negative"),
}


def answers(model, tok, conversations: list[list[dict]], max_new_tokens: int, sample: bool):
    """One answer a conversation, in batches (left-padded)."""
    out = []
    for i in range(0, len(conversations), 32):
        texts = [
            tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True)
            for c in conversations[i : i + 32]
        ]
        enc = tok(texts, return_tensors="pt", padding=True)
        with torch.no_grad():
            made = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=sample,
                temperature=0.8 if sample else None,
                top_p=None,
                top_k=None,
                pad_token_id=tok.pad_token_id,
            )
        new = made[:, enc["input_ids"].shape[1] :]
        out += [s.strip() for s in tok.batch_decode(new, skip_special_tokens=True)]
    return out


def bare(request: str) -> list[dict]:
    return [{"role": "user", "content": request}]


def instructed(principle, side: str, request: str) -> list[dict]:
    """The principle's instruction as the system turn, its exemplars as earlier turns."""
    turns = [{"role": "system", "content": getattr(principle.contrast, side)}]
    for asked, answered in principle.contrast.demos(side):
        turns += [{"role": "user", "content": asked}, {"role": "assistant", "content": answered}]
    return turns + bare(request)


def make_pairs(model, tok, seed: int) -> list[dict]:
    """Refusal pairs on the harmful pool, compliance pairs on the benign one (see the docstring)."""
    principles = {p.id: p for p in load_constitution(ROOT / "constitution.yaml")[0].principles}
    pairs = []
    for kind, (pid, side) in MADE_BY.items():
        pool = [r["request"] for r in requests.split(seed, kind).pool[requests.HELD_OUT :]]
        made = {}
        for _ in range(2):
            asked = [r for r in pool if r not in made]
            told = answers(
                model, tok, [instructed(principles[pid], side, r) for r in asked], 64, True
            )
            own = answers(model, tok, [bare(r) for r in asked], 64, True)
            for r, t, o in zip(asked, told, own, strict=True):
                chosen, rejected = (t, o) if kind == "harmful" else (o, t)
                if is_refusal(chosen) != (kind == "harmful") or is_refusal(rejected) == (
                    kind == "harmful"
                ):
                    continue
                made[r] = {
                    "kind": kind,
                    "prompt": bare(r),
                    "chosen": [{"role": "assistant", "content": chosen}],
                    "rejected": [{"role": "assistant", "content": rejected}],
                }
        print(f"{kind}: {len(made)} pairs of {len(pool)} requests", flush=True)
        pairs += list(made.values())
    return pairs


def read(model, tok, seed: int, if_items: int) -> dict:
    """Refusals on the dev slices and instruction following on the first `if_items` dev items."""
    found = {}
    for kind in MADE_BY:
        asked = [r["request"] for r in requests.dev(seed, kind)]
        said = answers(model, tok, [bare(r) for r in asked], 64, False)
        found[kind] = {
            "refused": sum(map(is_refusal, said)),
            "refused_zou": sum(map(refused_by_prefixes, said)),
            "of": len(asked),
        }
    rows = read_jsonl(ROOT / "suites" / "instruction_following.jsonl")[:if_items]
    said = answers(model, tok, [bare(r["prompt"]) for r in rows], 256, False)
    kept = [score_ifeval(r, s)["prompt_level_strict_acc"] for r, s in zip(rows, said, strict=True)]
    found["instruction_following"] = {
        "kept": sum(map(bool, kept)),
        "of": len(rows),
        "words": round(sum(len(s.split()) for s in said) / max(len(said), 1), 1),
    }
    return found


def line(label: str, r: dict) -> str:
    h, b, i = r["harmful"], r["benign"], r["instruction_following"]
    return (
        f"refusal_reach {label}: harmful refused {h['refused']}/{h['of']} (Zou {h['refused_zou']}), "
        f"benign refused {b['refused']}/{b['of']} (Zou {b['refused_zou']}), instruction following "
        f"{i['kept']}/{i['of']} ({i['words']} words)"
    )


def main() -> None:
    p = common.parser(__doc__)
    p.add_argument("--lr", type=float, default=5e-4, help="learning rate (default 5e-4)")
    p.add_argument("--epochs", type=float, default=2.0, help="epochs (default 2)")
    p.add_argument("--pairs", type=int, default=None, help="at most N pairs of each kind")
    p.add_argument("--if-items", type=int, default=40, help="instruction-following items read")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "refusal-reach")
    args = p.parse_args()
    prof = common.load(args.profile)
    torch.manual_seed(args.seed)
    tok = AutoTokenizer.from_pretrained(prof.model)
    tok.padding_side = "left"
    base = AutoModelForCausalLM.from_pretrained(prof.model, dtype=torch.float32)

    made = args.out / f"pairs-seed{args.seed}.jsonl"
    if not made.exists():
        write_jsonl_atomic(made, make_pairs(base, tok, args.seed))
    pairs = read_jsonl(made)
    chosen = [
        pair for kind in MADE_BY for pair in [q for q in pairs if q["kind"] == kind][: args.pairs]
    ]
    random.Random(args.seed).shuffle(chosen)

    label = f"lr{args.lr:g}-e{args.epochs:g}-n{len(chosen)}"
    settings = prof.stage.train.model_copy(update={"learning_rate": args.lr, "epochs": args.epochs})
    adapter = args.out / label / "adapter"
    stats = train_in_process(
        args.out / label / "job",
        prof.model,
        None,
        [{"id": f"p{i}", **q} for i, q in enumerate(chosen)],
        adapter,
        settings,
        args.seed,
    )
    results = {"pairs": len(chosen), "settings": settings.model_dump(), "train": stats}
    results["base"] = read(base, tok, args.seed, args.if_items)
    print(line("base", results["base"]), flush=True)
    trained = PeftModel.from_pretrained(base, str(adapter))
    results["adapter"] = read(trained, tok, args.seed, args.if_items)
    print(line(label, results["adapter"]), flush=True)
    write_json_atomic(args.out / label / "results.json", results)


if __name__ == "__main__":
    main()
