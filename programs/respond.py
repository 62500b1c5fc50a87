"""The policy answers a request: the turn that DPO trains and the suites measure.

One turn everywhere: the request is the user message, under the profile's `system_prompt` where it
names one and otherwise under no system message of the project's, so the model's chat template
puts its own default there (what lm-eval's tasks and a chat client send). The pairs' prompt, the
dev suites and the test set all send this turn (tests/test_turn.py).
"""

from __future__ import annotations

import dspy

from programs.adapter import PlainAdapter


class Respond(dspy.Signature):
    # No instructions of its own: a profile's system prompt becomes them (PlainAdapter sends a
    # signature's instructions as the system message only where they are not DSPy's default).
    request: str = dspy.InputField()
    response: str = dspy.OutputField()


class Responder(dspy.Module):
    def __init__(self, system_prompt: str | None = None):
        super().__init__()
        signature = Respond.with_instructions(system_prompt) if system_prompt else Respond
        self.answer = dspy.Predict(signature)

    def forward(self, request: str) -> dspy.Prediction:
        # The turn itself, whatever adapter the other programs are asked through
        with dspy.context(adapter=PlainAdapter()):
            return self.answer(request=request)


def turn(request: str, system_prompt: str | None = None) -> list[dict]:
    """The messages the policy is sent for `request`: a pair's prompt."""
    return PlainAdapter().format(
        Responder(system_prompt).answer.signature, [], {"request": request}
    )
