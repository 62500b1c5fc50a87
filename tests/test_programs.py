"""The DSPy programs with the small-model adapter, against a scripted LM (DummyLM)."""

import dspy
import pytest
from dspy.utils.dummies import DummyLM
from dspy.utils.exceptions import AdapterParseError

from programs.adapter import PlainAdapter, first_choice
from programs.critique import CritiqueResponse
from programs.judge import CompareResponses, Judge
from programs.propose import Propose, clean_task
from programs.respond import Respond, Responder, turn


def test_single_input_is_a_chat_turn_whose_instructions_are_its_system_message():
    asked = Respond.with_instructions("Be brief.")
    assert PlainAdapter().format(asked, [], {"request": "Name a planet."}) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Name a planet."},
    ]
    # no instructions of its own: the chat template's default system prompt stands
    assert turn("Name a planet.") == [{"role": "user", "content": "Name a planet."}]
    assert turn("Name a planet.", "Be brief.") == PlainAdapter().format(
        asked, [], {"request": "Name a planet."}
    )


def test_several_inputs_are_one_user_message_with_labels_and_demos_as_turns():
    demo = {"request": "r0", "response": "a0", "critique_request": "q0", "critique": "c0"}
    messages = PlainAdapter().format(
        CritiqueResponse, [demo], {"request": "r1", "response": "a1", "critique_request": "q1"}
    )
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert messages[1]["content"] == "c0"
    assert messages[2]["content"].startswith(CritiqueResponse.instructions.strip())
    assert (
        "Request:\nr1" in messages[2]["content"]
        and "Critique request:\nq1" in messages[2]["content"]
    )


def test_parse_takes_the_whole_reply_and_refuses_an_empty_one():
    assert PlainAdapter().parse(Respond, "  Mars.\n") == {"response": "Mars."}
    with pytest.raises(AdapterParseError):
        PlainAdapter().parse(Respond, "   ")


def test_literal_verdicts():
    adapter = PlainAdapter()
    assert adapter.parse(CompareResponses, "Response B is better.") == {"better": "B"}
    assert adapter.parse(CompareResponses, "A") == {"better": "A"}
    with pytest.raises(AdapterParseError):
        adapter.parse(CompareResponses, "Both are good.")
    assert first_choice("Answer: B, not A", ["A", "B"]) == "B"


def test_programs_run_on_a_scripted_lm():
    lm = DummyLM([{"response": "Mars is red."}, {"better": "B"}], adapter=PlainAdapter())
    with dspy.context(lm=lm, adapter=PlainAdapter()):
        assert Responder()(request="Name a red planet.").response == "Mars is red."
        assert Judge()(request="q", principle="p", response_a="x", response_b="y").better == "B"


def test_program_saves_and_loads(tmp_path):
    program = Propose()
    program.write.demos = [dspy.Example(kind="k", examples="e", request="Write a haiku about tea.")]
    program.save(str(tmp_path / "propose.json"))
    loaded = Propose()
    loaded.load(str(tmp_path / "propose.json"))
    assert loaded.write.demos[0]["request"] == "Write a haiku about tea."


@pytest.mark.parametrize(
    "reply, expected",
    [
        ("Write a poem about autumn leaves.", "Write a poem about autumn leaves."),
        ('4. "List three uses for a paperclip."\nSure! 1. ...', "List three uses for a paperclip."),
        ("Request: Explain how tides work.", "Explain how tides work."),
        ("ok", None),
        ("", None),
        ("2. 12.12.167.97-Mitty's virtual human character is always pizza villains", None),
        ("Explain why 3 + 4 = 7 in simple words.", "Explain why 3 + 4 = 7 in simple words."),
    ],
)
def test_clean_task(reply, expected):
    assert clean_task(reply) == expected


def test_closed_verdicts_are_constrained_to_their_values():
    seen = {}

    class Recording(DummyLM):
        def forward(self, prompt=None, messages=None, **kwargs):
            seen.update(kwargs)
            return super().forward(prompt=prompt, messages=messages, **kwargs)

    lm = Recording([{"better": "A"}], adapter=PlainAdapter())
    with dspy.context(lm=lm, adapter=PlainAdapter()):
        Judge()(request="q", principle="p", response_a="x", response_b="y")
    assert seen["extra_body"] == {"structured_outputs": {"choice": ["A", "B"]}}
    assert PlainAdapter.choices(Respond) is None
