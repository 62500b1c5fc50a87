"""gate: promote the stage only if its scores hold."""

from __future__ import annotations

from cai.config.curriculum import StageConfig
from cai.measuring.gate import decide


def gate(ctx, st: StageConfig, reference: str) -> dict:
    """The stage's scores against the last promoted stage's and the base's
    (cai/measuring/gate.py)."""
    failed = decide(ctx.run, st.number, reference, st.gate)
    return {"promoted": not failed, "against": reference, "failed": len(failed)}
