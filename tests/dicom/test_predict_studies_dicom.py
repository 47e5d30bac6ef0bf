"""`bonefrac predict --by-study` (study lines beside the image lines, in the table, JSON and CSV) and
`--dicom-out` (an SR per study and an overlay per DICOM input; other inputs said once)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pydicom
import pytest
from _models import make_checkpoint
from dicom_helpers import radiograph_study

from bonefrac.apps.cli import build_parser
from bonefrac.apps.predict import PredictOptions, run_predict
from bonefrac.dicom.report import report_probabilities
from bonefrac.inference.detector import FractureDetector
from bonefrac.results import CSV_COLUMNS


@pytest.fixture(scope="module")
def detector(tmp_path_factory: pytest.TempPathFactory) -> FractureDetector:
    return FractureDetector.load(make_checkpoint(tmp_path_factory.mktemp("model") / "m.pt"), backend="torch")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory, fixtures_dir: Path) -> dict[str, list[Path]]:
    """One DICOM study split over two folders, and two JPEGs in one folder."""
    root = tmp_path_factory.mktemp("inputs")
    first, second = radiograph_study(root / "dicom-a")
    (root / "dicom-b").mkdir()
    moved = second.rename(root / "dicom-b" / second.name)
    jpegs = root / "wrist"
    jpegs.mkdir()
    for name in ("IMG0001271.jpg", "IMG0002385.jpg"):
        (jpegs / name).write_bytes((fixtures_dir / "images" / name).read_bytes())
    return {"dicom": [first, moved], "jpeg": sorted(jpegs.iterdir())}


def _run(detector: FractureDetector, paths: list[Path], **options: object) -> tuple[int, str]:
    out = io.StringIO()
    code = run_predict(detector, [str(p) for p in paths], PredictOptions(progress=False, **options), out=out)
    return code, out.getvalue()


def test_json_study_lines_follow_the_image_lines(detector: FractureDetector, inputs: dict[str, list[Path]]) -> None:
    code, text = _run(detector, [*inputs["dicom"], inputs["jpeg"][0].parent], json=True, by_study=True)
    lines = [json.loads(line) for line in text.splitlines()]
    images = [d for d in lines if d["level"] == "image"]
    studies = [d for d in lines if d["level"] == "study"]
    assert code == 0 and len(images) == 4 and len(studies) == 2 and lines[-2:] == studies
    uid = str(pydicom.dcmread(inputs["dicom"][0], stop_before_pixels=True).StudyInstanceUID)
    by_study: dict[str, list[dict]] = {}
    for d in images:
        by_study.setdefault(d["study"], []).append(d)
    assert set(by_study) == {uid, str(inputs["jpeg"][0].parent)}  # DICOM by UID across folders; JPEG by folder
    for study in studies:
        views = by_study[study["study"]]
        assert study["probability"] == max(v["probability"] for v in views)
        assert study["fractured"] == (study["probability"] >= study["threshold"])
        assert study["rule"] == "maximum over views" and study["views"] == [v["path"] for v in views]


def test_table_and_csv_carry_the_study_rows(
    detector: FractureDetector, inputs: dict[str, list[Path]], tmp_path: Path
) -> None:
    code, text = _run(detector, inputs["jpeg"], by_study=True, csv=str(tmp_path / "r.csv"))
    assert code == 0
    table = text.splitlines()
    assert table[-1].startswith(f"study {inputs['jpeg'][0].parent}") and "(2 views, maximum over views)" in table[-1]
    with open(tmp_path / "r.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["level"] for r in rows] == ["image", "image", "study"]
    assert rows[2]["path"] == "" and rows[2]["study"] == rows[0]["study"] == str(inputs["jpeg"][0].parent)
    assert rows[2]["probability"] == max(rows[0]["probability"], rows[1]["probability"])
    # Without --by-study, the CSV is as before.
    _run(detector, inputs["jpeg"], csv=str(tmp_path / "plain.csv"))
    header = (tmp_path / "plain.csv").read_text().splitlines()[0]
    assert header == ",".join(CSV_COLUMNS) and "level" not in header


def test_dicom_out_writes_a_report_per_study_and_says_once_what_is_not_dicom(
    detector: FractureDetector, inputs: dict[str, list[Path]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "dicom-out"
    code, text = _run(detector, [*inputs["dicom"], *inputs["jpeg"]], json=True, dicom_out=str(out))
    assert code == 0
    written = sorted(out.rglob("*.dcm"))
    assert sorted(p.name[:2] for p in written) == ["OT", "OT", "SR"]  # 2 DICOM views of 1 study; no JPEG result
    (sr,) = [pydicom.dcmread(p) for p in written if p.name.startswith("SR_")]
    lines = {json.loads(line)["path"]: json.loads(line)["probability"] for line in text.splitlines()}
    uid = {str(p): str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in inputs["dicom"]}
    expected = {uid[p]: lines[p] for p in uid}
    assert report_probabilities(sr) == pytest.approx(expected | {"study": max(expected.values())}, abs=1e-6)
    err = capsys.readouterr().err
    assert "DICOM results: 1 reports and 2 overlays" in err
    assert err.count("not DICOM") == 1 and "2 inputs are not DICOM (IMG0001271.jpg, IMG0002385.jpg)" in err


def test_help_shows_the_new_options_and_their_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    args = parser.parse_args(["predict", "x.dcm"])
    assert args.dicom_out is None and args.by_study is False
    with pytest.raises(SystemExit):
        parser.parse_args(["predict", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--dicom-out DIR" in text and "--by-study" in text and "(default: image lines only)" in text
    node = parser.parse_args(["dicom-node", "--port", "11112"])
    assert (node.ae_title, node.out, node.study_idle, node.max_pending) == ("BONEFRAC", "dicom-results", 5.0, 500)
    assert (node.host, node.allow) == ("127.0.0.1", [])  # loopback unless --host says otherwise, as `serve`
