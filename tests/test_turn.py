"""One turn: the same request sent as a pair's prompt, as the respond step sends it, as a dev item
and as a test item reaches the model as the same tokens, with no system message of the project's
and with a profile's system prompt."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import dspy
import pytest
from conftest import ScriptedHTTP

from cai import ROOT
from cai.config.settings import Sampling
from cai.data import outside
from cai.measuring import benchmarks, suites
from cai.serving.lm import Endpoint, Job, program_call
from cai.serving.model import EMBEDDED, resolve_model
from programs.respond import Responder, turn

REQUEST = "Write a short poem about a lighthouse keeper's last night on duty"


class RecordsChat(ScriptedHTTP, BaseHTTPRequestHandler):
    """An OpenAI-style chat completions endpoint that keeps the messages it was sent."""

    sent: list = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).sent.append(body["messages"])
        self._answer(
            {
                "id": "x",
                "object": "chat.completion",
                "created": 0,
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "A keeper's light."},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }
        )


@pytest.fixture
def chat():
    RecordsChat.sent = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), RecordsChat)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()


def sent_by_lm_eval(api_base: str, task, system_prompt: str | None) -> list[dict]:
    RecordsChat.sent = []
    suites.run_lm_eval(api_base, "k", "policy", [task], 1, 8, 1, 0, system_prompt, 30)
    (messages,) = RecordsChat.sent
    return messages


@pytest.mark.parametrize("system_prompt", [None, "You answer in plain words."])
def test_the_pair_prompt_the_respond_turn_a_dev_item_and_a_test_item_are_one_turn(
    chat, tmp_path, monkeypatch, system_prompt
):
    from transformers import AutoTokenizer

    pair_prompt = turn(REQUEST, system_prompt)
    # the respond step: its program, through the endpoint, as the server receives it
    call = program_call(
        lambda: Responder(system_prompt), "response", Endpoint(chat, "k", "policy"), Sampling()
    )
    record = call(Job("t-r0", {"request": REQUEST}), 0)
    (responded,) = RecordsChat.sent
    assert record["messages"] == responded
    # a dev item: a dev slice holding the request
    monkeypatch.setattr(
        suites.requests, "dev", lambda seed, kind: [{"id": "d", "request": REQUEST}]
    )
    dev = sent_by_lm_eval(chat, suites.task("harmlessness", 8, 0), system_prompt)
    # a test item: HarmBench's file holding the request as its one standard behaviour
    csv = tmp_path / "harmbench.csv"
    csv.write_text(
        f'Behavior,FunctionalCategory,SemanticCategory,Tags,ContextString,BehaviorID\n"{REQUEST}",standard,x,,,b0\n'
    )
    monkeypatch.setattr(outside, "data_files", lambda name: [csv])
    test = sent_by_lm_eval(chat, benchmarks.task_config("harmbench", 8), system_prompt)

    assert pair_prompt == responded == dev == test
    assert [m["role"] for m in pair_prompt] == ["system", "user"] if system_prompt else ["user"]
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(EMBEDDED, ROOT / "models"))
    tokens = [
        tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=True)
        for m in (pair_prompt, responded, dev, test)
    ]
    assert tokens[0] == tokens[1] == tokens[2] == tokens[3]


@pytest.mark.parametrize("system_prompt", [None, "You answer in plain words."])
def test_a_contrast_without_a_negative_instruction_sends_the_turn_on_that_side(
    chat, tmp_path, system_prompt
):
    from cai.config.constitution import Principle
    from cai.data.contrast import program

    principle = Principle.model_validate(
        {
            "id": "answer-briefly",
            "category": "helpful",
            "stages": [1],
            "critique": "Point out what could be left out.",
            "revision": "Rewrite it in at most 40 words.",
            "contrast": {
                "positive": "Reply in 40 words or fewer.",
                "examples": [{"request": "Name two uses for salt.", "positive": "Food, ice."}],
            },
            "check": {"signal": "words", "margin": 0.3},
        }
    )
    make = program(principle, system_prompt)
    compiled = make()
    # an optimizer's demos on the plain side are neither sent nor saved
    compiled.negative.demos = [dspy.Example(request="Name a colour.", response="Blue.")]
    compiled.save(str(tmp_path / "contrast.json"))
    assert json.loads((tmp_path / "contrast.json").read_text())["negative"]["demos"] == []
    call = program_call(
        lambda: compiled, ("positive", "negative"), Endpoint(chat, "k", "policy"), Sampling()
    )
    call(Job("t-x-answer-briefly", {"request": REQUEST}), 0)
    positive, negative = RecordsChat.sent
    assert negative == turn(REQUEST, system_prompt)
    assert positive[0] == {"role": "system", "content": "Reply in 40 words or fewer."}
    assert positive[1:3] == [
        {"role": "user", "content": "Name two uses for salt."},
        {"role": "assistant", "content": "Food, ice."},
    ]
