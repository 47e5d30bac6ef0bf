"""A training run's folder: run.json (the settings and every command that trained the run), history.csv and
its plot, `--overwrite`'s clean slate, reading the resume state (last.pt: `loop.resume_state` says what it
holds), and the command that continues an interrupted run.

Written by rank 0 only (see `loop`).
"""

from __future__ import annotations

import csv
import json
import os
import platform
import shlex
import sys
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bonefrac._version import __version__
from bonefrac.train import distributed
from bonefrac.train.config import RUN_FILES, ConfigError, TrainConfig


def clear(out: Path) -> None:
    """Remove what an earlier run wrote (`--overwrite`): a stale split.json would otherwise be reused."""
    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)


def _invocations(path: Path) -> list[dict[str, Any]]:
    """The commands recorded in an existing run.json (one `command` in files from before the list)."""
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    if isinstance(info.get("invocations"), list):
        return info["invocations"]
    return [{"command": info["command"]}] if "command" in info else []


def record_invocation(out: Path, cfg: TrainConfig, n_train: int, n_val: int, first_epoch: int) -> None:
    """Write run.json: the settings, the versions, and this command appended to those that worked in this
    folder before (`--overwrite` starts the list again)."""
    import numpy as np
    import torch

    path = out / "run.json"
    earlier = _invocations(path)
    now = {
        "command": sys.argv,
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "first_epoch": first_epoch + 1,
        "world_size": distributed.world_size(),
    }
    info = {
        "invocations": [*earlier, now],
        "config": asdict(cfg),
        "n_train": n_train,
        "n_val": n_val,
        "versions": {
            "bonefrac": __version__,
            "torch": torch.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "threads": torch.get_num_threads(),
        "world_size": distributed.world_size(),
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(info, indent=2))
    os.replace(tmp, path)


def write_history(out: Path, history: list[dict[str, float]]) -> None:
    with open(out / "history.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(history[0]))
        w.writeheader()
        w.writerows(history)
    from bonefrac.evaluation.report import plot_learning_curve

    plot_learning_curve(history, out / "learning_curve.png")


def resume_command(argv: list[str]) -> str:
    """The `bonefrac train` command line `argv` (without the program) made to continue its run."""
    args = [a for a in argv if a != "--overwrite"]
    return shlex.join(["bonefrac", *args, *([] if "--resume" in args else ["--resume"])])


# ---------------------------------------------------------------- last.pt
def read_last(out: Path) -> dict[str, Any] | None:
    """The resume state in rank 0's `out`/last.pt, on every rank (None, said once, when there is none); an
    earlier version's last.pt, which the loop cannot continue, is refused."""
    import torch

    path = out / "last.pt"
    main = distributed.is_main()
    state = torch.load(path, map_location="cpu", weights_only=True) if main and path.is_file() else None
    state = distributed.broadcast_object(state)
    if state is None and main:
        print(f"nothing to resume in {out} (no last.pt): starting from the first epoch")
    if state is not None and "schedule" not in state:
        raise ConfigError(f"--resume: {path} was written by an earlier bonefrac; start again with --overwrite")
    return state
