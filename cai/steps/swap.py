"""swap: the new policy put into the running server, without a restart."""

from __future__ import annotations

from cai.config.curriculum import StageConfig
from cai.store import Timer, policy_name


def swap(ctx, st: StageConfig, policy: str) -> dict:
    """Put the new policy into the running server (`serve.swap`): loaded (lora), or merged and
    reloaded (merged)."""
    name = policy_name(st.number)
    with Timer() as t:
        ctx.swap.make_servable(name, ctx.run.root / name / "adapter", keep=(policy,))
    return {
        "swap": ctx.server.settings.swap,
        "load_seconds": round(t.seconds, 3),
        "served_as": name,
    }
