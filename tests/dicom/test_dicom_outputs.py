"""DICOM results: a TID 1500 SR and Secondary Capture overlays in the source's study, readable by pydicom,
highdicom and dicom3tools' dciodvfy."""

from __future__ import annotations

import subprocess
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from _models import make_checkpoint
from dicom_helpers import IDENTIFIERS, PATIENT_ID, PATIENT_NAME, need, radiograph_study
from pydicom.sr.codedict import codes

from bonefrac.dicom.report import (
    FRACTURE,
    MANUFACTURER,
    SOFTWARE_VERSION,
    StudyResults,
    read_source_header,
    report_probabilities,
)
from bonefrac.dicom.writer import DicomResultsWriter
from bonefrac.errors import ImageReadError
from bonefrac.inference.detector import FractureDetector
from bonefrac.io.read import read_image


@pytest.fixture(scope="module")
def detector(tmp_path_factory: pytest.TempPathFactory) -> FractureDetector:
    return FractureDetector.load(make_checkpoint(tmp_path_factory.mktemp("model") / "m.pt"), backend="torch")


@pytest.fixture(scope="module")
def results(detector: FractureDetector, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A two-view study decided at threshold 0, so that both views are positive and have boxes."""
    folder = tmp_path_factory.mktemp("dicom-results")
    views = radiograph_study(folder / "in")
    preds = [detector.predict(read_image(p), heatmap=True).decided_at("test-zero", 0.0) for p in views]
    study = StudyResults("bonefrac seed_cnn")
    overlays = [
        study.add_view(read_source_header(p), read_image(p), pred) for p, pred in zip(views, preds, strict=True)
    ]
    report = study.report()
    written = []
    for ds in [report, *overlays]:
        path = folder / "out" / f"{ds.Modality}_{ds.SOPInstanceUID}.dcm"
        path.parent.mkdir(exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
        written.append(path)
    return {"views": views, "preds": preds, "sr": written[0], "scs": written[1:]}


def test_results_join_the_source_study_in_new_series(results: dict) -> None:
    source = pydicom.dcmread(results["views"][0])
    sr = pydicom.dcmread(results["sr"])
    scs = [pydicom.dcmread(p) for p in results["scs"]]
    for ds in [sr, *scs]:
        assert ds.StudyInstanceUID == source.StudyInstanceUID
        assert ds.PatientName == PATIENT_NAME and ds.PatientID == PATIENT_ID  # patient module copied
        assert ds.AccessionNumber == "ACC-17" and ds.StudyDate == "20240102"  # study module copied
        assert ds.SeriesInstanceUID != source.SeriesInstanceUID
        assert ds.SOPInstanceUID not in (source.SOPInstanceUID, source.SeriesInstanceUID)
        assert ds.Manufacturer == MANUFACTURER and SOFTWARE_VERSION in list(ds.SoftwareVersions) + [ds.SoftwareVersions]
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33" and sr.Modality == "SR"
    assert {s.SeriesInstanceUID for s in scs} != {sr.SeriesInstanceUID} and len({s.SeriesInstanceUID for s in scs}) == 1
    assert len({s.SOPInstanceUID for s in scs}) == 2


def test_sr_carries_study_and_view_probabilities_decision_model_and_boxes(results: dict) -> None:
    preds = results["preds"]
    sr = hd.sr.srread(results["sr"])
    probabilities = report_probabilities(sr)
    uids = [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in results["views"]]
    assert probabilities == pytest.approx(
        {"study": max(p.probability for p in preds), uids[0]: preds[0].probability, uids[1]: preds[1].probability},
        abs=1e-12,
    )
    groups = sr.content.get_image_measurement_groups()
    study = groups[0]
    assert study.finding_type == FRACTURE
    (threshold,) = study.get_measurements(name=codes.DCM.ThresholdValue)
    assert threshold.value == 0.0
    (evaluation,) = study.get_qualitative_evaluations(name=FRACTURE)
    assert evaluation.value == codes.SCT.Present  # decided at threshold 0
    texts = _text_items(pydicom.dcmread(results["sr"]))
    assert texts["Algorithm Name"] == {"bonefrac seed_cnn"} and texts["Algorithm Version"] == {preds[0].model_version}
    assert {"operating point: test-zero", "threshold: 0.000000"} <= texts["Algorithm Parameters"]
    # Each view's group references its own source image by SOP Instance UID.
    sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in results["views"]]
    for group, source in zip(groups[1:], sources, strict=True):
        assert [s.referenced_sop_instance_uid for s in group.source_images] == [source.SOPInstanceUID]
    # Each box is a closed POLYLINE SCOORD on its source image.
    rois = sr.content.get_planar_roi_measurement_groups()
    boxes = [(i, b) for i, p in enumerate(preds) for b in p.boxes]
    assert boxes and len(rois) == len(boxes)
    for roi, (i, (x0, y0, x1, y1, score)) in zip(rois, boxes, strict=True):
        region = roi.roi
        assert region.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
        data = region.value
        assert data[0].tolist() == data[-1].tolist() and len(data) == 5
        assert data.min(axis=0) == pytest.approx([max(x0, 0), max(y0, 0)], abs=1e-3)
        assert data.max(axis=0) == pytest.approx([x1, y1], abs=1e-3)
        (selected_from,) = region.ContentSequence
        assert selected_from.referenced_sop_instance_uid == sources[i].SOPInstanceUID
        (m,) = roi.get_measurements(name=codes.SCT.Score)
        assert m.value == pytest.approx(score)


def test_overlay_is_an_rgb_secondary_capture_marked_not_for_diagnostic_use(results: dict) -> None:
    for path, view in zip(results["scs"], results["views"], strict=True):
        sc = pydicom.dcmread(path)
        source = pydicom.dcmread(view, stop_before_pixels=True)
        assert sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7" and sc.PhotometricInterpretation == "RGB"
        assert sc.pixel_array.ndim == 3 and sc.pixel_array.shape[2] == 3
        # The radiograph at display size (a small one enlarged, a narrow one framed), text bands above and below.
        assert sc.pixel_array.shape[1] >= min(source.Columns, 1600)
        assert sc.pixel_array.shape[0] > source.Rows
        assert sc.BurnedInAnnotation == "YES" and "NOT FOR DIAGNOSTIC USE" in sc.ImageComments
        assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert list(sc.PatientOrientation) == ["P", "F"]  # the source's


def test_dciodvfy_reports_no_errors(results: dict) -> None:
    dciodvfy = need("dciodvfy")
    for path in [results["sr"], *results["scs"]]:
        run = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True, timeout=60)
        report = run.stdout + run.stderr
        errors = [line for line in report.splitlines() if line.startswith("Error")]
        assert not errors, f"{path.name}:\n{report}"


def test_writer_writes_dicom_inputs_only_and_one_report_per_study(
    detector: FractureDetector, tmp_path: Path, fixtures_dir: Path
) -> None:
    study_a = radiograph_study(tmp_path / "a")
    study_b = radiograph_study(tmp_path / "b", images=("IMG0001271.jpg",))
    jpeg = fixtures_dir / "images" / "IMG0001271.jpg"
    writer = DicomResultsWriter(tmp_path / "out", "bonefrac seed_cnn")
    added = [writer.add(p, read_image(p), detector.predict(read_image(p))) for p in [*study_a, jpeg, *study_b]]
    assert added == [True, True, False, True]
    written = writer.close()
    reports = [p for p in written if p.name.startswith("SR_")]
    assert len(reports) == 2 and len(written) == 5
    assert {p.parent for p in written} == {r.parent for r in reports}  # one folder per study
    uid = pydicom.dcmread(study_a[0], stop_before_pixels=True).StudyInstanceUID
    assert all(uid not in str(p.parent) for p in written)  # folders named by a digest, not the UID
    assert not list((tmp_path / "out").rglob("*.tmp"))


def test_a_dicom_file_without_study_uid_is_refused_by_name(tmp_path: Path) -> None:
    path = radiograph_study(tmp_path)[0]
    ds = pydicom.dcmread(path)
    del ds.StudyInstanceUID
    ds.save_as(path)
    with pytest.raises(ImageReadError, match=r"view1\.dcm: DICOM header lacks StudyInstanceUID"):
        read_source_header(path)


def test_a_source_without_patient_attributes_still_gets_results(detector: FractureDetector, tmp_path: Path) -> None:
    """Type 2 patient/study attributes missing from the source are written empty (highdicom needs them)."""
    path = radiograph_study(tmp_path)[0]
    ds = pydicom.dcmread(path)
    for keyword in ("PatientID", "PatientName", "PatientBirthDate", "AccessionNumber", "ReferringPhysicianName"):
        delattr(ds, keyword)
    ds.save_as(path)
    study = StudyResults("bonefrac seed_cnn")
    study.add_view(read_source_header(path), read_image(path), detector.predict(read_image(path)))
    report = study.report()
    assert report.PatientID == "" and report.StudyInstanceUID == ds.StudyInstanceUID


def test_results_name_no_identifier_outside_the_copied_modules(results: dict) -> None:
    """The patient's data is where DICOM puts it (the copied modules), never in bonefrac's own text."""
    sr = pydicom.dcmread(results["sr"])
    sc = pydicom.dcmread(results["scs"][0])
    own_text = " ".join([str(sc.ImageComments), str(sc.SeriesDescription), str(sr.SeriesDescription)])
    assert not any(i in own_text for i in IDENTIFIERS)


def _text_items(ds: pydicom.Dataset) -> dict[str, set[str]]:
    """Every TEXT content item of an SR, by concept name."""
    out: dict[str, set[str]] = {}
    for item in ds.get("ContentSequence", []):
        if item.ValueType == "TEXT":
            out.setdefault(item.ConceptNameCodeSequence[0].CodeMeaning, set()).add(item.TextValue)
        for name, values in _text_items(item).items():
            out.setdefault(name, set()).update(values)
    return out
