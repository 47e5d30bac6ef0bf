"""The same labelled images as labels.csv, COCO (with a second, non-fracture category) and an Ultralytics YOLO
folder (data.yaml, a second class, empty and missing label files) give the same evaluation: image counts, AUC
and box AP (issue 26: a user's own data, read as it is)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from replicas import coco_folder, truth, yolo_folder

from bonefrac.apps.cli import main

pytestmark = pytest.mark.slow


def _metrics(dataset: Path, out: Path, model: Path, *extra: str) -> dict:
    args = ["evaluate", str(dataset), "--out", str(out), "--model", str(model), "--no-progress", *extra]
    assert main(args) == 0
    return json.loads((out / "metrics.json").read_text())


def _figures(m: dict) -> tuple:
    """Image counts, AUC and box AP: what must not depend on how the labels were written."""
    return m["n"], m["n_positive"], m["auc"], m["detection"]["ap50"], m["detection"]["n_gt_boxes"]


def test_every_layout_gives_the_same_evaluation(tiny_detector: Path, fixtures_dir: Path, tmp_path: Path) -> None:
    rows = truth()
    labels_csv = _metrics(fixtures_dir, tmp_path / "csv", tiny_detector)
    coco = _metrics(coco_folder(tmp_path / "coco", rows), tmp_path / "coco-out", tiny_detector)
    yolo = _metrics(yolo_folder(tmp_path / "yolo", rows), tmp_path / "yolo-out", tiny_detector, "--subset", "all")
    assert _figures(coco) == _figures(labels_csv) == _figures(yolo)
    assert _figures(labels_csv)[:2] == (len(rows), sum(r["label"] for r in rows))


def test_a_yolo_dataset_is_evaluated_on_its_val_subset_by_default(tiny_detector: Path, tmp_path: Path) -> None:
    rows = truth()
    m = _metrics(yolo_folder(tmp_path / "yolo", rows), tmp_path / "out", tiny_detector)
    val = [r for i, r in enumerate(rows) if i % 3 == 0]  # the replica's val subset
    assert _figures(m)[:2] == (len(val), sum(r["label"] for r in val))
