"""Constitutional revision: the model rewrites its answer to fix what the critique found."""

from __future__ import annotations

import dspy


class ReviseResponse(dspy.Signature):
    """Rewrite the response to the request so that it follows the revision request and fixes
    what the critique found. Reply with the new response only."""

    request: str = dspy.InputField()
    response: str = dspy.InputField()
    critique: str = dspy.InputField()
    revision_request: str = dspy.InputField(desc="how to rewrite")
    revision: str = dspy.OutputField(desc="the new response")


class Reviser(dspy.Module):
    def __init__(self):
        super().__init__()
        self.revise = dspy.Predict(ReviseResponse)

    def forward(
        self, request: str, response: str, critique: str, revision_request: str
    ) -> dspy.Prediction:
        return self.revise(
            request=request, response=response, critique=critique, revision_request=revision_request
        )
