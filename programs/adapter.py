"""A DSPy adapter for models too small to follow DSPy's field-marker formats.

Measured on SmolLM2-135M (shared/DESIGN.md): ChatAdapter parsed 3 of 10 calls and
JSONAdapter's long system prompt pushed the model off topic, while one plain chat
message with the instruction and the inputs gave on-topic text. So this adapter:

- a signature with one input field is a chat turn: its instructions become the system
  message and the input value, bare, the user message (the respond program, whose
  prompt is exactly what the trained policy later sees); a signature with no instructions
  of its own (DSPy's default, "Given the fields ...") sends no system message, so the
  chat template's own default stands;
- any other signature is one user message: the instructions, then each input field
  under its label;
- demos (from an optimizer) are earlier user/assistant turns in the same format;
- the whole reply is the single output field; a `Literal[...]` field takes the first
  allowed value the reply names. An empty reply, or no allowed value, is a parse error,
  which the caller counts.
- for a `Literal[...]` output the request asks vLLM's structured outputs to allow only
  those values (`constrain_choices`): measured here, the 135M judge answered in its own
  words 30 times out of 32 otherwise. The model's own probabilities still pick the value.
"""

from __future__ import annotations

import re
import typing
from typing import Any

import dspy
from dspy.utils.exceptions import AdapterParseError


def _label(name: str) -> str:
    """`critique_request` -> "Critique request", `response_a` -> "Response A"."""
    words = name.split("_")
    return " ".join([words[0].capitalize()] + [w.upper() if len(w) == 1 else w for w in words[1:]])


class PlainAdapter(dspy.Adapter):
    def __init__(self, constrain_choices: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.constrain_choices = constrain_choices

    def __call__(self, lm, lm_kwargs, signature, demos, inputs):
        choices = self.choices(signature)
        if choices and self.constrain_choices:
            lm_kwargs = {**lm_kwargs, "extra_body": {"structured_outputs": {"choice": choices}}}
        return super().__call__(lm, lm_kwargs, signature, demos, inputs)

    @classmethod
    def choices(cls, signature) -> list[str] | None:
        annotation = signature.output_fields[cls.output_name(signature)].annotation
        if typing.get_origin(annotation) is typing.Literal:
            return [str(c) for c in typing.get_args(annotation)]
        return None

    def format(self, signature, demos, inputs) -> list[dict[str, Any]]:
        messages = []
        chat_turn = len(signature.input_fields) == 1
        if chat_turn and not self.default_instructions(signature):
            messages.append({"role": "system", "content": signature.instructions})
        for demo in demos:
            if all(k in demo for k in signature.fields):
                messages.append(
                    {"role": "user", "content": self.user_content(signature, demo, chat_turn)}
                )
                messages.append(
                    {"role": "assistant", "content": str(demo[self.output_name(signature)])}
                )
        messages.append(
            {"role": "user", "content": self.user_content(signature, inputs, chat_turn)}
        )
        return messages

    def user_content(self, signature, values: dict, chat_turn: bool) -> str:
        if chat_turn:
            (name,) = signature.input_fields
            return str(values[name])
        parts = [signature.instructions.strip()]
        for name in signature.input_fields:
            parts.append(f"{_label(name)}:\n{values[name]}")
        return "\n\n".join(parts)

    @staticmethod
    def default_instructions(signature) -> bool:
        """Whether the signature states no instructions of its own (DSPy wrote its default)."""
        return signature.instructions == dspy.make_signature(dict(signature.fields)).instructions

    @staticmethod
    def output_name(signature) -> str:
        if len(signature.output_fields) != 1:
            raise ValueError(
                f"PlainAdapter needs exactly one output field; {signature.__name__} has "
                f"{list(signature.output_fields)}"
            )
        (name,) = signature.output_fields
        return name

    def format_field_with_value(self, fields_with_values: dict, role: str = "assistant") -> str:
        """What a reply with these output values looks like: the bare values (DummyLM uses this)."""
        return "\n\n".join(str(v) for v in fields_with_values.values())

    def parse(self, signature, completion: str) -> dict[str, Any]:
        name = self.output_name(signature)
        text = (completion or "").strip()
        if not text:
            raise AdapterParseError(type(self).__name__, signature, completion, "empty reply")
        choices = self.choices(signature)
        if choices:
            choice = first_choice(text, choices)
            if choice is None:
                raise AdapterParseError(
                    type(self).__name__, signature, completion, "no allowed value in the reply"
                )
            return {name: choice}
        return {name: text}


def first_choice(text: str, choices: list[str]) -> str | None:
    """The allowed value named first in `text`, as a whole word (`A`, `Response B`, ...)."""
    found = []
    for choice in choices:
        m = re.search(rf"(?<![A-Za-z0-9]){re.escape(choice)}(?![A-Za-z0-9])", text)
        if m:
            found.append((m.start(), choice))
    return min(found)[1] if found else None
