"""`bonefrac evaluate`: the model's own images are counted and never flatter silently; splits match by
path; small groups carry a caveat; plots leave matplotlib's backend alone; the terminal output stays whole."""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from _models import FIXTURES, make_checkpoint
from terminal import run_on_a_terminal

from bonefrac.checkpoint import atomic_save, sha256_file
from bonefrac.data import content_digest, load_dataset
from bonefrac.errors import DatasetError
from bonefrac.evaluate import evaluate, select_records
from bonefrac.metrics import auc

ROOT = Path(__file__).resolve().parents[1]
IMAGES = FIXTURES / "images"
TRAIN = ["IMG0000505.jpg", "IMG0001089.jpg", "IMG0001271.jpg", "IMG0001763.jpg"]
VALIDATION = ["IMG0001910.jpg", "IMG0002385.jpg"]


def with_digests(path: Path, train: list[str], validation: list[str]) -> Path:
    """A tiny checkpoint whose info lists these fixture images as its training and validation images."""
    make_checkpoint(path)
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    ckpt["info"]["image_digests"] = {
        "train": [content_digest(IMAGES / n) for n in train],
        "validation": [content_digest(IMAGES / n) for n in validation],
    }
    atomic_save(ckpt, path)
    Path(f"{path}.sha256").write_text(f"{sha256_file(path)}  {path.name}\n")
    return path


@pytest.fixture(scope="module")
def seen_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return with_digests(tmp_path_factory.mktemp("m") / "model.pt", TRAIN, VALIDATION)


@pytest.fixture(scope="module")
def report(seen_model: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("rep")
    return evaluate(FIXTURES, out, model=seen_model, backend="torch", workers=1, progress=False), out


def test_overlap_is_counted_by_content_and_the_unseen_images_come_first(report: tuple[dict, Path]) -> None:
    m, out = report
    # IMG0002615 is a byte-for-byte copy of IMG0001763 (a training image): seen, whatever its name.
    assert m["overlap"] == {"train": 5, "validation": 2, "unseen": 7}
    assert list(m)[:2] == ["overlap", "by_overlap"] and list(m["by_overlap"]) == ["unseen", "validation", "train"]
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    unseen = [r for r in rows if r["seen_by_model"] == "unseen"]
    assert {r["path"].split("/")[-1] for r in rows if r["seen_by_model"] == "train"} == {*TRAIN, "IMG0002615.jpg"}
    y = np.array([int(r["label"]) for r in unseen])
    p = np.array([float(r["probability"]) for r in unseen])
    assert m["by_overlap"]["unseen"]["n"] == 7 and m["by_overlap"]["unseen"]["auc"] == pytest.approx(auc(y, p))
    assert json.loads((out / "metrics.json").read_text())["overlap"] == m["overlap"]
    text = (out / "results.txt").read_text()
    assert "seen by the model: 5 trained on, 2 validated on, 7 unseen" in text
    assert text.index("UNSEEN IMAGES") < text.index("ALL 14 IMAGES (7 of them seen by the model: optimistic)")
    assert "5 of these images trained the model" in text


def test_small_groups_get_a_caveat_not_a_bare_auc(report: tuple[dict, Path]) -> None:
    m, out = report
    hip = m["per_region"]["hip"]  # one fractured hip, one not
    assert (hip["n"], hip["n_positive"]) == (2, 1)
    assert hip["caveat"].startswith("too few fractures (n=1) and images without a fracture (n=1)")
    assert m["by_overlap"]["unseen"]["caveat"].startswith("too few fractures (n=4)")
    text = (out / "results.txt").read_text()
    hip_line = next(line for line in text.splitlines() if line.strip().startswith("hip "))
    assert "too few fractures (n=1)" in hip_line
    assert "caveat: too few fractures (n=7) and images without a fracture (n=7)" in text  # all 14 images


def test_a_model_without_digests_says_the_overlap_is_unknown(tmp_path: Path) -> None:
    model = make_checkpoint(tmp_path / "model.pt")
    m = evaluate(FIXTURES, tmp_path / "rep", model=model, backend="torch", workers=1, progress=False)
    assert m["overlap"] is None and m["by_overlap"] is None
    text = (tmp_path / "rep" / "results.txt").read_text()
    assert "seen by the model: unknown" in text and "UNSEEN" not in text


def test_bundled_model_knows_its_training_images() -> None:
    """The fixtures are FracAtlas images: 12 trained the bundled model and 2 validated it (its split.json)."""
    from bonefrac.detector import FractureDetector

    det = FractureDetector.load(backend="torch")
    split = json.loads((ROOT / "src/bonefrac/weights/split.json").read_text())
    groups = {"train": "train", "val": "validation"}
    expected = {"train": 0, "validation": 0, "unseen": 0}
    for r in load_dataset(FIXTURES):
        expected[groups[split[r.key]]] += 1
    assert expected == {"train": 12, "validation": 2, "unseen": 0}
    digests = det.info["image_digests"]
    for r in load_dataset(FIXTURES):
        assert content_digest(r.path) in digests[groups[split[r.key]]], r.key


def test_split_matches_a_csv_of_absolute_paths(tmp_path: Path) -> None:
    """A split keyed by FracAtlas file names selects from a CSV that lists the same files by absolute path."""
    csv_path = tmp_path / "data.csv"
    rows = list(csv.DictReader(open(FIXTURES / "labels.csv")))
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        w.writerows([str(IMAGES / r["filename"]), r["fractured"]] for r in rows)
    split = tmp_path / "split.json"
    split.write_text(json.dumps({r["filename"]: ("val" if i % 3 == 0 else "train") for i, r in enumerate(rows)}))
    val = select_records(csv_path, split, "val")
    assert [Path(r.path).name for r in val] == [r["filename"] for i, r in enumerate(rows) if i % 3 == 0]
    assert len(select_records(csv_path, split, "train")) == len(rows) - len(val)
    # A split keyed by the folder-relative path matches too; one key claimed by two files is refused.
    split.write_text(json.dumps({f"images/{rows[0]['filename']}": "val"}))
    assert [Path(r.path).name for r in select_records(csv_path, split, "val")] == [rows[0]["filename"]]
    twin = tmp_path / "copy" / rows[0]["filename"]
    twin.parent.mkdir()
    twin.write_bytes((IMAGES / rows[0]["filename"]).read_bytes())
    with open(csv_path, "a", newline="") as f:
        csv.writer(f).writerow([str(twin), rows[0]["fractured"]])
    split.write_text(json.dumps({rows[0]["filename"]: "val"}))
    with pytest.raises(DatasetError, match="matches both"):
        select_records(csv_path, split, "val")


def test_plots_leave_matplotlib_backend_alone(tmp_path: Path) -> None:
    """Importing the report module and drawing every plot selects no backend and never imports pyplot."""
    code = f"""
import sys, matplotlib, numpy as np
before = dict.__getitem__(matplotlib.rcParams, "backend")
from bonefrac import report
y = np.array([0, 1] * 20); p = np.linspace(0, 1, 40)
report.write_plots(y, p, {{"default": 0.5}}, __import__("pathlib").Path({str(tmp_path)!r}))
report.plot_learning_curve([{{"epoch": 1, "train_loss": 1, "val_loss": 1, "val_auc": 0.5}}], \
__import__("pathlib").Path({str(tmp_path / "lc.png")!r}))
assert "matplotlib.pyplot" not in sys.modules, "pyplot imported"
assert dict.__getitem__(matplotlib.rcParams, "backend") == before, "backend changed"
"""
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    for name in ("roc.png", "pr.png", "calibration.png", "confusion_default.png", "lc.png"):
        assert (tmp_path / name).stat().st_size > 1000, name


def test_evaluate_help_shows_every_default() -> None:
    from bonefrac.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    parser = sub.choices["evaluate"]
    formatter = parser._get_formatter()
    for action in parser._actions:
        if not action.option_strings or action.required or action.dest == "help":
            continue
        text = formatter._expand_help(action)
        assert "default" in text, action.option_strings
        if action.default not in (None, False):
            assert str(action.default) in text, action.option_strings


def test_terminal_output_progress_bar_then_whole_report(seen_model: Path, tmp_path: Path) -> None:
    """On a terminal the bar finishes its line before the report starts, and the report says what was seen."""
    cmd = [sys.executable, "-m", "bonefrac", "evaluate", str(FIXTURES), "--out", str(tmp_path / "rep")]
    code, text = run_on_a_terminal([*cmd, "--model", str(seen_model), "--backend", "torch", "--workers", "1"])
    assert code == 0
    lines = text.replace("\r\n", "\n").split("\n")
    start = lines.index("bonefrac evaluation")
    assert any("evaluate: 100%" in line for line in lines[:start])  # the bar was drawn, and before the report
    report_lines = lines[start:]
    assert not any("evaluate:" in line or "\r" in line for line in report_lines)
    assert "seen by the model: 5 trained on, 2 validated on, 7 unseen" in report_lines
    assert report_lines[-2].startswith("report written to")


def _stamp_tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("stamp_digests", ROOT / "tools" / "stamp_digests.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_stamp_digests_tool_adds_digests_and_keeps_the_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    tool = _stamp_tool()
    model = make_checkpoint(tmp_path / "model.pt")
    split = tmp_path / "split.json"
    split.write_text(json.dumps({n: "train" for n in TRAIN} | {n: "val" for n in VALIDATION}))
    argv = ["stamp_digests.py", str(model), "--split", str(split), "--dataset", str(FIXTURES)]
    monkeypatch.setattr(sys, "argv", argv)
    assert tool.main() == 0
    assert (tmp_path / "model.pt.sha256").read_text().split()[0] == sha256_file(model)
    before = torch.load(make_checkpoint(tmp_path / "fresh.pt"), weights_only=True)  # the same seed: same weights
    after = torch.load(model, weights_only=True)
    assert after["spec"] == before["spec"] and after["info"]["model_version"] == before["info"]["model_version"]
    assert all(torch.equal(after["state_dict"][k], v) for k, v in before["state_dict"].items())
    assert after["info"]["image_digests"] == {
        "train": sorted(content_digest(IMAGES / n) for n in TRAIN),
        "validation": sorted(content_digest(IMAGES / n) for n in VALIDATION),
    }
    # A split naming images the dataset does not hold is refused: the list would be wrong.
    split.write_text(json.dumps({"IMG9999999.jpg": "train"} | {n: "val" for n in VALIDATION}))
    capsys.readouterr()
    assert tool.main() == 1 and "found in" in capsys.readouterr().err
