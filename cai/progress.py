"""Progress of a long step on stderr: done/total, tokens/s and the time left.

Every step that sends requests (`run_jobs`, the lm-eval suites) or trains shows one. On a
terminal it is a live rich bar; in a log (stderr not a terminal) a plain line every
`every_s` seconds and one at the end, so `... 2> log` can be followed with `tail -f`.
Records a resumed step already had count as done, not towards the rate.
"""

from __future__ import annotations

import re
import sys
import threading
import time

from rich.console import Console
from rich.errors import LiveError
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

import requests


def _clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class StepProgress:
    """`with StepProgress("stage1 respond", total=400) as p: p.advance(tokens=57)`."""

    def __init__(
        self, label: str, total: int, unit: str = "requests", done: int = 0, every_s: float = 30.0
    ):
        self.label, self.total, self.unit, self.every_s = label, total, unit, every_s
        self.done = self.start_done = done
        self.tokens = 0
        self.lock = threading.Lock()
        self.console = Console(stderr=True)
        self.live = self.console.is_terminal

    def __enter__(self) -> "StepProgress":
        self.start = self.last_line = time.monotonic()
        if self.live:
            self.bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn(self.unit),
                TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(),
                TextColumn("left"),
                TimeRemainingColumn(),
                console=self.console,
                transient=False,
            )
            try:
                self.bar.start()
            # another step's bar is live (optimize runs programs side by side): plain lines
            except LiveError:
                self.live = False
                return self
            self.task = self.bar.add_task(
                self.label, total=self.total, completed=self.done, rate=""
            )
        return self

    def advance(self, n: int = 1, tokens: int = 0) -> None:
        with self.lock:
            self.done += n
            self.tokens += tokens
            self._show()

    def set(self, done: int, tokens: int) -> None:
        """Absolute figures (from the server's counters) instead of increments."""
        with self.lock:
            self.done, self.tokens = min(done, self.total), tokens
            self._show()

    def rate(self) -> float:
        return self.tokens / max(time.monotonic() - self.start, 1e-9)

    def line(self) -> str:
        elapsed = time.monotonic() - self.start
        new = self.done - self.start_done
        left = (self.total - self.done) * elapsed / new if new else None
        return (
            f"{self.label}: {self.done}/{self.total} {self.unit}, {self.rate():.0f} tokens/s, "
            f"{_clock(elapsed)} elapsed"
            + (f", ~{_clock(left)} left" if left is not None and self.done < self.total else "")
        )

    def _show(self) -> None:
        if self.live:
            self.bar.update(self.task, completed=self.done, rate=f"{self.rate():.0f} tok/s")
        elif time.monotonic() - self.last_line >= self.every_s:
            self.last_line = time.monotonic()
            print(self.line(), file=sys.stderr, flush=True)

    def __exit__(self, *exc) -> None:
        if self.live:
            self.bar.stop()
        elif self.total:
            print(self.line(), file=sys.stderr, flush=True)


_COUNTER = re.compile(
    r"^(vllm:generation_tokens_total|vllm:request_success_total)(?:\{[^}]*\})?\s+([0-9.e+]+)$", re.M
)


def server_counters(base_url: str) -> tuple[int, int]:
    """(requests finished, tokens generated) since the server started, from its Prometheus
    /metrics."""
    text = requests.get(base_url + "/metrics", timeout=10).text
    totals = {"vllm:generation_tokens_total": 0.0, "vllm:request_success_total": 0.0}
    for name, value in _COUNTER.findall(text):
        totals[name] += float(value)
    return int(totals["vllm:request_success_total"]), int(totals["vllm:generation_tokens_total"])


class ServerProgress(StepProgress):
    """Progress of requests another library sends (lm-eval), read from the server's counters
    every `poll_s` seconds."""

    def __init__(self, label: str, total: int, base_url: str, poll_s: float = 2.0):
        super().__init__(label, total)
        self.base_url, self.poll_s = base_url, poll_s
        self.stop = threading.Event()

    def __enter__(self) -> "ServerProgress":
        try:
            self.base = server_counters(self.base_url)
        except requests.RequestException:  # no counters to read: no progress, the step goes on
            self.base = None
        super().__enter__()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()
        return self

    def _poll(self) -> None:
        while self.base is not None and not self.stop.wait(self.poll_s):
            try:
                finished, tokens = server_counters(self.base_url)
            except requests.RequestException:
                continue
            self.set(finished - self.base[0], tokens - self.base[1])

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        super().__exit__(*exc)
