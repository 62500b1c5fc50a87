"""A server that dies or hangs mid-step is restarted and the stage (or stage 0's evaluation)
resumes; bounded, and only when it is the server."""

import pytest

import bootstrap
from cai.serving.lm import RequestFailed
from cai.serving.swap import surviving_faults


class FakeServer:
    """A server that is healthy or not, and counts its restarts; its swap counts what it put
    back."""

    def __init__(self, healthy):
        self.is_healthy, self.restarts, self.reapplied = healthy, 0, 0

    def healthy(self):
        return self.is_healthy

    def restart(self):
        self.restarts += 1

    def reapply(self):
        self.reapplied += 1


def surviving(server, what, fn, restarts=2):
    return surviving_faults(server, server, restarts, what, fn)


def failing(times):
    calls = []

    def run_stage(ctx, st, policy):
        calls.append(policy)
        if len(calls) <= times:
            raise RequestFailed(
                "stage2/respond s2-seed00-r0: APIConnectionError: Connection refused"
            )
        return "stage2"

    return run_stage, calls


def test_a_dead_server_is_restarted_and_the_stage_resumes(monkeypatch):
    run_stage, calls = failing(2)
    monkeypatch.setattr(bootstrap, "run_stage", run_stage)
    server = FakeServer(healthy=False)
    assert (
        surviving(server, "stage2", lambda: bootstrap.run_stage(None, None, "stage1")) == "stage2"
    )
    assert server.restarts == 2 and calls == ["stage1"] * 3
    # what the server had (its adapters, the weights in place) is put back after each restart
    assert server.reapplied == 2


def test_restarts_are_bounded(monkeypatch):
    run_stage, _ = failing(5)
    monkeypatch.setattr(bootstrap, "run_stage", run_stage)
    server = FakeServer(healthy=False)
    with pytest.raises(RequestFailed, match="Connection refused"):
        surviving(server, "stage2", lambda: bootstrap.run_stage(None, None, "stage1"), restarts=2)
    assert server.restarts == 2


def test_a_failure_with_a_healthy_server_is_not_the_servers(monkeypatch):
    run_stage, _ = failing(1)
    monkeypatch.setattr(bootstrap, "run_stage", run_stage)
    server = FakeServer(healthy=True)
    with pytest.raises(RequestFailed):
        surviving(server, "stage2", lambda: bootstrap.run_stage(None, None, "stage1"))
    assert server.restarts == 0


def test_stage_zero_evaluation_survives_a_dead_server_too(monkeypatch):
    """Found when the end-to-end test ran starved of CPU: the engine died during stage 0's
    evaluation and the run stopped, where a stage would have restarted it."""
    calls = []

    def evaluate():
        calls.append(1)
        if len(calls) == 1:
            raise RequestFailed("guard harm-012-guard: APIConnectionError: Connection error.")
        return {"instruction_following": 0.4}

    server = FakeServer(healthy=False)
    assert surviving(server, "stage0", evaluate) == {"instruction_following": 0.4}
    assert server.restarts == 1 and len(calls) == 2
