"""Scoring functions the suites' lm-eval task YAMLs name with `!function utils.<name>`.

The logic lives in `cai/`; this file is the glue lm-eval loads from the YAML's folder.
"""

from cai.data.constraints import score_ifeval


def instruction_following(doc, results):
    """lm-eval's own IFEval checkers: prompt- and instruction-level, strict and loose."""
    return score_ifeval(doc, results[0])


def inst_level_mean(items):
    flat = [x for per_prompt in items for x in per_prompt]
    return sum(flat) / len(flat) if flat else 0.0


def answer_words(doc, results):
    return {"words": float(len(results[0].split()))}
