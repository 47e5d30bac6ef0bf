"""Only what the model is for: the one rule deciding whether an image is a projection radiograph.

`check_radiograph(image)` is called on every image before the model sees it (API, CLI, server, DICOM
node). The model was trained on X-ray radiographs of limbs, hips and shoulders; on a CT slice, an
ultrasound frame or a dose grid it still returns a probability, and that number would mean nothing.

The rule, from what the file says about itself:
- JPEG and PNG files carry no modality: they pass (when at least `MIN_SIDE` pixels a side).
- DICOM Modality CR, DX or RG (computed, digital and film/screen radiography) passes. So does a file
  without a Modality (or with OT, "other") whose SOP class is CR or DX image storage.
- Secondary Capture (a scanned film, a screenshot; Modality OT or none) and DICOM with neither a Modality
  nor a known SOP class pass with a warning: nothing in them says what they show.
- Any other Modality is refused: CT, MR, NM, PT, US, SEG, SR, the RT objects, and also the X-ray
  modalities that are not plain bone radiographs (MG mammography, IO/PX dental, RF/XA fluoroscopy and
  angiography), which the model has never seen. So is a file without a Modality whose SOP class is another
  known one (CT Image Storage, ...).
- An image with a side under `MIN_SIDE` pixels is refused, whatever its format.

`allow_any=True` is the researcher's override: what would be refused comes back as warnings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bonefrac.errors import NotARadiographError
from bonefrac.io.image import XrayImage

#: The smallest side, in pixels, of an image that can hold a radiograph worth predicting on (the model's
#: input is 256 px; a plain radiograph is 1,000 px or more). A 10 x 10 RT dose grid is not one.
MIN_SIDE = 64

#: DICOM Modality codes of projection radiography (DICOM PS3.3 C.7.3.1.1.1).
RADIOGRAPHY = {"CR": "computed radiography", "DX": "digital radiography", "RG": "radiographic imaging"}

#: SOP classes that are radiographs when the Modality is missing.
RADIOGRAPH_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.1": "Computed Radiography Image Storage",
    "1.2.840.10008.5.1.4.1.1.1.1": "Digital X-Ray Image Storage - For Presentation",
    "1.2.840.10008.5.1.4.1.1.1.1.1": "Digital X-Ray Image Storage - For Processing",
}
#: Secondary Capture Image Storage; its multi-frame variants add .1 to .4.
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"

#: What the refused codes users are most likely to send stand for, for the message (others are refused
#: too, by their code alone).
MODALITY_NAMES = {
    "CT": "computed tomography",
    "MR": "magnetic resonance",
    "NM": "nuclear medicine",
    "PT": "positron emission tomography",
    "US": "ultrasound",
    "MG": "mammography",
    "IO": "intra-oral dental radiography",
    "PX": "panoramic dental radiography",
    "RF": "radiofluoroscopy",
    "XA": "X-ray angiography",
    "SEG": "segmentation",
    "SR": "structured report",
    "RTDOSE": "radiotherapy dose",
    "RTIMAGE": "radiotherapy image",
    "RTSTRUCT": "radiotherapy structure set",
    "RTPLAN": "radiotherapy plan",
    "OP": "ophthalmic photography",
    "XC": "external-camera photography",
    "ES": "endoscopy",
    "SM": "slide microscopy",
    "DOC": "document",
}

READS = "bonefrac reads X-ray radiographs (CR, DX, RG)"
UNSAID = "nothing in the file says it is an X-ray radiograph; predicted as one"
OVERRIDE = "use --any-modality (any_modality=True in Python) to predict anyway"


def check_radiograph(image: XrayImage, allow_any: bool = False) -> list[str]:
    """Refuse an image that is not a projection radiograph (see the module's docstring for the rule).

    Args:
        image: as read by `read_image` (DICOM files carry `modality` and `sop_class_uid` in `meta`).
        allow_any: the override: report instead of refusing.

    Returns:
        Warnings to report with the prediction (one line each, naming the file); empty for a plain
        radiograph.

    Raises:
        NotARadiographError: (unless `allow_any`) one line naming the file and its modality or size.
    """
    name = Path(image.path).name if image.path else "image"
    meta = {"height": image.height, "width": image.width, **image.meta}
    return check_radiograph_meta(meta, name, allow_any)


def check_radiograph_meta(meta: dict[str, Any], name: str, allow_any: bool = False) -> list[str]:
    """`check_radiograph` on what the reader says about an image (`meta`, with `height` and `width`), before
    or without its pixels: the DICOM node checks a received image's header this way."""
    refusals, notes = [], []
    if meta.get("format") == "dicom":
        refusal, note = _dicom_kind(meta, name)
        refusals += [refusal] if refusal else []
        notes += [note] if note else []
    height, width = int(meta["height"]), int(meta["width"])
    if min(height, width) < MIN_SIDE:
        refusals.append(
            f"{name}: image of {width}x{height} pixels is too small to be a radiograph "
            f"(bonefrac needs at least {MIN_SIDE} pixels a side)"
        )
    if refusals and not allow_any:
        raise NotARadiographError(f"{refusals[0]}; {OVERRIDE}")
    return notes + [f"{r}; predicted anyway (any modality allowed)" for r in refusals]


def _dicom_kind(meta: dict[str, Any], name: str) -> tuple[str | None, str | None]:
    """(why the file is refused, or None; what to warn about, or None) from its Modality and SOP class."""
    modality = str(meta.get("modality") or "").strip().upper()
    sop_class = str(meta.get("sop_class_uid") or "").strip()
    if modality in RADIOGRAPHY:
        return None, None
    if modality not in ("", "OT"):
        described = f"{modality} ({MODALITY_NAMES[modality]})" if modality in MODALITY_NAMES else modality
        return f"{name}: modality {described} is not a projection radiograph; {READS}", None
    # Modality missing or "other": the SOP class (what kind of object the file is) decides.
    if sop_class in RADIOGRAPH_SOP_CLASSES:
        return None, None
    given = f"modality {modality}" if modality else "no modality"
    if sop_class == SECONDARY_CAPTURE or sop_class.startswith(SECONDARY_CAPTURE + "."):
        return None, f"{name}: Secondary Capture image ({given}): {UNSAID}"
    known = _sop_class_name(sop_class) if sop_class else None
    if known:
        return f"{name}: SOP class {known} ({given}) is not a projection radiograph; {READS}", None
    return None, f"{name}: DICOM file with {given} and no known SOP class: {UNSAID}"


def _sop_class_name(uid: str) -> str | None:
    """pydicom's name for a SOP class UID ("CT Image Storage"), None when it does not know the UID."""
    from pydicom.uid import UID  # a DICOM image was read with pydicom: it is installed and imported

    label = UID(uid).name
    return label if label != uid else None
