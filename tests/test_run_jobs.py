"""Concurrent program calls with a scripted LM: one record each, resumable, parse failures
counted."""

import dspy
import pytest
from dspy.utils.dummies import DummyLM
from dspy.utils.exceptions import LMInvalidRequestError

from cai.config.settings import Sampling
from cai.serving.lm import Endpoint, Job, RequestFailed, program_call, request_seed, run_jobs
from cai.store import Records
from programs.adapter import PlainAdapter
from programs.judge import Judge
from programs.respond import Responder


class ScriptedEndpoint(Endpoint):
    """Answers from a script keyed by a substring of the request, and counts the calls."""

    def __init__(self, script: dict):
        super().__init__("http://unused", "key", "stage0")
        self.script, self.calls = script, 0

    def lm(self, sampling, seed) -> dspy.LM:
        self.calls += 1
        return DummyLM({k: {"out": v} for k, v in self.script.items()}, adapter=PlainAdapter())


def jobs(n):
    return [Job(f"t{i}", {"request": f"question {i}"}, {"task_id": f"t{i}"}) for i in range(n)]


def test_one_record_per_job_and_resume_skips_what_is_written(tmp_path):
    script = {f"question {i}": f"answer {i}" for i in range(6)}
    out = Records(tmp_path / "responses.jsonl")
    first = ScriptedEndpoint(script)
    stats = run_jobs(
        jobs(4), program_call(Responder, "response", first, Sampling()), out, 3, base_seed=7
    )
    assert stats["ok"] == 4 and first.calls == 4
    # a kill tore the last line; the same step is run again with more jobs
    path = tmp_path / "responses.jsonl"
    path.write_text(path.read_text()[:-10])
    again = ScriptedEndpoint(script)
    stats = run_jobs(
        jobs(6),
        program_call(Responder, "response", again, Sampling()),
        Records(path),
        3,
        base_seed=7,
    )
    assert again.calls == 3 and stats["resumed"] == 3 and stats["ok"] == 6
    records = Records(path)
    assert sorted(r["id"] for r in records) == [f"t{i}" for i in range(6)]
    assert all(
        r["response"] == f"answer {r['id'][1:]}" and r["task_id"] == r["id"] for r in records
    )
    assert records.get("t0")["seed"] == request_seed(7, "t0") != request_seed(7, "t1")


def test_unparseable_replies_are_counted_not_raised(tmp_path):
    endpoint = ScriptedEndpoint({"question 0": "B", "question 1": "no idea"})
    inputs = [
        Job(
            f"j{i}",
            {"request": f"question {i}", "principle": "p", "response_a": "x", "response_b": "y"},
        )
        for i in range(2)
    ]
    stats = run_jobs(
        inputs,
        program_call(Judge, "better", endpoint, Sampling()),
        Records(tmp_path / "j.jsonl"),
        2,
        0,
    )
    assert stats["ok"] == 1 and stats["unparseable"] == 1
    bad = Records(tmp_path / "j.jsonl").get("j1")
    assert bad["ok"] is False and "unparseable" in bad["error"]


class Refusing(ScriptedEndpoint):
    """The server answers 400 to one request and is unreachable for another."""

    def lm(self, sampling, seed):
        lm = super().lm(sampling, seed)

        def forward(prompt=None, messages=None, **kwargs):
            text = messages[-1]["content"]
            if "too long" in text:
                raise LMInvalidRequestError("maximum context length is 2048 tokens")
            if "server down" in text:
                raise ConnectionError("connection refused")
            return DummyLM.forward(lm, prompt=prompt, messages=messages, **kwargs)

        lm.forward = forward
        return lm


def test_a_refused_request_is_counted_and_a_dead_server_stops_the_step(tmp_path):
    endpoint = Refusing({"question": "fine"})
    out = Records(tmp_path / "r.jsonl")
    ok_and_long = [Job("a", {"request": "question a"}), Job("b", {"request": "question too long"})]
    stats = run_jobs(
        ok_and_long, program_call(Responder, "response", endpoint, Sampling()), out, 2, 0
    )
    assert (
        stats["ok"] == 1
        and out.get("b")["ok"] is False
        and out.get("b")["error"].startswith("rejected:")
    )
    with pytest.raises(RequestFailed, match="c: "):
        run_jobs(
            [Job("c", {"request": "question server down"})],
            program_call(Responder, "response", endpoint, Sampling()),
            out,
            1,
            0,
        )
    assert "c" not in Records(tmp_path / "r.jsonl")
