"""The policy answers a request: the turn that DPO trains and the suites measure."""

from __future__ import annotations

import dspy


class Respond(dspy.Signature):
    """You are a helpful, honest and harmless assistant. Answer the user's request directly."""

    request: str = dspy.InputField()
    response: str = dspy.OutputField()


class Responder(dspy.Module):
    def __init__(self):
        super().__init__()
        self.answer = dspy.Predict(Respond)

    def forward(self, request: str) -> dspy.Prediction:
        return self.answer(request=request)
