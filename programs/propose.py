"""Self-instruct: the current model writes a new task of the stage's kind."""

from __future__ import annotations

import re

import dspy


class ProposeTask(dspy.Signature):
    """Here are requests that people sent to an AI assistant. Write one more request of the
    same kind, on a new topic. Reply with the new request only, in one or two sentences."""

    kind: str = dspy.InputField(desc="the kind of request to write")
    examples: str = dspy.InputField(desc="example requests of this kind")
    request: str = dspy.OutputField(desc="the new request")


class Propose(dspy.Module):
    def __init__(self):
        super().__init__()
        self.write = dspy.Predict(ProposeTask)

    def forward(self, kind: str, examples: str) -> dspy.Prediction:
        return self.write(kind=kind, examples=examples)


_LABEL = re.compile(r"^\s*(?:new\s+)?(?:request|task|example|prompt)\s*\d*\s*[:.-]\s*", re.I)
_NUMBER = re.compile(r"^\s*(?:\d+[.)]|[-*•])\s+")
_NUMBERS = re.compile(r"\d+[.:]\d+[.:]\d+")


def clean_task(text: str, min_chars: int = 15, max_chars: int = 600) -> str | None:
    """The request in a proposer's reply, or None where the reply holds no usable one.

    Small models wrap the request in a label, a number or quotes, or go on to answer
    it; we keep the first line, unwrapped.
    """
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return None
    request = _NUMBER.sub("", _LABEL.sub("", lines[0])).strip().strip('"“”').strip()
    if not (min_chars <= len(request) <= max_chars) or len(request.split()) < 4:
        return None
    # Mostly words, not a run of numbers and symbols (a small model at temperature 1 writes both)
    chars = [c for c in request if not c.isspace()]
    if sum(c.isalpha() for c in chars) < 0.7 * len(chars) or _NUMBERS.search(request):
        return None
    return request
