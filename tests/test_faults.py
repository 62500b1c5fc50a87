"""A server that dies or hangs mid-step is restarted and the stage resumes; bounded, and only when it is the server."""

from types import SimpleNamespace

import pytest

import bootstrap
from cai.lm import RequestFailed


class FakeServer:
    def __init__(self, healthy):
        self.is_healthy, self.restarts = healthy, 0

    def healthy(self):
        return self.is_healthy

    def restart(self):
        self.restarts += 1


def ctx_with(server, restarts=2):
    return SimpleNamespace(server=server, server_restarts=restarts)


def failing(times):
    calls = []

    def run_stage(ctx, st, policy):
        calls.append(policy)
        if len(calls) <= times:
            raise RequestFailed("stage2/respond s2-seed00-r0: APIConnectionError: Connection refused")
        return "stage2"
    return run_stage, calls


def test_a_dead_server_is_restarted_and_the_stage_resumes(monkeypatch):
    run_stage, calls = failing(2)
    monkeypatch.setattr(bootstrap, "run_stage", run_stage)
    server = FakeServer(healthy=False)
    assert bootstrap.run_stage_surviving_faults(ctx_with(server), SimpleNamespace(number=2), "stage1") == "stage2"
    assert server.restarts == 2 and calls == ["stage1"] * 3


def test_restarts_are_bounded(monkeypatch):
    run_stage, _ = failing(5)
    monkeypatch.setattr(bootstrap, "run_stage", run_stage)
    server = FakeServer(healthy=False)
    with pytest.raises(RequestFailed, match="Connection refused"):
        bootstrap.run_stage_surviving_faults(ctx_with(server, restarts=2), SimpleNamespace(number=2), "stage1")
    assert server.restarts == 2


def test_a_failure_with_a_healthy_server_is_not_the_servers(monkeypatch):
    run_stage, _ = failing(1)
    monkeypatch.setattr(bootstrap, "run_stage", run_stage)
    server = FakeServer(healthy=True)
    with pytest.raises(RequestFailed):
        bootstrap.run_stage_surviving_faults(ctx_with(server), SimpleNamespace(number=2), "stage1")
    assert server.restarts == 0
