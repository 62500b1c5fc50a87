"""Rerunning one stage of a run under a changed constitution or a changed curriculum.

The rerun is a new run folder beside the original. It shares by link the stages before the
rerun stage and, of that stage, the steps the change cannot reach; every step from the first
one the change reaches is computed anew, so the two runs differ only by what changed. The
original is never written to. This is how a filter, a pair source or a principle is measured:
same tasks, same samples, same starting policy, one setting apart.
"""

from __future__ import annotations

from pathlib import Path

from cai.config.constitution import Constitution
from cai.config.curriculum import Curriculum, StageConfig, StageSettings, resolve_stage
from cai.config.settings import ConfigError
from cai.store import STEPS, Run, derive

# What each step writes under stageN/.
STEP_FILES = {
    "optimize": ("programs", "optimize_responses.jsonl", "prompts.md"),
    "propose": ("proposals.jsonl", "tasks.jsonl"),
    "respond": ("responses.jsonl",),
    "contrast": ("contrasts.jsonl",),
    "critique": ("critiques.jsonl",),
    "revise": ("revisions.jsonl",),
    "judge": ("judgments.jsonl",),
    "guard": ("guard.jsonl", "safety.jsonl"),
    "quality": ("quality.jsonl",),
    "pairs": ("pairs.jsonl",),
    "train": ("adapter",),
    "swap": (),
    "evaluate": ("eval", "eval.json"),
    "gate": (),
    "test": ("test", "test.json"),
}
# The first step that reads each stage setting (config.StageConfig). A setting not named here (the
# kind of task, seeds, counts, sampling, prompt optimization) reaches the whole stage. The guard
# reads the pairs' settings too: it classifies the candidate pairs, as selected and filtered.
FIRST_READER = {
    "pair_sources": "contrast",
    "judge_min_agreement": "contrast",
    "judge_margin": "guard",
    "pair_filters": "guard",
    "train": "train",
    "suites": "evaluate",
    "gate": "gate",
}
# The constitution is first read by the contrast step, and by optimize's contrast, critique and
# revise
# programs: optimize is compiled anew, and keeps its constitution-free parts.
CONSTITUTION_FREE_OPTIMIZE = (
    "programs/propose.json",
    "programs/judge.json",
    "optimize_responses.jsonl",
)


def changed_settings(old: StageConfig, new: StageConfig) -> list[str]:
    """The stage settings that differ, by name."""
    return [name for name in StageConfig.model_fields if getattr(old, name) != getattr(new, name)]


def first_step_reached(settings: list[str], constitution_changed: bool) -> str | None:
    """The first step of the stage that a change of these settings (and of the constitution)
    reaches."""
    reached = [FIRST_READER.get(name, STEPS[0]) for name in settings] + (
        ["contrast"] if constitution_changed else []
    )
    return min(reached, key=STEPS.index) if reached else None


def profile_changes(old: Curriculum, old_name: str, new: Curriculum, new_name: str) -> list[str]:
    """The profile's settings outside the stages (model, serving, guard...) that differ: a rerun
    can't share anything made under those."""
    a, b = old.profiles[old_name], new.profiles[new_name]
    return [
        f"profiles.{new_name}.{k}"
        for k in type(b).model_fields
        if k not in StageSettings.model_fields and getattr(a, k) != getattr(b, k)
    ]


def rerun_stage(
    original: Run,
    stage: int,
    constitution: Constitution,
    curriculum: Curriculum,
    profile: str,
    manifest: dict,
) -> Path | None:
    """The folder of the rerun of `stage` of `original` under this constitution and curriculum,
    made on first use (`manifest` is the new run's, fresh); None where neither changes anything
    that stage reads (nothing to rerun)."""
    before = original.manifest
    old_constitution = Constitution.model_validate(before["snapshot"]["constitution"])
    constitution_changed = old_constitution.for_stage(stage) != constitution.for_stage(stage)
    new_config = manifest["config"]
    settings: list[str] = []
    old_profile = before["config"]["profile"]
    if (
        before["config"]["curriculum_sha256"] != new_config["curriculum_sha256"]
        or old_profile != profile
    ):
        old_curriculum = Curriculum.model_validate(before["snapshot"]["curriculum"])
        if changed := profile_changes(old_curriculum, old_profile, curriculum, profile):
            raise ConfigError(
                f"--only stage{stage}: {original.root} was made with other profile settings "
                f"({', '.join(changed)}); a rerun changes stage settings or principles only: use "
                "another --run"
            )
        settings = changed_settings(
            resolve_stage(old_curriculum, old_curriculum.profiles[old_profile], stage),
            resolve_stage(curriculum, curriculum.profiles[profile], stage),
        )
    first = first_step_reached(settings, constitution_changed)
    if first is None:
        return None
    what = (["constitution"] if constitution_changed else []) + [
        f"curriculum: {', '.join(settings)}"
    ] * bool(settings)
    names = [f"constitution-{new_config['constitution_sha256'][:8]}"] * (
        new_config["constitution_sha256"] != before["config"]["constitution_sha256"]
    )
    names += [profile] * (profile != old_profile)
    names += [f"curriculum-{new_config['curriculum_sha256'][:8]}"] * (
        new_config["curriculum_sha256"] != before["config"]["curriculum_sha256"]
    )
    folder = original.root.parent / "-".join([original.root.name, f"stage{stage}", *names])
    if Run(folder).manifest:
        return folder

    shared = list(STEPS[: STEPS.index(first)])
    files = [f for k in shared for f in STEP_FILES[k]]
    if constitution_changed and "optimize" in shared:
        shared.remove("optimize")
        files = [f for f in files if f not in STEP_FILES["optimize"]] + list(
            CONSTITUTION_FREE_OPTIMIZE
        )
    # the original never got that far: the stage is computed whole
    if not all(original.step_done(stage, k) for k in shared):
        shared, files = [], []
    manifest["run"] = folder.name
    manifest["derived_from"] = {
        "run": str(original.root),
        "stage": stage,
        "changed": what,
        "first_step": first,
        **{k: before["config"][k] for k in ("constitution_sha256", "curriculum_sha256", "profile")},
    }
    manifest["stages"] = {f"stage{m}": original.stage(m) for m in range(0, stage)}
    manifest["stages"][f"stage{stage}"] = {
        "steps": {k: original.stage(stage)["steps"][k] for k in shared}
    }
    derive(original, folder, manifest, stage, files)
    return folder
