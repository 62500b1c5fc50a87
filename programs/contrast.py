"""A principle's contrast: the same request answered under the instruction that asks for the
principle and under the one that asks for its opposite (RLCD). Each side's instruction is its
signature's instructions, so the small-model adapter sends it as the answer's system prompt; each
side's demos are earlier turns under it: the principle's exemplars (constitution.yaml) to start
with, the model's own passing answers once the optimizer has bootstrapped them.
"""

from __future__ import annotations

import dspy


class AnswerUnder(dspy.Signature):
    """Answer the user's request."""  # each side replaces this with its instruction

    request: str = dspy.InputField()
    response: str = dspy.OutputField()


class Contrast(dspy.Module):
    def __init__(
        self,
        positive: str = "Answer the user's request as asked.",
        negative: str = "Answer the user's request badly.",
        positive_demos: list[tuple[str, str]] = (),
        negative_demos: list[tuple[str, str]] = (),
    ):
        super().__init__()
        self.positive = dspy.Predict(AnswerUnder.with_instructions(positive))
        self.negative = dspy.Predict(AnswerUnder.with_instructions(negative))
        for side, demos in ((self.positive, positive_demos), (self.negative, negative_demos)):
            side.demos = [
                dspy.Example(request=request, response=response) for request, response in demos
            ]

    def forward(self, request: str) -> dspy.Prediction:
        return dspy.Prediction(
            positive=self.positive(request=request).response,
            negative=self.negative(request=request).response,
        )
