"""A training run's folder: run.json (the settings and every command that trained the run), history.csv and
its plot, `--overwrite`'s clean slate, the resume state (last.pt), and the command that continues an
interrupted run.

Written by rank 0 only (see `train`).
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
from typing import TYPE_CHECKING, Any

from bonefrac._version import __version__
from bonefrac.train import distributed
from bonefrac.train.config import RUN_FILES, TrainConfig

if TYPE_CHECKING:
    from bonefrac.train.loop import Run


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
def restore(run: Run) -> None:
    """Continue from rank 0's last.pt (every rank receives it): weights, EMA, optimiser, RNG, history."""
    import torch

    path = run.out / "last.pt"
    main = distributed.is_main()
    state = torch.load(path, map_location="cpu", weights_only=True) if main and path.is_file() else None
    state = distributed.broadcast_object(state)
    if state is None:
        if main:
            print(f"nothing to resume in {run.out} (no last.pt): starting from the first epoch")
        return
    run.model.load_state_dict(state["model"])
    run.ema.module.load_state_dict(state["ema"])
    run.ema.updates = state["ema_updates"]
    run.opt.load_state_dict(state["optimizer"])
    if state.get("scaler") and run.precision.scaler.is_enabled():  # an fp16 run's loss scale, into fp16
        run.precision.scaler.load_state_dict(state["scaler"])
    run.first_epoch, run.best_score, run.stale = state["epoch"] + 1, state["best_score"], state["stale"]
    run.history = state["history"]
    # Dropout and stochastic depth continue as if never stopped: they draw from the device's generator.
    torch.set_rng_state(state["torch_rng"])
    if run.device.type == "cuda" and "cuda_rng" in state:
        torch.cuda.set_rng_state(state["cuda_rng"], run.device)
    if main:
        print(f"resuming after epoch {run.first_epoch} (best validation score so far {run.best_score:.4f})")


def resume_state(run: Run, epoch: int) -> dict[str, Any]:
    """What `restore` needs to continue after `epoch` exactly as if the run had never stopped (last.pt)."""
    import torch

    state = {
        "model": run.model.state_dict(),
        "ema": run.ema.module.state_dict(),
        "ema_updates": run.ema.updates,
        "optimizer": run.opt.state_dict(),
        "epoch": epoch,
        "best_score": run.best_score,
        "stale": run.stale,
        "history": run.history,
        "torch_rng": torch.get_rng_state(),
        "scaler": run.precision.scaler.state_dict(),  # {} unless fp16
    }
    if run.device.type == "cuda":
        state["cuda_rng"] = torch.cuda.get_rng_state(run.device)
    return state
