"""What the benchmarks share: a command line that names the profile to measure, and that profile's
first stage and model, resolved as a run resolves them."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cai.config.curriculum import Profile, StageConfig, load_curriculum, resolve_stage  # noqa: E402
from cai.serving.model import resolve_model  # noqa: E402


def parser(doc: str) -> argparse.ArgumentParser:
    """A bench's command line: its docstring as the help, and `--profile` (default cpu)."""
    p = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--profile", default="cpu", help="a profile of curriculum.yaml (default: cpu)")
    return p


@dataclass
class Profiled:
    name: str
    profile: Profile
    stage: StageConfig  # stage 1, with the profile's settings
    model: str  # the base model's folder


def load(name: str) -> Profiled:
    """Profile `name` of curriculum.yaml, its first stage and its model (built where embedded)."""
    curriculum, _ = load_curriculum(ROOT / "curriculum.yaml")
    profile = curriculum.profiles[name]
    model = resolve_model(profile.model, ROOT / "models")
    return Profiled(name, profile, resolve_stage(curriculum, profile, 1), model)
