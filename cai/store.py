"""The run folder: append-only records, a manifest that is also the done-marker.

Every record has a stable id derived from its inputs, so a resumed step skips what
it already wrote and nothing is doubled. A line cut short by a kill is dropped when
the file is next opened. The manifest is replaced atomically; a step is marked done
in it only after its records are flushed, so a kill at any moment loses at most the
requests that were in flight.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Any, Iterator

# A stage's steps in the order they run (bootstrap.py's run_stage); `test` reads the final policy.
STEPS = (
    "optimize",
    "propose",
    "respond",
    "contrast",
    "critique",
    "revise",
    "judge",
    "quality",
    "guard",
    "pairs",
    "train",
    "swap",
    "evaluate",
    "gate",
    "test",
)


class StageError(RuntimeError):
    """A step produced nothing to go on with, or a stage failed a gate that stops the run; the
    message names the step and why."""


class Records:
    """A jsonl file of records keyed by `id`, safe to append from several threads."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.lock = threading.Lock()
        self.by_id: dict[str, dict] = {}
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        raw = self.path.read_bytes()
        good = raw if raw.endswith(b"\n") or not raw else raw[: raw.rfind(b"\n") + 1]
        if len(good) != len(raw):  # a kill cut the last line: drop it
            with open(self.path, "r+b") as f:
                f.truncate(len(good))
        # not splitlines(): answers may hold U+2028 or U+0085, which json.dumps leaves raw
        for line in good.decode().split("\n"):
            if line.strip():
                rec = json.loads(line)
                self.by_id[rec["id"]] = rec

    def __contains__(self, rid: str) -> bool:
        return rid in self.by_id

    def __len__(self) -> int:
        return len(self.by_id)

    def __iter__(self) -> Iterator[dict]:
        return iter(list(self.by_id.values()))

    def get(self, rid: str) -> dict | None:
        return self.by_id.get(rid)

    def append(self, rec: dict) -> None:
        line = json.dumps(rec, ensure_ascii=False) + "\n"
        with self.lock:
            if rec["id"] in self.by_id:
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
            self.by_id[rec["id"]] = rec


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside `path` to write to; it replaces `path` only once the block ends
    without an error, so a kill leaves the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.tmp{path.suffix}")  # the suffix kept: DSPy's save reads it
    yield tmp
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json_atomic(path: Path, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_jsonl_atomic(path: Path, records: list[dict]) -> None:
    """For derived files (tasks, pairs) that are rebuilt whole from their inputs."""
    with atomic_path(path) as tmp:
        tmp.write_text(
            "".join(json.dumps(rec, ensure_ascii=False) + "\n" for rec in records), encoding="utf-8"
        )


def read_jsonl(path: Path) -> list[dict]:
    return [
        json.loads(line)
        for line in Path(path).read_text(encoding="utf-8").split("\n")
        if line.strip()
    ]


BASE_NAME = "stage0"  # the base model, as a policy name


def policy_name(n: int) -> str:
    """Stage n's policy as the run names it (stage0 is the base)."""
    return f"stage{n}"


def stage_number(policy: str) -> int:
    """The stage a policy name stands for: stage0 -> 0, stage3 -> 3."""
    return int(policy.removeprefix("stage"))


class Run:
    """One run folder: `manifest.json` plus a folder per stage."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.manifest_path = self.root / "manifest.json"
        self.manifest: dict = (
            json.loads(self.manifest_path.read_text()) if self.manifest_path.exists() else {}
        )

    def stage_dir(self, n: int) -> Path:
        d = self.root / policy_name(n)
        d.mkdir(parents=True, exist_ok=True)
        return d

    def records(self, n: int, name: str) -> Records:
        return Records(self.stage_dir(n) / f"{name}.jsonl")

    def read(self, n: int, name: str) -> list[dict]:
        """Stage n's `name`.jsonl as a list; empty where the stage wrote none (or there is no such
        stage)."""
        path = self.root / policy_name(n) / f"{name}.jsonl"
        return read_jsonl(path) if path.exists() else []

    def earlier(self, n: int, name: str) -> list[dict]:
        """The `name` records of stages 1 .. n-1, in stage order: what stage n builds on."""
        return [rec for m in range(1, n) for rec in self.read(m, name)]

    def step_stats(self, n: int, step: str) -> dict:
        """What stage n's `step` recorded in the manifest (empty where it has not run)."""
        return self.stage(n)["steps"].get(step, {})

    def save(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.manifest_path, self.manifest)

    def stage(self, n: int) -> dict:
        return self.manifest.setdefault("stages", {}).setdefault(policy_name(n), {"steps": {}})

    def step_done(self, n: int, step: str) -> bool:
        return self.step_stats(n, step).get("status") == "done"

    def mark_done(self, n: int, step: str, seconds: float, **stats) -> None:
        self.stage(n)["steps"][step] = {"status": "done", "seconds": round(seconds, 2), **stats}
        # the stage is finished (or tested after it): seal its files
        if step in ("gate", "test") or (n == 0 and step == "evaluate"):
            self.stage(n)["files"] = file_hashes(self.stage_dir(n))
        self.save()

    def verify(self) -> list[str]:
        """What differs from the hashes sealed in the manifest: changed, missing or unrecorded
        files."""
        problems = []
        for key, stage in sorted(self.manifest.get("stages", {}).items()):
            if "files" not in stage:
                continue
            now = file_hashes(self.root / key)
            for rel, digest in sorted(stage["files"].items()):
                if rel not in now:
                    problems.append(f"{key}/{rel}: missing")
                elif now[rel] != digest:
                    problems.append(
                        f"{key}/{rel}: changed (sha256 {now[rel][:12]}, sealed {digest[:12]})"
                    )
            problems += [
                f"{key}/{rel}: not in the manifest"
                for rel in sorted(set(now) - set(stage["files"]))
            ]
        return problems

    def stage_done(self, n: int) -> bool:
        return self.step_done(n, "gate")


class Timer:
    def __enter__(self) -> "Timer":
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.start


def derive(original: Run, folder: Path, manifest: dict, stage: int, reuse: list[str]) -> Run:
    """A new run folder that shares the original's stages before `stage` and the `reuse`
    files and folders of `stage`, by link, not by copy: stages as symlinks, files as hard links.

    Only finished, never-appended files are shared, so nothing the new run does writes
    into the original (atomic rewrites replace a link instead of writing through it).
    """
    folder.mkdir(parents=True)
    for m in range(0, stage):
        (folder / policy_name(m)).symlink_to(
            os.path.relpath(original.stage_dir(m), folder), target_is_directory=True
        )
    source = original.stage_dir(stage)
    for rel in reuse:
        paths = (
            sorted(p for p in (source / rel).rglob("*") if p.is_file())
            if (source / rel).is_dir()
            else [source / rel]
        )
        for src in (p for p in paths if p.exists()):
            dst = folder / policy_name(stage) / src.relative_to(source)
            dst.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(src, dst)
            except OSError:  # another filesystem: a copy is the only way
                dst.write_bytes(src.read_bytes())
    run = Run(folder)
    run.manifest = manifest
    run.save()
    return run


def file_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder`, by path relative to it."""
    hashes = {}
    for directory, _, names in os.walk(folder, followlinks=True):
        for name in names:
            path = Path(directory) / name
            digest = hashlib.sha256()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
            hashes[str(path.relative_to(folder))] = digest.hexdigest()
    return dict(sorted(hashes.items()))
