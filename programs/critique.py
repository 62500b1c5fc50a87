"""Constitutional critique: the model finds the fault a principle names.

One output field a call; critique and revision are two calls, as in the CAI paper,
because a 135M model can't fill two fields of one reply reliably (DESIGN.md).
"""

from __future__ import annotations

import dspy


class CritiqueResponse(dspy.Signature):
    """Read the request and the response to it, then answer the critique request about
    the response. Be specific and brief."""

    request: str = dspy.InputField()
    response: str = dspy.InputField()
    critique_request: str = dspy.InputField(desc="what to look for")
    critique: str = dspy.OutputField()


class Critic(dspy.Module):
    def __init__(self):
        super().__init__()
        self.critique = dspy.Predict(CritiqueResponse)

    def forward(self, request: str, response: str, critique_request: str) -> dspy.Prediction:
        return self.critique(request=request, response=response, critique_request=critique_request)
