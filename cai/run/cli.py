"""The command line: `bootstrap.py COMMAND ...` or `bootstrap.py [flags]`, and every error to one line
and an exit code: 0 done, 1 a step failed, 2 a usage or config error (nothing written), 3 stopped
by the budget (resumable), 130 interrupted."""

from __future__ import annotations

import argparse
import errno
import signal
import sys
from pathlib import Path

from cai import ROOT
from cai.config.settings import ConfigError
from cai.run import budget, commands, dry_run
from cai.serving.lm import RequestFailed
from cai.serving.model import ModelError
from cai.serving.server import ServerError
from cai.store import StageError
from cai.training import TrainingError


def parse_args(argv: list[str] | None, description: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bootstrap.py",
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run folder layout and profiles: README.md",
    )
    which = p.add_mutually_exclusive_group()
    which.add_argument("--until", metavar="stageK", help="run stages 1..K (default: stage6)")
    which.add_argument(
        "--only", metavar="stageK", help="run stage K alone; stages before it must be done"
    )
    p.add_argument(
        "--run",
        metavar="NAME",
        help="run folder: runs/NAME, or a path (default: the profile's name)",
    )
    p.add_argument(
        "--constitution", type=Path, default=ROOT / "constitution.yaml", help="principles file"
    )
    p.add_argument("--curriculum", type=Path, default=ROOT / "curriculum.yaml", help="stages file")
    p.add_argument(
        "--profile",
        help="a profile of curriculum.yaml (default: the one the run named by --run was made "
        "with; for a new run, gpu where CUDA is present, else cpu)",
    )
    p.add_argument("--seed", type=int, help="run seed (default: curriculum.yaml's seed)")
    p.add_argument(
        "--budget-usd",
        type=float,
        help="stop cleanly at a step boundary before the GPU-hours spent pass this "
        "(a re-run with a larger budget goes on)",
    )
    p.add_argument(
        "--gpu-price-per-hour",
        type=float,
        help="USD per GPU-hour (default: the profile's gpu.price_per_hour)",
    )
    return p.parse_args(argv)


COMMANDS = {
    "export": commands.export,
    "report": commands.report,
    "prompts": commands.prompts,
    "verify": commands.verify,
    "plan": commands.plan,
    "principles": dry_run.principles,
}


def main(argv: list[str] | None, bootstrap, description: str) -> int:
    """`bootstrap.py COMMAND ...` (a command that reads a run folder) or `bootstrap.py [flags]`
    (`bootstrap(args)`, the run), with every error turned into one line and an exit code."""
    argv = sys.argv[1:] if argv is None else argv
    command = COMMANDS.get(argv[0]) if argv else None
    args = None if command else parse_args(argv, description)
    # A SIGTERM unwinds like Ctrl-C, so the server is stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        return command(argv[1:]) if command else bootstrap(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (ModelError, ServerError, RequestFailed, TrainingError, StageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except budget.BudgetSpent as e:
        print(f"stopped: {e}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("interrupted: re-run the same command to resume", file=sys.stderr)
        return 130
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        print(
            f"error: the disk is full (writing {e.filename or 'the run folder'}); what was written "
            "is kept: free some space and re-run the same command to resume",
            file=sys.stderr,
        )
        return 1
