"""Every score with a 95% interval, and the difference of two stages' scores, paired item by item.

A proportion gets a Wilson interval, a mean a normal one from the sample's standard deviation
(or lm-eval's standard error). Two stages of the same run (or a rerun and its original) answered
the same held-out items, so their difference is read item by item where both records are at
hand: about a third as wide as the interval of two independent scores.
"""

from __future__ import annotations

import math

from cai.data.quality import OFF_TOPIC_BELOW
from cai.store import Run, read_jsonl

# the suites whose answers the quality suites read
QUALITY_ON = ("instruction_following", "helpfulness")
# The refusal suites, dev and test, and their score's name; each is read twice, by the project's
# check and by Zou et al.'s refusal strings (the name with `_prefixes`, cai/data/refusal.py).
REFUSAL_SCORES = {
    "harmlessness": "harmlessness_refusal",
    "over_refusal": "over_refusal",
    "harmbench": "harmbench_refusal",
    "rho_overrefusal": "rho_overrefusal",
}
TEST_SUITES = ("ifeval", "harmbench", "rho_overrefusal")  # read from a stage's test/ folder


def wilson(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return 0.0, 0.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def proportion(successes: float, n: int) -> dict:
    low, high = wilson(successes, n)
    return {
        "score": round(successes / n, 4) if n else 0.0,
        "low": round(low, 4),
        "high": round(high, 4),
        "n": n,
    }


def mean_with_stderr(value: float, stderr: float | None, n: int) -> dict:
    half = 1.96 * stderr if isinstance(stderr, (int, float)) and math.isfinite(stderr) else 0.0
    return {
        "score": round(value, 4),
        "low": round(value - half, 4),
        "high": round(value + half, 4),
        "n": n,
    }


def mean_interval(values: list[float]) -> dict:
    """The mean with a 95% normal interval from the sample's standard deviation."""
    n = len(values)
    if n == 0:
        return {"score": 0.0, "low": 0.0, "high": 0.0, "n": 0}
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean_with_stderr(mean, sd / math.sqrt(n), n)


# Each score as a value per held-out item, from a stage's eval/*.jsonl (dev) or test/*.jsonl (the
# test set's scores, named after their benchmark): (files, the item's value).
PER_ITEM = {
    "ifeval_prompt_strict": (("ifeval",), lambda r: float(r["metrics"]["prompt_level_strict_acc"])),
    "ifeval_prompt_loose": (("ifeval",), lambda r: float(r["metrics"]["prompt_level_loose_acc"])),
    "harmbench_unsafe": (("harmbench_guard",), lambda r: float(not r["verdict"]["safe"])),
    "harmlessness_unsafe": (("harmlessness_guard",), lambda r: float(not r["verdict"]["safe"])),
    "instruction_following": (
        ("instruction_following",),
        lambda r: float(r["metrics"]["prompt_level_strict_acc"]),
    ),
    "instruction_following_loose": (
        ("instruction_following",),
        lambda r: float(r["metrics"]["prompt_level_loose_acc"]),
    ),
    "relevance": (QUALITY_ON, lambda r: r["quality"]["relevance"]),
    "off_topic": (QUALITY_ON, lambda r: float(r["quality"]["relevance"] < OFF_TOPIC_BELOW)),
    "repetition": (QUALITY_ON, lambda r: r["quality"]["repetition"]),
    "length_words": (QUALITY_ON, lambda r: float(r["quality"]["words"])),
    # per item only: a paired difference of logs is the log of the geometric mean's ratio, which a
    # few answers that loop to their cap cannot swing as they swing the mean of words
    "length_log": (QUALITY_ON, lambda r: math.log1p(r["quality"]["words"])),
    "boilerplate": (
        QUALITY_ON,
        lambda r: float(r["quality"]["boilerplate"] or r["quality"]["empty"]),
    ),
}
for _suite, _name in REFUSAL_SCORES.items():
    PER_ITEM[_name] = ((_suite,), lambda r: r["metrics"]["refusal"])
    PER_ITEM[_name + "_prefixes"] = ((_suite,), lambda r: r["metrics"]["refusal_prefixes"])


def per_item(run: Run, n: int, name: str) -> dict[str, float]:
    """The score `name` of stage n item by item (id: value), from those of its suites the stage ran
    (the quality suites read two, and a profile may run one); empty where no record can be read."""
    files, value = PER_ITEM[name]
    folder = run.stage_dir(n) / ("test" if files[0].startswith(TEST_SUITES) else "eval")
    try:
        return {
            f"{f}/{r['id']}": value(r)
            for f in files
            if (folder / f"{f}.jsonl").exists()
            for r in read_jsonl(folder / f"{f}.jsonl")
        }
    except (OSError, KeyError, TypeError, ValueError):  # unreadable: the unpaired interval serves
        return {}


def paired(name: str, now: tuple[Run, int], then: tuple[Run, int]) -> dict | None:
    """Score `name` of stage `now` minus that of stage `then`, paired over the items both answered,
    with its 95% interval; None where either's records are not at hand."""
    a, b = (per_item(*now, name), per_item(*then, name)) if name in PER_ITEM else ({}, {})
    shared = sorted(set(a) & set(b))
    return mean_interval([a[k] - b[k] for k in shared]) if shared else None


def difference(
    name: str, now: tuple[Run, int], then: tuple[Run, int], scores: tuple[dict, dict]
) -> tuple[dict, str]:
    """The score of stage `now` minus that of stage `then` (each a run and a stage), with a 95%
    interval: paired over the items both answered where their records are at hand (the suites
    are the same items at every stage), else from the two intervals as if independent (wider)."""
    if (diff := paired(name, now, then)) is not None:
        return diff, "paired"
    now_s, then_s = scores
    half = (
        1.96
        * (
            ((now_s["high"] - now_s["low"]) / 3.92) ** 2
            + ((then_s["high"] - then_s["low"]) / 3.92) ** 2
        )
        ** 0.5
    )
    d = now_s["score"] - then_s["score"]
    return {
        "score": d,
        "low": d - half,
        "high": d + half,
        "n": min(now_s["n"], then_s["n"]),
    }, "unpaired"
