"""The judge: which of two responses better follows a principle.

Asked in both orders by the caller, so that a judge that always names the first (or
the second) response agrees with itself only by chance and its pair is dropped.
"""

from __future__ import annotations

from typing import Literal

import dspy


class CompareResponses(dspy.Signature):
    """Two responses answer the same request. Which one follows the principle better and
    answers the request better? Reply with A or B only."""

    request: str = dspy.InputField()
    principle: str = dspy.InputField()
    response_a: str = dspy.InputField()
    response_b: str = dspy.InputField()
    better: Literal["A", "B"] = dspy.OutputField()


class Judge(dspy.Module):
    def __init__(self):
        super().__init__()
        self.compare = dspy.Predict(CompareResponses)

    def forward(
        self, request: str, principle: str, response_a: str, response_b: str
    ) -> dspy.Prediction:
        return self.compare(
            request=request, principle=principle, response_a=response_a, response_b=response_b
        )


def both_orders(common: dict, first: str, second: str) -> dict[str, dict]:
    """The judge's inputs with `first` as A (`ab`) and as B (`ba`). Asked both ways, a judge that
    names a position rather than an answer agrees with itself only by chance."""
    return {
        "ab": {**common, "response_a": first, "response_b": second},
        "ba": {**common, "response_a": second, "response_b": first},
    }


def asker(lm, adapter):
    """`ask(**inputs)`: the judge's verdict ("A" or "B") under `lm`, or None where it does not
    parse."""

    def ask(**inputs) -> str | None:
        with dspy.context(lm=lm, adapter=adapter):
            try:
                return Judge()(**inputs).better
            except Exception:  # an unparseable verdict is no preference
                return None

    return ask
