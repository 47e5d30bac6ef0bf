"""Training on the real fixture radiographs: outputs, determinism, and kill-then-resume."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from _models import FIXTURES

from bonefrac import FractureDetector

ARGS = [
    "--arch",
    "seed_cnn",
    "--image-size",
    "64",
    "--batch-size",
    "4",
    "--val-fraction",
    "0.34",
    "--no-progress",
]


def train(out: Path, cache: Path, *extra: str, wait: bool = True) -> subprocess.Popen[str]:
    cmd = [
        sys.executable,
        "-m",
        "bonefrac",
        "train",
        str(FIXTURES),
        "--out",
        str(out),
        "--cache-dir",
        str(cache),
        *ARGS,
        *extra,
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if wait:
        output, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, output
    return proc


def _state(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "last.pt", weights_only=True)["model"]


@pytest.mark.slow
def test_train_writes_a_loadable_run(tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(run, tmp_path / "cache", "--epochs", "2", "--reduce-from", "2")  # the 454 px fixtures read at 1/2
    for name in (
        "model.pt",
        "model.pt.sha256",
        "last.pt",
        "history.csv",
        "learning_curve.png",
        "split.json",
        "run.json",
    ):
        assert (run / name).is_file(), name
    history = list(csv.DictReader(open(run / "history.csv")))
    assert [int(h["epoch"]) for h in history] == [1, 2]
    split = json.loads((run / "split.json").read_text())
    assert set(split.values()) == {"train", "val"} and len(split) == 14
    # duplicate groups never straddle the split
    assert split["IMG0001763.jpg"] == split["IMG0002615.jpg"]
    info = json.loads((run / "run.json").read_text())
    assert info["versions"]["torch"] == torch.__version__ and "train" in info["command"]
    det = FractureDetector.load(run, backend="torch")
    assert det.spec.arch == "seed_cnn" and det.spec.image_size == 64 and det.spec.reduce_from == 2
    assert info["config"]["reduce_from"] == 2
    v = det.info["validation"]
    assert set(v["operating_points"]) == {"default", "high_sensitivity", "high_specificity"}
    assert det.operating_points["default"] == v["operating_points"]["default"]["threshold"]


@pytest.mark.slow
def test_kill_mid_run_then_resume_matches_uninterrupted(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    straight = tmp_path / "straight"
    train(straight, cache, "--epochs", "4")
    killed = tmp_path / "killed"
    # SIGKILL as soon as the first epoch's checkpoint lands: the run dies inside a later epoch (or between).
    proc0 = train(killed, cache, "--epochs", "4", wait=False)
    deadline = time.time() + 120
    while not (killed / "last.pt").exists() and time.time() < deadline and proc0.poll() is None:
        time.sleep(0.02)
    os.kill(proc0.pid, signal.SIGKILL)
    proc0.wait()
    assert (killed / "last.pt").exists()
    done_before = len(list(csv.DictReader(open(killed / "history.csv"))))
    proc = train(killed, cache, "--epochs", "4", "--resume")
    assert proc.returncode == 0
    history = list(csv.DictReader(open(killed / "history.csv")))
    assert [int(h["epoch"]) for h in history] == [1, 2, 3, 4]
    assert done_before >= 1
    a, b = _state(straight), _state(killed)
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-5), k


@pytest.mark.slow
def test_init_from_starts_at_the_given_weights(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = tmp_path / "first"
    train(first, cache, "--epochs", "1")
    tuned = tmp_path / "tuned"
    train(tuned, cache, "--epochs", "1", "--init-from", str(first / "model.pt"), "--lr", "0")
    start = torch.load(first / "model.pt", weights_only=True)["state_dict"]
    after = _state(tuned)
    # lr 0: the weights are exactly the checkpoint's (BatchNorm running statistics still move)
    weights = [k for k in start if k.endswith("weight")]
    assert weights and all(torch.equal(start[k], after[k]) for k in weights)
    proc = train(tmp_path / "bad", cache, "--epochs", "1", "--init-from", str(first), "--image-size", "96", wait=False)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 1 and "seed_cnn at 64px" in output and "Traceback" not in output
