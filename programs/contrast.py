"""A principle's contrast: the same request answered under the instruction that asks for the
principle and under the one that asks for its opposite (RLCD). Each side's instruction is its
signature's instructions, so the small-model adapter sends it as the answer's system prompt; each
side's demos are earlier turns under it: the principle's exemplars (constitution.yaml) to start
with, the model's own passing answers once the optimizer has bootstrapped them.

A principle may leave its negative instruction out: the other side is then the policy's own answer
in the one turn (programs/respond.py), no instruction and no earlier turns, as in context
distillation (Askell et al. 2021; Snell et al. 2022). Measured here, the 135M model asked for long
answers wrote shorter ones (25 words) than it writes unasked (99 words, median), so the opposite of
a principle is often what the model does anyway.
"""

from __future__ import annotations

import dspy

from programs.adapter import PlainAdapter
from programs.respond import Responder


class AnswerUnder(dspy.Signature):
    """Answer the user's request."""  # each side replaces this with its instruction

    request: str = dspy.InputField()
    response: str = dspy.OutputField()


class Contrast(dspy.Module):
    def __init__(
        self,
        positive: str = "Answer the user's request as asked.",
        negative: str | None = "Answer the user's request badly.",
        positive_demos: list[tuple[str, str]] = (),
        negative_demos: list[tuple[str, str]] = (),
        system_prompt: str | None = None,
    ):
        """`negative` None: the negative side is the policy's plain turn, under the profile's
        `system_prompt` where it names one."""
        super().__init__()
        self.plain_negative = negative is None
        self.positive = dspy.Predict(AnswerUnder.with_instructions(positive))
        self.negative = (
            Responder(system_prompt).answer
            if self.plain_negative
            else dspy.Predict(AnswerUnder.with_instructions(negative))
        )
        for side, demos in ((self.positive, positive_demos), (self.negative, negative_demos)):
            side.demos = [
                dspy.Example(request=request, response=response) for request, response in demos
            ]

    def dump_state(self, json_mode=True):
        """A plain side's saved state keeps no demos: none is ever sent (prompts.md shows none)."""
        state = super().dump_state(json_mode=json_mode)
        if self.plain_negative:
            state["negative"]["demos"] = []
        return state

    def forward(self, request: str) -> dspy.Prediction:
        positive = self.positive(request=request).response
        if self.plain_negative:  # the turn itself, whatever demos an optimizer gave this side
            with dspy.context(adapter=PlainAdapter()):
                negative = self.negative(request=request, demos=[])
        else:
            negative = self.negative(request=request)
        return dspy.Prediction(positive=positive, negative=negative.response)
