"""`bonefrac predict`'s outputs (apps/sinks.py): each result reaches every output once, with its image decoded
once; CSV rows stream and survive Ctrl-C; warnings in the table and the CSV; COCO predictions equal to --json."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from _models import FIXTURE_IMAGES

from bonefrac.apps.predict import PredictOptions, run_predict
from bonefrac.inference.detector import FractureDetector
from bonefrac.results import CSV_COLUMNS

TRUNCATED = FIXTURE_IMAGES[0].parent / "IMG0004228.jpg"  # jpeg_truncated=1 in labels.csv


def _copies(folder: Path, n: int, nested: bool = False) -> list[Path]:
    """`n` copies of the fixture radiographs under `folder` (in two subfolders when `nested`)."""
    paths = []
    for i in range(n):
        source = FIXTURE_IMAGES[i % len(FIXTURE_IMAGES)]
        path = folder / (f"part{i % 2}" if nested else "") / f"{i:03d}_{source.name}"
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, path)
        paths.append(path)
    return paths


def test_csv_has_warnings_operating_point_model_version_and_one_box_format(
    tiny_classifier: Path, tmp_path: Path
) -> None:
    det = FractureDetector.load(tiny_classifier, backend="torch")
    out = io.StringIO()
    opts = PredictOptions(csv=str(tmp_path / "out.csv"), progress=False, operating_point="high_sensitivity")
    assert run_predict(det, [str(TRUNCATED), str(FIXTURE_IMAGES[1])], opts, out) == 0
    with open(tmp_path / "out.csv", newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames == CSV_COLUMNS
    assert {"warnings", "operating_point", "model_version"} <= set(CSV_COLUMNS)
    assert "truncated" in rows[0]["warnings"] and rows[1]["warnings"] == ""
    assert {r["operating_point"] for r in rows} == {"high_sensitivity"} and {r["model_version"] for r in rows} == {
        det.version
    }
    direct = [det.predict(p, operating_point="high_sensitivity", heatmap=False) for p in (TRUNCATED, FIXTURE_IMAGES[1])]
    for row, pred in zip(rows, direct, strict=True):
        for column, boxes in (("boxes", pred.to_dict()["boxes"]), ("detections", pred.to_dict()["detections"])):
            parsed = [[float(v) for v in b.split()] for b in row[column].split(";")] if row[column] else []
            assert parsed == boxes  # both as "x0 y0 x1 y1 score;...", the values of --json
    # The table line of the truncated file carries its warning; the other's carries none.
    lines = out.getvalue().splitlines()
    assert "warning:" in lines[1] and "truncated" in lines[1] and "warning" not in lines[2]


def test_outputs_draw_on_the_image_decoded_for_the_model(
    tiny_classifier: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each file is decoded once: overlays are drawn on the image the model read, never on a second read."""
    import bonefrac.preprocess
    import bonefrac.render

    reads: list[str] = []
    read_image = bonefrac.preprocess.read_image

    def counted(path: str | Path, *args: object, **kwargs: object) -> object:
        reads.append(str(path))
        return read_image(path, *args, **kwargs)  # type: ignore[arg-type]

    def refused(path: str | Path) -> None:
        raise AssertionError(f"{path} decoded again for its overlay")

    monkeypatch.setattr(bonefrac.preprocess, "read_image", counted)
    monkeypatch.setattr(bonefrac.render, "read_for_display", refused)
    det = FractureDetector.load(tiny_classifier, backend="torch")
    files = [str(p) for p in FIXTURE_IMAGES[:4]]
    opts = PredictOptions(overlay_dir=str(tmp_path / "ov"), progress=False, workers=2)
    assert run_predict(det, files, opts, io.StringIO()) == 0
    assert sorted(reads) == sorted(files)
    assert len(list((tmp_path / "ov").glob("*.overlay.png"))) == 4


def test_coco_predictions_load_in_pycocotools_and_equal_the_json(tiny_detector: Path, tmp_path: Path) -> None:
    pytest.importorskip("pycocotools", reason="pycocotools checks the COCO file")
    from pycocotools.coco import COCO

    folder = tmp_path / "in"
    _copies(folder, 30, nested=True)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff")  # no size: not a COCO image
    det = FractureDetector.load(tiny_detector, backend="onnx")
    out = io.StringIO()
    opts = PredictOptions(json=True, coco=str(tmp_path / "predictions.json"), progress=False)
    assert run_predict(det, [str(folder)], opts, out) == 1
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    predicted = {Path(d["path"]).relative_to(folder).as_posix(): d for d in lines if "error" not in d}
    assert len(predicted) == 30

    coco = COCO(str(tmp_path / "predictions.json"))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["fracture"]
    images = coco.loadImgs(coco.getImgIds())
    assert sorted(im["file_name"] for im in images) == sorted(predicted)  # relative to the input folder
    n_detections = 0
    for im in images:
        d = predicted[im["file_name"]]
        assert (im["width"], im["height"]) == (d["width"], d["height"])
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[im["id"]]))
        assert len(anns) == len(d["detections"])
        for ann, (x0, y0, x1, y1, score) in zip(anns, d["detections"], strict=True):
            x, y, w, h = ann["bbox"]
            # w, h are differences of values rounded to 0.1 px, rounded again: equal up to float rounding
            assert (x, y, ann["score"]) == (x0, y0, score)
            assert (x + w, y + h) == (pytest.approx(x1, rel=1e-12), pytest.approx(y1, rel=1e-12))
        n_detections += len(anns)
    assert n_detections > 0
    results = coco.loadRes(coco.dataset["annotations"])  # what COCOeval does with a detector's results
    assert len(results.getAnnIds()) == n_detections


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child process")
def test_ctrl_c_keeps_every_row_printed_in_the_csv(tiny_classifier: Path, tmp_path: Path) -> None:
    """Interrupted after some rows: the CSV holds exactly the rows printed, and stderr says how far it got."""
    n = 40
    _copies(tmp_path / "in", n)
    command = [sys.executable, "-m", "bonefrac", "predict", str(tmp_path / "in"), "--csv", str(tmp_path / "out.csv"),
               "--model", str(tiny_classifier), "--backend", "torch", "--no-progress", "--batch-size", "1",
               "--workers", "1"]  # fmt: skip
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert child.stdout is not None
    printed = [child.stdout.readline() for _ in range(1 + 5)][1:]  # the header, then 5 rows
    child.send_signal(signal.SIGINT)
    rest, err = child.communicate(timeout=120)
    printed += rest.splitlines(keepends=True)
    rows = [line.split()[0] for line in printed if line.strip()]
    assert child.returncode == 130, err
    assert 5 <= len(rows) < n  # stopped early, after the rows already printed
    assert err.strip().splitlines()[-1] == f"bonefrac: interrupted after {len(rows)} of {n}"
    with open(tmp_path / "out.csv", newline="") as f:
        assert [r["path"] for r in csv.DictReader(f)] == rows
