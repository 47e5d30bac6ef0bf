"""check_radiograph: projection radiographs pass, other modalities and tiny images are refused in one line.

Most cases are pydicom's own vendor files (in its wheel, no download): each is read with read_image and
the rule's outcome asserted. The radiographs themselves are made from a real one (make_variants).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import make_variants as mv
import numpy as np
import pytest
from make_variants import FIXTURES
from PIL import Image

from bonefrac.errors import ImageReadError, NotARadiographError
from bonefrac.io.image import XrayImage
from bonefrac.io.modality import MIN_SIDE, check_radiograph
from bonefrac.io.read import read_image

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"


def vendor_file(name: str) -> Path:
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"{name} is not in this pydicom's wheel")
    return Path(path)


def read_quietly(path: Path) -> XrayImage:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # multi-frame and pydicom notes are not under test here
        return read_image(path)


# Refused, and the message names the modality (or the size): the cases first.
REFUSED = {
    "693_J2KI.dcm": "modality CT (computed tomography)",  # scored 0.819 FRACTURE with a box before
    "CT_small.dcm": "modality CT (computed tomography)",
    "MR_small.dcm": "modality MR (magnetic resonance)",
    "MR_small_jp2klossless.dcm": "modality MR (magnetic resonance)",
    "JPEG2000.dcm": "modality NM (nuclear medicine)",  # scored 0.743 FRACTURE before
    "JPGExtended.dcm": "modality NM (nuclear medicine)",
    "examples_ybr_color.dcm": "modality US (ultrasound)",  # an ultrasound clip: scored 0.623 FRACTURE before
    "examples_rgb_color.dcm": "modality US (ultrasound)",
    "ExplVR_BigEnd.dcm": "modality US (ultrasound)",
    "rtdose_1frame.dcm": "modality RTDOSE (radiotherapy dose)",  # a 10 x 10 dose grid got a probability
    "liver_1frame.dcm": "modality SEG (segmentation)",
    "dicomdirtests/77654033/CR1/6154": "image of 16x16 pixels is too small to be a radiograph",  # CR, but tiny
    "SC_rgb_small_odd.dcm": "image of 3x3 pixels is too small to be a radiograph",
}

# Secondary Capture (Modality OT or none): read, with a warning saying nothing tells it is a radiograph.
SECONDARY_CAPTURE = ["SC_rgb_jpeg_dcmtk.dcm", "SC_jpeg_no_color_transform.dcm", "image_dfl.dcm"]


@pytest.mark.parametrize("name", REFUSED)
def test_vendor_files_that_are_not_radiographs_are_refused_in_one_line(name: str) -> None:
    path = vendor_file(name)
    image = read_quietly(path)
    with pytest.raises(NotARadiographError) as caught:
        check_radiograph(image)
    message = str(caught.value)
    assert message.startswith(f"{path.name}: {REFUSED[name]}") and "\n" not in message and len(message) < 300
    assert message.endswith("use --any-modality (any_modality=True in Python) to predict anyway")
    assert isinstance(caught.value, ImageReadError)  # what the server answers 415 for
    # the researcher's override: the same finding (and any other: a US clip is small too), as a warning
    notes = check_radiograph(image, allow_any=True)
    said = f"{path.name}: {REFUSED[name]}"
    assert any(n.startswith(said) and n.endswith("predicted anyway (any modality allowed)") for n in notes)


@pytest.mark.parametrize("name", SECONDARY_CAPTURE)
def test_secondary_captures_pass_with_a_warning(name: str) -> None:
    path = vendor_file(name)
    [note] = check_radiograph(read_quietly(path))
    assert note.startswith(f"{path.name}: Secondary Capture image (")
    assert "nothing in the file says it is an X-ray radiograph" in note and "\n" not in note


def test_a_vendor_file_the_reader_cannot_decode_is_refused_either_way() -> None:
    """JPEG-lossy.dcm (NM, 12-bit JPEG Extended) fails to decode with pylibjpeg and Pillow; with a decoder
    that can, the rule refuses it as nuclear medicine. Either way it gets no probability."""
    with pytest.raises(ImageReadError, match=r"^JPEG-lossy\.dcm: "):
        check_radiograph(read_quietly(vendor_file("JPEG-lossy.dcm")))


@pytest.mark.parametrize("modality", ["DX", "CR", "RG"])
def test_projection_radiographs_pass_without_a_word(modality: str, grey: np.ndarray, tmp_path: Path) -> None:
    image = read_image(mv.dicom(tmp_path / "x.dcm", grey, bits_stored=8, modality=modality))
    assert image.meta["modality"] == modality and image.meta["sop_class_uid"] == mv.DX_FOR_PRESENTATION
    assert check_radiograph(image) == []


def test_jpeg_and_png_carry_no_modality_and_pass(grey: np.ndarray, tmp_path: Path) -> None:
    for path in sorted((FIXTURES / "images").glob("*.jpg"))[:3] + [mv.png16(grey, tmp_path / "x.png")]:
        assert check_radiograph(read_quietly(path)) == []


@pytest.mark.parametrize(
    ("modality", "sop_class", "outcome"),
    [
        (None, mv.DX_FOR_PRESENTATION, None),  # no Modality, but the SOP class says digital X-ray
        (None, CR_IMAGE_STORAGE, None),
        ("OT", CR_IMAGE_STORAGE, None),
        (None, mv.SECONDARY_CAPTURE, "x.dcm: Secondary Capture image (no modality): nothing in the file says"),
        ("OT", mv.SECONDARY_CAPTURE, "x.dcm: Secondary Capture image (modality OT): nothing in the file says"),
        (None, "1.2.826.0.1.3680043.99.1", "x.dcm: DICOM file with no modality and no known SOP class: nothing"),
        (None, CT_IMAGE_STORAGE, NotARadiographError("x.dcm: SOP class CT Image Storage (no modality) is not a")),
        ("OT", CT_IMAGE_STORAGE, NotARadiographError("x.dcm: SOP class CT Image Storage (modality OT) is not a")),
        ("MG", mv.DX_FOR_PRESENTATION, NotARadiographError("x.dcm: modality MG (mammography) is not a projection")),
        ("XA", mv.DX_FOR_PRESENTATION, NotARadiographError("x.dcm: modality XA (X-ray angiography) is not a")),
        ("ZZ", mv.DX_FOR_PRESENTATION, NotARadiographError("x.dcm: modality ZZ is not a projection radiograph")),
        ("ct", mv.DX_FOR_PRESENTATION, NotARadiographError("x.dcm: modality CT (computed tomography) is not a")),
    ],
)
@pytest.mark.filterwarnings("ignore:Invalid value for VR CS")  # writing the lower-case "ct"
def test_modality_first_then_the_sop_class(
    modality: str | None, sop_class: str, outcome: str | Exception | None, grey: np.ndarray, tmp_path: Path
) -> None:
    image = read_image(mv.dicom(tmp_path / "x.dcm", grey, bits_stored=8, modality=modality, sop_class=sop_class))
    assert image.meta["sop_class_uid"] == sop_class
    if isinstance(outcome, Exception):
        with pytest.raises(NotARadiographError) as caught:
            check_radiograph(image)
        assert str(caught.value).startswith(str(outcome))
    elif outcome is None:
        assert check_radiograph(image) == []
    else:
        [note] = check_radiograph(image)
        assert note.startswith(outcome)


def test_too_small_is_judged_on_the_full_size_whatever_the_format(grey: np.ndarray, tmp_path: Path) -> None:
    tiny = mv.png8(grey[:10, :10], tmp_path / "tiny.png")
    with pytest.raises(NotARadiographError, match=r"^tiny\.png: image of 10x10 pixels is too small"):
        check_radiograph(read_image(tiny))
    edge = mv.png8(grey[:MIN_SIDE, : MIN_SIDE + 5], tmp_path / "edge.png")
    assert check_radiograph(read_image(edge)) == []
    # A large JPEG read at 1/8 holds few pixels; what counts is the radiograph's size (meta), not the read's.
    big = tmp_path / "big.jpg"
    Image.fromarray(grey).resize((MIN_SIDE * 6, MIN_SIDE * 5)).save(big)
    reduced = read_image(big, 8)
    assert min(reduced.pixels.shape) < MIN_SIDE and check_radiograph(reduced) == []
    # An image made in memory, without meta: its pixels are its size; without a path it is called "image".
    with pytest.raises(NotARadiographError, match=r"^image: image of 20x30 pixels is too small"):
        check_radiograph(XrayImage(np.zeros((30, 20), np.float32)))
    assert check_radiograph(XrayImage(np.zeros((30, 20), np.float32)), allow_any=True) == [
        "image: image of 20x30 pixels is too small to be a radiograph (bonefrac needs at least 64 pixels a side); "
        "predicted anyway (any modality allowed)"
    ]
