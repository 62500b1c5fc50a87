"""constitution.yaml: the principles the model critiques and revises its own answers against.

Each principle has an id, a category (helpful, honest, harmless), the stages that may draw it, a
critique request and a revision request; loaded as strictly as the curriculum.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from cai.settings import Strict, read_yaml, sha256, validate


class Principle(Strict):
    id: str = Field(pattern=r"^[a-z0-9]+(-[a-z0-9]+)*$")
    category: Literal["helpful", "honest", "harmless"]
    stages: list[int] = Field(min_length=1)
    critique: str = Field(min_length=10)
    revision: str = Field(min_length=10)

    @field_validator("stages")
    @classmethod
    def _stages_in_range(cls, v: list[int]) -> list[int]:
        bad = [s for s in v if not 1 <= s <= 6]
        if bad:
            raise ValueError(f"stage {bad[0]} is out of range 1-6")
        return v


class Constitution(Strict):
    principles: list[Principle] = Field(min_length=1)

    @field_validator("principles")
    @classmethod
    def _unique_ids(cls, v: list[Principle]) -> list[Principle]:
        seen = set()
        for p in v:
            if p.id in seen:
                raise ValueError(f"duplicate principle id {p.id!r}")
            seen.add(p.id)
        return v

    def for_stage(self, stage: int) -> list[Principle]:
        return [p for p in self.principles if stage in p.stages]


def load_constitution(path: Path) -> tuple[Constitution, str]:
    """The constitution and the sha256 of its text."""
    data, text = read_yaml(path)
    return validate(Constitution, data, path), sha256(text)
