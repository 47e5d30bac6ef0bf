"""DICOM results that go back into the source's study: a Structured Report and Secondary Capture overlays.

For each study (one or more DICOM views of it), built with highdicom:
- one Comprehensive SR following TID 1500 "Imaging Measurement Report": a measurement group (TID 1501) for the
  study (probability = maximum over views, see `studies`), one per view (its probability), each with the
  threshold, a Fracture present/absent evaluation and the algorithm (TID 4019: model name, model version,
  operating point, threshold, study rule); and one planar ROI group (TID 1410) per box, a closed POLYLINE
  SCOORD on the source image referenced by its SOP Instance UID, with the box's score.
  A view whose reading was warned about (a truncated JPEG, the first frame of a multi-frame DICOM, ...) carries
  the warnings as a TEXT "Comment" in its group: they are seen where the result is.
- one Secondary Capture image per view: the overlay picture (radiograph, heatmap, boxes, verdict) with a
  "NOT FOR DIAGNOSTIC USE" band burnt in.

Why TID 1500 rather than a free-form Comprehensive SR: everything bonefrac says fits its building blocks (a
numeric measurement, a coded present/absent evaluation, an image region, the algorithm's identity), and it is
the template that viewers (OHIF, 3D Slicer / dcmqi) and the IHE AI Results profile read. The Comprehensive SR
IOD carries it because it is the SR storage class PACS accept most widely and it allows SCOORD.

Both objects join the source's study (Study Instance UID, patient and study modules copied from the source
header by highdicom), each in a new series with new UIDs, Manufacturer "bonefrac" and the software version.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from bonefrac._version import __version__
from bonefrac.errors import ImageReadError
from bonefrac.results import STUDY_RULE, StudyResult, study_result, verdict

if TYPE_CHECKING:
    from PIL import Image, ImageFont

    from bonefrac.io.read import XrayImage
    from bonefrac.results import Prediction

MANUFACTURER = "bonefrac"
#: SNOMED CT "Fracture" (morphologic abnormality): the finding type of every measurement group.
FRACTURE = Code("72704001", "SCT", "Fracture")
SOFTWARE_VERSION = f"bonefrac {__version__}"
NOT_FOR_DIAGNOSIS = "NOT FOR DIAGNOSTIC USE"
#: Series numbers of the two result series: high, so that they sort after the acquisition's own series.
SR_SERIES_NUMBER = 9901
SC_SERIES_NUMBER = 9902
#: Attributes a result needs from its source: without them it cannot join the study or reference the image.
REQUIRED_SOURCE = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
#: Type 2 attributes (present, possibly empty) of the patient and study modules that the results copy: a
#: source that lacks one gets it empty, as DICOM allows, rather than no results (highdicom needs them all).
TYPE2_COPIED = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)


def read_source_header(path: str | Path) -> Dataset:
    """The source's header (no pixels): what the results copy (patient, study) and reference (SOP UIDs)."""
    import pydicom

    name = Path(path).name
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as e:
        raise ImageReadError(f"{name}: cannot read the DICOM header for the results ({type(e).__name__})") from None
    missing = [k for k in REQUIRED_SOURCE if not str(ds.get(k, "") or "").strip()]
    if missing:
        raise ImageReadError(f"{name}: DICOM header lacks {', '.join(missing)}: no DICOM results for it")
    return with_type2_attributes(ds)


def with_type2_attributes(ds: Dataset) -> Dataset:
    """`ds` with every attribute of `TYPE2_COPIED` present (the missing ones empty)."""
    for keyword in TYPE2_COPIED:
        if keyword not in ds:
            setattr(ds, keyword, "")
    return ds


def study_digest(study_instance_uid: str) -> str:
    """12 hex characters naming a study in folders and logs without writing its UID (an identifier) there."""
    return hashlib.sha256(study_instance_uid.encode()).hexdigest()[:12]


def overlay_picture(
    image: XrayImage, pred: Prediction, operating_points: dict[str, float] | None = None
) -> Image.Image:
    """The overlay (`overlay.render_overlay`, its boxes as fracture / suspicious at `operating_points`) with a
    band below it: not for diagnostic use, who made it."""
    from PIL import Image as PILImage
    from PIL import ImageDraw

    from bonefrac.render import render_overlay

    picture = render_overlay(image, pred, operating_points=operating_points)
    lines = [NOT_FOR_DIAGNOSIS, f"{SOFTWARE_VERSION}, model {pred.model_version}"]
    draw = ImageDraw.Draw(picture)
    size = max(10, round(max(picture.size) * 0.022))
    while True:  # the largest font (down to 10 px) at which both lines fit the width
        font = _sized_font(size)
        boxes = [draw.textbbox((0, 0), line, font=font) for line in lines]
        if size <= 10 or max(b[2] for b in boxes) <= picture.width - 2 * 4:
            break
        size -= 1
    pad = max(4, size // 3)
    heights = [b[3] - b[1] for b in boxes]
    out = PILImage.new("RGB", (picture.width, picture.height + sum(heights) + 3 * pad), (0, 0, 0))
    out.paste(picture, (0, 0))
    y = picture.height + pad
    for line, box, colour in zip(lines, boxes, [(255, 210, 0), (200, 200, 200)], strict=True):
        ImageDraw.Draw(out).text((pad, y - box[1]), line, fill=colour, font=font)
        y += box[3] - box[1] + pad
    return out


def _sized_font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no sized default font
        return ImageFont.load_default()


@dataclass
class _View:
    source: Dataset
    prediction: Prediction


@dataclass
class StudyResults:
    """The DICOM results of one study, built view by view: `add_view` makes a view's overlay as soon as it is
    predicted (the pixels and heatmap are not kept), `report` makes the study's SR once all views are in."""

    model_name: str
    sr_series_uid: str = field(default_factory=lambda: _uid())
    sc_series_uid: str = field(default_factory=lambda: _uid())
    views: list[_View] = field(default_factory=list)
    operating_points: dict[str, float] = field(default_factory=dict)  # the model's: the overlay's box kinds

    def add_view(self, source: Dataset, image: XrayImage, pred: Prediction) -> Dataset:
        """Record the view for the report and return its Secondary Capture overlay."""
        if self.views and source.StudyInstanceUID != self.views[0].source.StudyInstanceUID:
            raise ValueError("a StudyResults holds the views of one study")
        self.views.append(_View(source, _without_pixels(pred)))
        picture = overlay_picture(image, pred, self.operating_points)
        return overlay_instance(source, picture, self.sc_series_uid, len(self.views), pred)

    def study(self) -> StudyResult:
        return study_result(str(self.views[0].source.StudyInstanceUID), [v.prediction for v in self.views])

    def report(self) -> Dataset:
        if not self.views:
            raise ValueError("no view predicted: no report")
        return report_instance(self.views, self.study(), self.model_name, self.sr_series_uid)


def save_dataset(ds: Dataset, folder: Path) -> Path:
    """Write `ds` as `folder/<Modality>_<SOP Instance UID>.dcm`, atomically (a reader never sees half a file)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{ds.Modality}_{ds.SOPInstanceUID}.dcm"
    tmp = folder / f".{path.name}.tmp"
    ds.save_as(tmp, enforce_file_format=True)
    tmp.replace(path)
    return path


def overlay_instance(
    source: Dataset, picture: Image.Image, series_uid: str, instance_number: int, pred: Prediction
) -> Dataset:
    """A Secondary Capture image of `picture` (RGB) in the source's study, referencing the source image."""
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=np.asarray(picture.convert("RGB")),
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=series_uid,
        series_number=SC_SERIES_NUMBER,
        sop_instance_uid=_uid(),
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        patient_orientation=("L", "F"),  # replaced below by the source's own (highdicom takes single letters only)
        series_description=f"bonefrac overlay ({NOT_FOR_DIAGNOSIS.lower()})",
        manufacturer_model_name=pred.model_version[:64],
        software_versions=SOFTWARE_VERSION,
        transfer_syntax_uid=ExplicitVRLittleEndian,  # every viewer and PACS reads it
    )
    # The overlay shows the source's pixels as stored (shrunk to display size at most): the source's orientation
    # holds for it, or it is unknown (empty).
    sc.PatientOrientation = source.get("PatientOrientation", "") or ""
    # Type 2C for paired body parts (hands, wrists, ...): the source's side, or present but empty (unknown).
    sc.Laterality = _laterality(source) or ""
    decision = verdict(pred.fractured)
    sc.BurnedInAnnotation = "YES"
    sc.ImageComments = (
        f"{NOT_FOR_DIAGNOSIS}. {decision}, p={pred.probability:.3f} at {pred.operating_point} "
        f"(threshold {pred.threshold:.3f}), model {pred.model_version}"
    )[:10240]
    sc.DerivationDescription = "bonefrac fracture heatmap, boxes and verdict over the source radiograph"
    ref = Dataset()
    ref.ReferencedSOPClassUID = source.SOPClassUID
    ref.ReferencedSOPInstanceUID = source.SOPInstanceUID
    sc.SourceImageSequence = [ref]
    return sc


def report_instance(views: list[_View], study: StudyResult, model_name: str, series_uid: str) -> Dataset:
    """The study's TID 1500 measurement report as a Comprehensive SR (see the module docstring)."""
    first = views[0].prediction
    algorithm = hd.sr.AlgorithmIdentification(
        name=model_name[:64],
        version=first.model_version[:64],
        manufacturer=MANUFACTURER,
        parameters=[
            f"operating point: {study.operating_point}",
            f"threshold: {study.threshold:.6f}",
            f"study probability: {STUDY_RULE}",
        ],
    )
    groups: list[object] = [
        hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=_uid(), identifier="study"),
            finding_type=FRACTURE,
            algorithm_id=algorithm,
            measurements=_decision_measurements(study.probability or 0.0, study.threshold),
            qualitative_evaluations=[_evaluation(study.fractured)],
            source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(v.source) for v in views],
        )
    ]
    for i, view in enumerate(views, start=1):
        pred = view.prediction
        group = hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=_uid(), identifier=f"view {i}"),
            finding_type=FRACTURE,
            algorithm_id=algorithm,
            measurements=_decision_measurements(pred.probability, pred.threshold),
            qualitative_evaluations=[_evaluation(pred.fractured)],
            source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(view.source)],
        )
        if pred.warnings:
            group[0].ContentSequence.append(_comment(pred.warnings))
        groups.append(group)
        for k, (x0, y0, x1, y1, score) in enumerate(pred.boxes, start=1):
            # SCOORD columns/rows with (0, 0) the top-left corner of the top-left pixel, as the boxes' pixels.
            corners = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], dtype=np.float32)
            corners = np.clip(corners, 0, [pred.width, pred.height])
            groups.append(
                hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                    tracking_identifier=hd.sr.TrackingIdentifier(uid=_uid(), identifier=f"view {i} box {k}"),
                    referenced_region=hd.sr.ImageRegion(
                        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
                        graphic_data=corners,
                        source_image=hd.sr.SourceImageForRegion.from_source_image(view.source),
                    ),
                    finding_type=FRACTURE,
                    algorithm_id=algorithm,
                    measurements=[hd.sr.Measurement(name=codes.SCT.Score, value=float(score), unit=codes.UCUM.NoUnits)],
                )
            )
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=_device_uid(first.model_version),
            name=MANUFACTURER,
            manufacturer_name=MANUFACTURER,
            model_name=first.model_version[:64],
        ),
    )
    content = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.SCT.PlainRadiography,
        imaging_measurements=groups,  # type: ignore[arg-type]
    )
    return hd.sr.ComprehensiveSR(
        evidence=[v.source for v in views],
        content=content[0],
        series_instance_uid=series_uid,
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=_uid(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,  # a machine's unverified result: a radiologist reads it, nothing signs it
        series_description=f"bonefrac fracture report ({NOT_FOR_DIAGNOSIS.lower()})",
        manufacturer_model_name=first.model_version[:64],
        software_versions=SOFTWARE_VERSION,
    )


def report_probabilities(sr: Dataset) -> dict[str, float]:
    """Read the probabilities back from one of our SRs: {"study": p, <view's SOP Instance UID>: p, ...}."""
    report = hd.sr.ComprehensiveSR.from_dataset(sr)  # (a report built here holds its content unparsed)
    out = {}
    for group in report.content.get_image_measurement_groups():
        sources = group.source_images
        key = "study" if group.tracking_identifier == "study" else str(sources[0].referenced_sop_instance_uid)
        for m in group.get_measurements(name=codes.DCM.Probability):
            out[key] = float(m.value)
    return out


# ---------------------------------------------------------------- codes and small helpers
def _decision_measurements(probability: float, threshold: float) -> list[object]:
    return [
        hd.sr.Measurement(name=codes.DCM.Probability, value=float(probability), unit=codes.UCUM.NoUnits),
        hd.sr.Measurement(name=codes.DCM.ThresholdValue, value=float(threshold), unit=codes.UCUM.NoUnits),
    ]


def _comment(warnings: list[str]) -> hd.sr.TextContentItem:
    """The view's warnings as one TEXT item (UT holds up to 2**32 - 2 characters: no truncation needed)."""
    return hd.sr.TextContentItem(
        name=codes.DCM.Comment,
        value="\n".join(warnings),
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )


def report_comments(sr: Dataset) -> dict[str, str]:
    """The warnings of each view of one of our SRs, by the view's SOP Instance UID (a view without any is left out)."""
    report = hd.sr.ComprehensiveSR.from_dataset(sr)
    out = {}
    for group in report.content.get_image_measurement_groups():
        texts = [item.TextValue for item in group[0].ContentSequence if item.ValueType == "TEXT"]
        if texts and group.tracking_identifier != "study":
            out[str(group.source_images[0].referenced_sop_instance_uid)] = "\n".join(texts)
    return out


def _evaluation(fractured: bool) -> object:
    return hd.sr.QualitativeEvaluation(name=FRACTURE, value=codes.SCT.Present if fractured else codes.SCT.Absent)


def _without_pixels(pred: Prediction) -> Prediction:
    """The prediction without its heatmap (and image, where it still holds one): the report needs neither."""
    drop = {f.name: None for f in fields(pred) if f.name in ("heatmap", "image")}
    return replace(pred, **drop)


def _uid() -> str:
    return str(generate_uid())


def _device_uid(model_version: str) -> str:
    """The same UID for the same bonefrac and model everywhere (the SR's device observer)."""
    return str(generate_uid(entropy_srcs=[MANUFACTURER, __version__, model_version]))


def _laterality(source: Dataset) -> str | None:
    value = str(source.get("Laterality", "") or source.get("ImageLaterality", "") or "").strip().upper()
    return value if value in ("L", "R") else None
