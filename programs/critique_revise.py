"""Critique, then revise: the two calls compiled together, because a critique is only as
good as the revision it leads to (the metric scores the revision)."""

from __future__ import annotations

import dspy

from programs.critique import Critic
from programs.revise import Reviser


class CritiqueAndRevise(dspy.Module):
    def __init__(self):
        super().__init__()
        self.critic = Critic()
        self.reviser = Reviser()

    def forward(
        self, request: str, response: str, critique_request: str, revision_request: str
    ) -> dspy.Prediction:
        critique = self.critic(
            request=request, response=response, critique_request=critique_request
        ).critique
        revision = self.reviser(
            request=request, response=response, critique=critique, revision_request=revision_request
        ).revision
        return dspy.Prediction(critique=critique, revision=revision)
