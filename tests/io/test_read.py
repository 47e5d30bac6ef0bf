"""read_image: one radiograph in every encoding gives one model input; bad files give one-line errors."""

from __future__ import annotations

import csv
import threading
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import make_variants as mv
import numpy as np
import pytest
from make_variants import BASE_IMAGE, FIXTURES
from PIL import Image

from bonefrac.errors import ImageReadError, ImageTooLargeError
from bonefrac.io.image import MAX_PIXELS, ImageReadWarning, XrayImage
from bonefrac.io.read import find_images, read_image
from bonefrac.preprocess import letterbox

IMAGES = FIXTURES / "images"
Writer = Callable[[np.ndarray, Path], Path]


def read_strict(path: Path) -> XrayImage:
    """read_image with every warning (bonefrac's, Pillow's, pydicom's) turned into an error."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return read_image(path)


def boxed(pixels: np.ndarray) -> np.ndarray:
    return letterbox(np.asarray(pixels, dtype=np.float32), 256)[0]


# ---------------------------------------------------------------- one radiograph, many encodings
# Lossless re-encodings of the 8-bit radiograph: the reader must return exactly value / 255.
LOSSLESS: dict[str, Writer] = {
    "png_8bit": lambda g, d: mv.png8(g, d / "x.png"),
    "png_16bit": lambda g, d: mv.png16(g, d / "x.png"),
    "png_palette": lambda g, d: mv.png_palette(g, d / "x.png"),
    "png_grey_alpha": lambda g, d: mv.png_grey_alpha(g, d / "x.png"),
    "dicom_monochrome2": lambda g, d: mv.dicom(d / "x.dcm", g, bits_stored=8),
    "dicom_monochrome1": lambda g, d: mv.dicom(d / "x.dcm", 255 - g, bits_stored=8, photometric="MONOCHROME1"),
    "dicom_rgb": lambda g, d: mv.dicom(d / "x.dcm", np.stack([g] * 3, axis=-1), bits_stored=8, photometric="RGB"),
    "dicom_rle_lossless": lambda g, d: mv.dicom(d / "x.dcm", g, bits_stored=8, rle=True),
    "dicom_no_extension": lambda g, d: mv.dicom(d / "IM000001", g, bits_stored=8),
}

# The same radiograph on a 12-bit detector scale: the reader must return exactly stored / 4095.
TWELVE_BIT: dict[str, Writer] = {
    "monochrome2": lambda g, d: mv.dicom(d / "x.dcm", mv.to_12bit(g), bits_stored=12),
    "monochrome1": lambda g, d: mv.dicom(d / "x.dcm", 4095 - mv.to_12bit(g), bits_stored=12, photometric="MONOCHROME1"),
    "rescale_slope_intercept": lambda g, d: mv.dicom(
        d / "x.dcm", mv.to_12bit(g), bits_stored=12, RescaleSlope=2, RescaleIntercept=-1024
    ),
    "signed": lambda g, d: mv.dicom(d / "x.dcm", mv.to_12bit(g).astype(np.int16) - 2048, bits_stored=12, signed=True),
    "rle_lossless": lambda g, d: mv.dicom(d / "x.dcm", mv.to_12bit(g), bits_stored=12, rle=True),
    # overlay bits above BitsStored must be masked off, not read as signal
    "overlay_bits_set": lambda g, d: mv.dicom(d / "x.dcm", mv.to_12bit(g) | 0x8000, bits_stored=12),
}


@pytest.mark.parametrize("variant", LOSSLESS)
def test_lossless_encodings_give_identical_pixels(variant: str, grey: np.ndarray, tmp_path: Path) -> None:
    base = read_image(IMAGES / BASE_IMAGE)
    img = read_strict(LOSSLESS[variant](grey, tmp_path))
    assert img.pixels.dtype == np.float32 and img.pixels.shape == grey.shape
    assert (img.meta["height"], img.meta["width"]) == grey.shape
    assert np.abs(img.pixels - base.pixels).max() < 1e-6
    assert np.abs(boxed(img.pixels) - boxed(base.pixels)).max() < 1e-6


@pytest.mark.parametrize("variant", TWELVE_BIT)
def test_12bit_dicom_variants_scale_by_bits_stored(variant: str, grey: np.ndarray, tmp_path: Path) -> None:
    img = read_strict(TWELVE_BIT[variant](grey, tmp_path))
    assert img.meta["format"] == "dicom" and img.meta["bit_depth"] == 12
    assert np.abs(img.pixels - mv.to_12bit(grey) / 4095).max() < 1e-6
    # 12-bit quantisation differs from 8-bit by < 0.5/4095; after min-max and resampling it stays tiny: at
    # most a value tipped to the next step of the model input's 8-bit grid, and rarely
    base = read_image(IMAGES / BASE_IMAGE).pixels
    diff = np.abs(boxed(img.pixels) - boxed(base))
    assert diff.max() <= 1 / 255 + 1e-6 and (diff > 0).mean() < 0.01


@pytest.mark.parametrize("writer", [mv.jpeg_rgb, mv.jpeg_cmyk], ids=["rgb", "cmyk"])
def test_lossy_colour_jpegs_give_the_same_radiograph(writer: Writer, grey: np.ndarray, tmp_path: Path) -> None:
    base = read_image(IMAGES / BASE_IMAGE).pixels
    img = read_strict(writer(grey, tmp_path / "x.jpg"))
    assert img.pixels.shape == grey.shape
    assert img.meta["mode"] in ("RGB", "CMYK")
    assert np.abs(img.pixels - base).mean() < 2e-3  # quality 100: a few grey levels at most, here and there
    assert np.abs(boxed(img.pixels) - boxed(base)).mean() < 2e-3


def test_pixels_are_unit_float32_bone_bright(fixtures_dir: Path) -> None:
    for path in sorted((fixtures_dir / "images").glob("*.jpg"))[:4]:
        img = read_image(path)
        assert img.pixels.dtype == np.float32 and img.pixels.ndim == 2
        assert 0.0 <= img.pixels.min() < img.pixels.max() <= 1.0
        assert img.path == str(path) and img.meta["format"] == "jpeg" and img.meta["bit_depth"] == 8


# ---------------------------------------------------------------- DICOM value transforms
def dicom_window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1: the linear window, output in [0, 1]."""
    return np.clip((values - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)


def test_window_maps_center_plus_minus_half_width_linearly(grey: np.ndarray, tmp_path: Path) -> None:
    stored = mv.to_12bit(grey)
    center, width = 2048.0, 1024.0
    img = read_strict(mv.dicom(tmp_path / "w.dcm", stored, bits_stored=12, WindowCenter=center, WindowWidth=width))
    np.testing.assert_allclose(img.pixels, dicom_window(stored, center, width), atol=1e-6)
    assert (img.pixels[stored <= center - width / 2] == 0).all()
    assert (img.pixels[stored >= center + width / 2] == 1).all()
    inside = (stored > center - width / 2) & (stored < center + width / 2)
    assert inside.sum() > 1000  # the test radiograph has plenty of values inside the window
    slope = np.polyfit(stored[inside].astype(float), img.pixels[inside].astype(float), 1)[0]
    assert slope == pytest.approx(1 / (width - 1), rel=1e-4)


def test_window_applies_to_rescaled_values_and_monochrome1(grey: np.ndarray, tmp_path: Path) -> None:
    stored = mv.to_12bit(grey)
    modality = stored * 2.0 - 1024  # the window is given in modality units, after rescale
    center, width = 3000.0, 4000.0
    path = mv.dicom(
        tmp_path / "w1.dcm",
        stored,
        bits_stored=12,
        photometric="MONOCHROME1",
        RescaleSlope=2,
        RescaleIntercept=-1024,
        WindowCenter=[center, 500.0],  # several windows: the first one is the default
        WindowWidth=[width, 100.0],
    )
    img = read_strict(path)
    np.testing.assert_allclose(img.pixels, 1.0 - dicom_window(modality, center, width), atol=1e-6)


def test_voi_lut_16bit(grey: np.ndarray, tmp_path: Path) -> None:
    stored = mv.to_12bit(grey)
    lut = np.round(65535 * np.sqrt(np.arange(4096) / 4095)).astype(np.uint16)  # a gamma-like display curve
    item = mv.voi_lut_item(lut, first_mapped=0, bits=16)
    # a window is present too: the LUT takes precedence
    path = mv.dicom(tmp_path / "v.dcm", stored, bits_stored=12, VOILUTSequence=[item], WindowCenter=10, WindowWidth=2)
    img = read_strict(path)
    np.testing.assert_allclose(img.pixels, lut[stored] / 65535, atol=1e-6)


def test_voi_lut_8bit_longer_than_256_entries(grey: np.ndarray, tmp_path: Path) -> None:
    """2048 entries of 8 bits from input 1024 on: inputs below take entry 0, inputs beyond the last."""
    stored = mv.to_12bit(grey)
    lut = np.round(255 * np.sqrt(np.arange(2048) / 2047)).astype(np.uint16)
    item = mv.voi_lut_item(lut, first_mapped=1024, bits=8)
    img = read_strict(mv.dicom(tmp_path / "v8.dcm", stored, bits_stored=12, VOILUTSequence=[item]))
    expected = lut[np.clip(stored.astype(int) - 1024, 0, 2047)] / 255
    np.testing.assert_allclose(img.pixels, expected, atol=1e-6)
    assert (img.pixels[stored < 1024] == 0).all() and (img.pixels[stored >= 1024 + 2047] == 1).all()


def test_voi_lut_after_non_integer_rescale(grey: np.ndarray, tmp_path: Path) -> None:
    stored = mv.to_12bit(grey)
    lut = np.arange(2048, dtype=np.uint16)[::-1].copy()  # a decreasing ramp, 11-bit output
    item = mv.voi_lut_item(lut, first_mapped=0, bits=11)
    path = mv.dicom(
        tmp_path / "vr.dcm", stored, bits_stored=12, RescaleSlope=0.5, RescaleIntercept=-0.25, VOILUTSequence=[item]
    )
    img = read_strict(path)  # no "VOI LUT on a float input array" warning either
    index = np.clip(np.rint(stored * 0.5 - 0.25), 0, 2047).astype(int)
    np.testing.assert_allclose(img.pixels, lut[index] / 2047, atol=1e-6)


def test_modality_lut_sequence(grey: np.ndarray, tmp_path: Path) -> None:
    stored = mv.to_12bit(grey)
    lut = (4095 - np.arange(4096)).astype(np.uint16)  # 12-bit output, inverted
    path = mv.dicom(tmp_path / "m.dcm", stored, bits_stored=12, ModalityLUTSequence=[mv.voi_lut_item(lut, 0, 12)])
    img = read_strict(path)
    np.testing.assert_allclose(img.pixels, 1 - stored / 4095, atol=1e-6)


def test_dicom_meta(grey: np.ndarray, tmp_path: Path) -> None:
    img = read_strict(mv.dicom(tmp_path / "m.dcm", mv.to_12bit(grey), bits_stored=12))
    assert img.meta == {
        "format": "dicom",
        "bit_depth": 12,
        "photometric": "MONOCHROME2",
        "body_part": "HAND",
        "modality": "DX",
        "sop_class_uid": mv.DX_FOR_PRESENTATION,
        "frames": 1,
        "height": grey.shape[0],
        "width": grey.shape[1],
    }


def test_multiframe_dicom_reads_first_frame_with_warning(grey: np.ndarray, tmp_path: Path) -> None:
    frames = np.stack([grey, 255 - grey, grey // 2])
    path = mv.dicom(tmp_path / "cine.dcm", frames, bits_stored=8)
    with pytest.warns(ImageReadWarning, match=r"cine\.dcm: multi-frame DICOM \(3 frames\)") as record:
        img = read_image(path)
    assert record[0].filename == __file__  # the warning points at the caller of read_image
    assert img.meta["frames"] == 3 and img.pixels.shape == grey.shape
    assert np.abs(img.pixels - grey / 255).max() < 1e-6


# ---------------------------------------------------------------- raster specifics
@pytest.mark.parametrize(("orientation", "turns"), [(3, 2), (6, -1), (8, 1)])
def test_exif_orientation_is_applied(orientation: int, turns: int, grey: np.ndarray, tmp_path: Path) -> None:
    """Orientation 6 means "rotate 90 degrees clockwise to display": np.rot90 with k=-1."""
    img = read_strict(mv.jpeg_exif_orientation(grey, tmp_path / "o.jpg", orientation))
    expected = np.rot90(grey, turns) / 255
    assert img.pixels.shape == expected.shape
    if orientation != 3:
        assert img.pixels.shape == grey.shape[::-1]
        wrong = np.rot90(grey, -turns) / 255  # the opposite rotation, same shape
        assert np.abs(img.pixels - wrong).mean() > 20 * np.abs(img.pixels - expected).mean()
    assert np.abs(img.pixels - expected).mean() < 2e-3


def test_truncated_fixture_warns_and_reads(fixture_rows: list[dict[str, str]]) -> None:
    row = next(r for r in fixture_rows if r["jpeg_truncated"] == "1")
    with pytest.warns(ImageReadWarning, match=rf"{row['filename']}: JPEG file is truncated"):
        img = read_image(IMAGES / row["filename"])
    assert img.meta["truncated"] is True
    assert img.pixels.shape == (int(row["height"]), int(row["width"]))


def test_jpeg_with_its_end_cut_off_warns_and_keeps_the_top(tmp_path: Path) -> None:
    src = IMAGES / "IMG0000505.jpg"
    full = read_strict(src)
    assert "truncated" not in full.meta
    path = mv.truncate(src, tmp_path / "cut.jpg", cut=200)
    with pytest.warns(ImageReadWarning, match=r"cut\.jpg: JPEG file is truncated"):
        img = read_image(path)
    assert img.meta["truncated"] is True and img.pixels.shape == full.pixels.shape
    top = full.pixels.shape[0] * 3 // 4  # a baseline JPEG decodes top-down: what is there is exact
    assert np.abs(img.pixels[:top] - full.pixels[:top]).max() < 1e-6


def test_strict_decoding_is_restored_after_a_truncated_file(tmp_path: Path) -> None:
    from PIL import ImageFile

    with pytest.warns(ImageReadWarning):
        read_image(mv.truncate(IMAGES / "IMG0000505.jpg", tmp_path / "a.jpg", cut=200))
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    with pytest.warns(ImageReadWarning):  # the next truncated file is noticed again
        read_image(mv.truncate(IMAGES / "IMG0001910.jpg", tmp_path / "b.jpg", cut=200))


# ---------------------------------------------------------------- refusals
def corrupt_dicom(grey: np.ndarray, path: Path) -> Path:
    """A valid DICOM whose Modality element's VR bytes are garbage ("CA"): pydicom cannot parse it."""
    data = bytearray(mv.dicom(path, grey, bits_stored=8).read_bytes())
    at = data.index(b"\x08\x00\x60\x00CS")  # (0008,0060) Modality, explicit VR
    data[at + 4 : at + 6] = b"CA"
    path.write_bytes(bytes(data))
    return path


REFUSED: dict[str, tuple[type[ImageReadError], Callable[[np.ndarray, Path], Path]]] = {
    "empty_file": (ImageReadError, lambda g, d: mv.truncate(IMAGES / BASE_IMAGE, d / "empty.jpg", keep=0)),
    "text_file": (ImageReadError, lambda g, d: mv.text_file(d / "notes.jpg")),
    "text_as_dcm": (ImageReadError, lambda g, d: mv.text_file(d / "notes.dcm")),
    "random_jpg": (ImageReadError, lambda g, d: mv.random_bytes(d / "noise.jpg")),
    "random_dcm": (ImageReadError, lambda g, d: mv.random_bytes(d / "noise.dcm")),
    "random_no_extension": (ImageReadError, lambda g, d: mv.random_bytes(d / "noise")),
    "png_100000_squared": (ImageTooLargeError, lambda g, d: mv.png_declaring(100_000, 100_000, d / "bomb.png")),
    "png_just_over_max_pixels": (ImageTooLargeError, lambda g, d: mv.png_declaring(9000, 9000, d / "big.png")),
    "png_zero_width": (ImageReadError, lambda g, d: mv.png_declaring(0, 10, d / "zero.png")),
    "jpeg_first_100_bytes": (ImageReadError, lambda g, d: mv.truncate(IMAGES / BASE_IMAGE, d / "head.jpg", keep=100)),
    "dicom_without_pixels": (ImageReadError, lambda g, d: mv.dicom(d / "sr.dcm", g, bits_stored=8, pixel_data=False)),
    "dicom_palette_colour": (
        ImageReadError,
        lambda g, d: mv.dicom(d / "pal.dcm", g, bits_stored=8, photometric="PALETTE COLOR"),
    ),
    "dicom_bomb": (
        ImageTooLargeError,
        lambda g, d: mv.dicom(
            d / "bomb.dcm", g[:1, :1], bits_stored=16, rows_cols=(60_000, 60_000), raw_pixel_bytes=b"\0\0"
        ),
    ),
    "dicom_pixel_data_too_short": (
        ImageReadError,
        lambda g, d: mv.dicom(d / "short.dcm", g, bits_stored=8, raw_pixel_bytes=g[:10].tobytes()),
    ),
    "dicom_corrupt_header": (ImageReadError, lambda g, d: corrupt_dicom(g, d / "bad.dcm")),
    "dicom_cut_in_header": (
        ImageReadError,
        lambda g, d: mv.truncate(mv.dicom(d / "full.dcm", g, bits_stored=8), d / "cut.dcm", keep=200),
    ),
    "directory": (ImageReadError, lambda g, d: d),
    "missing": (ImageReadError, lambda g, d: d / "nowhere.jpg"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_refused_with_a_one_line_error_naming_the_file(case: str, grey: np.ndarray, tmp_path: Path) -> None:
    expected, make = REFUSED[case]
    path = make(grey, tmp_path)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Warning)  # Pillow's own DecompressionBombWarning is not under test
        with pytest.raises(expected) as caught:
            read_image(path)
    assert time.perf_counter() - start < 2.0  # refused from the header: nothing big is decoded
    message = str(caught.value)
    assert message.startswith(f"{path.name}: ") and "\n" not in message and len(message) < 300
    if expected is ImageReadError:
        assert not isinstance(caught.value, ImageTooLargeError)
    else:
        assert f"{MAX_PIXELS:,}" in message or "bomb" in message


# ---------------------------------------------------------------- patient identifiers
def test_patient_identifiers_never_leave_the_reader(
    grey: np.ndarray, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    secrets = [mv.PATIENT_ID, "Doe", "Jane", "19700101"]
    said: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        img = read_image(mv.dicom(tmp_path / "a.dcm", grey, bits_stored=8, patient=True))
        said.append(repr(img.meta))
        img = read_image(mv.dicom(tmp_path / "b.dcm", np.stack([grey, grey]), bits_stored=8, patient=True))
        said.append(repr(img.meta))
        failing = [
            mv.dicom(tmp_path / "c.dcm", grey, bits_stored=8, patient=True, photometric="PALETTE COLOR"),
            mv.dicom(tmp_path / "d.dcm", grey, bits_stored=8, patient=True, pixel_data=False),
            mv.dicom(tmp_path / "e.dcm", grey, bits_stored=8, patient=True, raw_pixel_bytes=b"\0" * 10),
            mv.dicom(tmp_path / "f.dcm", grey, bits_stored=8, patient=True, rows_cols=(50_000, 50_000)),
        ]
        for path in failing:
            with pytest.raises(ImageReadError) as error:
                read_image(path)
            said.append(str(error.value))
    said += [str(w.message) for w in caught] + [r.getMessage() for r in caplog.records]
    assert any("multi-frame" in s for s in said) and len(said) >= 7
    leaks = [s for s in said for secret in secrets if secret in s]
    assert not leaks


# ---------------------------------------------------------------- find_images
def test_find_images_picks_images_and_extensionless_dicom(grey: np.ndarray, tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    mv.jpeg_rgb(grey, tmp_path / "a.jpg")
    mv.png8(grey, tmp_path / "b.PNG")
    mv.dicom(tmp_path / "c.dcm", grey, bits_stored=8)
    mv.dicom(tmp_path / "sub" / "IM000001", grey, bits_stored=8)
    mv.jpeg_rgb(grey, tmp_path / "sub" / "d.jpeg")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "README").write_text("an extension-less file that is not DICOM")
    mv.png8(grey, tmp_path / ".hidden.png")
    found = find_images([tmp_path])
    assert [p.relative_to(tmp_path).as_posix() for p in found] == [
        "a.jpg",
        "b.PNG",
        "c.dcm",
        "sub/IM000001",
        "sub/d.jpeg",
    ]
    assert all(read_image(p).pixels.shape == grey.shape for p in found)
    # a file named explicitly is kept whatever it is, so it gets its own error later
    assert find_images([tmp_path / "notes.txt", tmp_path / "sub"]) == [
        tmp_path / "notes.txt",
        tmp_path / "sub" / "IM000001",
        tmp_path / "sub" / "d.jpeg",
    ]


# ---------------------------------------------------------------- the whole dataset
@pytest.mark.dataset
@pytest.mark.slow
def test_every_fracatlas_image_reads_and_exactly_the_truncated_ones_warn(fracatlas_dir: Path) -> None:
    with open(fracatlas_dir / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    warned, turned = set(), set()
    for row in rows:
        path = fracatlas_dir / "images" / row["filename"]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            img = read_image(path)
        # width/height in labels.csv are the stored pixels; 19 files carry an EXIF orientation that turns
        # them by 90 degrees for display (and their boxes, checked by eye, are in the displayed frame)
        with Image.open(path) as im:
            quarter_turn = im.getexif().get(0x0112) in (5, 6, 7, 8)
        stored = (int(row["height"]), int(row["width"]))
        assert img.pixels.shape == (stored[::-1] if quarter_turn else stored), row["filename"]
        turned |= {row["filename"]} if quarter_turn else set()
        for x0, y0, x1, y1 in (map(float, b.split()) for b in filter(None, row["boxes"].split(";"))):
            assert 0 <= x0 < x1 <= img.width and 0 <= y0 < y1 <= img.height, row["filename"]
        assert all(issubclass(w.category, ImageReadWarning) for w in caught), row["filename"]
        if caught:
            assert img.meta.get("truncated") is True
            warned.add(row["filename"])
    assert len(rows) == 3264 and len(turned) == 16
    assert warned == {r["filename"] for r in rows if r["jpeg_truncated"] == "1"}


@pytest.mark.dataset
def test_full_size_samples_match_their_downscaled_copies(fracatlas_dir: Path) -> None:
    samples = sorted((fracatlas_dir / "fullsize_samples").glob("*.jpg"))
    assert samples
    for path in samples:
        full = read_strict(path)
        small = read_strict(fracatlas_dir / "images" / path.name)
        assert max(full.pixels.shape) > 2000 and max(small.pixels.shape) == 1024
        assert np.abs(boxed(full.pixels) - boxed(small.pixels)).mean() < 0.02


def test_truncated_jpeg_reports_how_much_is_missing_and_refuses_a_stub(tmp_path: Path) -> None:
    real = FIXTURES / "images" / "IMG0004228.jpg"  # a real FracAtlas file, cut short at the source
    with pytest.warns(ImageReadWarning, match=r"\d+% of rows missing"):
        image = read_image(real)
    assert 0.2 < image.meta["truncated_missing_fraction"] < 0.6
    base = FIXTURES / "images" / BASE_IMAGE
    stub = mv.truncate(base, tmp_path / "stub.jpg", keep=len(base.read_bytes()) // 6)
    with pytest.raises(ImageReadError, match="truncated; .*% of the image is missing"):
        read_image(stub)


def test_random_bytes_named_dcm_are_not_called_dicom(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match="not a recognised image"):
        read_image(mv.random_bytes(tmp_path / "scan.dcm"))


def test_jpeg_compressed_dicom_decodes_through_pylibjpeg(tmp_path: Path) -> None:
    """A DICOM holding a baseline JPEG (transfer syntax 1.2.840.10008.1.2.4.50), as many CR/DX archives send."""
    import pydicom
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    jpeg = FIXTURES / "images" / BASE_IMAGE
    grey = np.asarray(Image.open(jpeg).convert("L"))
    Image.fromarray(grey).save(tmp_path / "grey.jpg", quality=95)
    path = mv.dicom(tmp_path / "plain.dcm", grey, bits_stored=8)
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([(tmp_path / "grey.jpg").read_bytes()])
    ds["PixelData"].VR = "OB"
    ds.save_as(tmp_path / "jpeg.dcm", enforce_file_format=True)
    from_dicom = read_image(tmp_path / "jpeg.dcm")
    from_jpeg = read_image(tmp_path / "grey.jpg")
    assert from_dicom.meta["format"] == "dicom" and from_dicom.pixels.shape == grey.shape
    assert np.abs(from_dicom.pixels - from_jpeg.pixels).mean() < 2 / 255  # two JPEG decoders, one image


def test_colour_jpegs_decode_to_the_luma_pillow_would_compute(tmp_path: Path) -> None:
    """RGB JPEGs are decoded straight to luma (faster); that is the grey Pillow's RGB -> L gives: the same
    pixels for radiographs stored as RGB (all fixtures that are RGB), a grey level at most for colour."""
    rgb_fixtures = [p for p in sorted(IMAGES.glob("*.jpg")) if Image.open(p).mode == "RGB"]
    assert rgb_fixtures
    for path in rgb_fixtures:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ImageReadWarning)  # some fixtures are truncated
            pixels = read_image(path).pixels
        if "IMG0004228" in path.name or "IMG0004347" in path.name or "IMG0004308" in path.name:
            continue  # truncated: Pillow alone refuses them
        expected = np.asarray(Image.open(path).convert("L"), dtype=np.float32) / 255
        assert np.array_equal(pixels, expected), path.name
    # A radiograph with a red annotation: the same grey away from the colour; where saturated red makes the
    # RGB route clip, the luma route differs (measured: up to 28 levels on 1% of pixels).
    from PIL import ImageDraw

    annotated = Image.open(rgb_fixtures[0]).convert("RGB")
    ImageDraw.Draw(annotated).rectangle([50, 50, 200, 150], outline=(255, 0, 0), width=4)
    annotated.save(tmp_path / "annotated.jpg", quality=90)
    expected = np.asarray(Image.open(tmp_path / "annotated.jpg").convert("L"), dtype=np.float32)
    diff = np.abs(read_image(tmp_path / "annotated.jpg").pixels * 255 - expected)
    assert (diff > 0).mean() < 0.02 and diff.mean() < 0.5


def test_an_image_is_plain_data_that_reading_never_changes(tmp_path: Path) -> None:
    """`pixels` is the float32 array made at read time, for 8-bit files too: using it changes nothing, and
    a change made to it is what the model's preprocessing sees."""
    from bonefrac.preprocess import letterbox_image

    image = read_image(IMAGES / BASE_IMAGE)
    pixels = image.pixels
    assert isinstance(pixels, np.ndarray) and pixels.dtype == np.float32 and image.pixels is pixels
    assert vars(image).keys() == {"pixels", "meta", "path"}  # no hidden 8-bit copy to fall out of step
    meta = dict(image.meta)
    before = letterbox_image(image, 64)[0]
    assert image.pixels is pixels and image.meta == meta
    pixels[:, : pixels.shape[1] // 2] = 0.0  # edit in place: the next preprocessing sees it
    assert np.abs(letterbox_image(image, 64)[0] - before).max() > 0.1
    with pytest.raises(TypeError):
        XrayImage()  # type: ignore[call-arg]


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".bmp"])
def test_an_image_read_owns_its_pixels_and_no_file(suffix: str, grey: np.ndarray, tmp_path: Path) -> None:
    # The pixels must hold neither the open file nor a memory map of it (uncompressed BMPs are mapped by
    # Pillow), so the file can go and the pixels stay.
    import mmap

    path = tmp_path / f"x{suffix}"
    Image.fromarray(grey).save(path)
    image = read_image(path)
    expected = np.asarray(Image.open(path).convert("L"), dtype=np.float32) / 255
    path.unlink()
    base = image.pixels
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    assert not isinstance(base, mmap.mmap)
    np.testing.assert_array_equal(image.pixels, expected)


# ---------------------------------------------------------------- decoding at 1/k
def test_reduce_is_a_factor_or_a_rule_of_the_stored_size(grey: np.ndarray, tmp_path: Path) -> None:
    big = tmp_path / "big.jpg"
    Image.fromarray(np.tile(grey, (2, 2))).save(big, quality=95)
    full = (2 * grey.shape[0], 2 * grey.shape[1])
    asked: list[tuple[int, int]] = []

    def rule(height: int, width: int) -> int:
        asked.append((height, width))
        return 4

    by_rule, by_factor = read_image(big, rule), read_image(big, 4)
    assert asked == [full]  # called once, with the size the header declares
    assert by_rule.meta["reduced_by"] == by_factor.meta["reduced_by"] == 4
    assert np.array_equal(by_rule.pixels, by_factor.pixels) and by_factor.pixels.shape == (
        -(-full[0] // 4),
        -(-full[1] // 4),
    )  # rounded up
    assert (by_factor.meta["height"], by_factor.meta["width"]) == full  # the full size, for heatmaps and boxes
    assert read_image(big, 3).meta["reduced_by"] == 2  # libjpeg offers 1/2, 1/4, 1/8: the largest not above 1/k
    assert "reduced_by" not in read_image(big).meta
    png = mv.png8(np.tile(grey, (2, 2)), tmp_path / "big.png")
    asked.clear()
    assert read_image(png, rule).pixels.shape == full and asked == []  # only JPEGs decode reduced
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="reduce must be an integer"):
            read_image(big, bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="reduce must be an integer"):
        read_image(big, lambda height, width: 0)


# ---------------------------------------------------------------- truncation, decided per file
@pytest.mark.filterwarnings("ignore::bonefrac.io.image.ImageReadWarning")
def test_a_truncated_file_read_in_another_thread_lets_no_stub_through(tmp_path: Path) -> None:
    """Deciding truncation flipped Pillow's process-wide LOAD_TRUNCATED_IMAGES while other threads decoded:
    a JPEG holding a sixth of a radiograph, refused when read alone, was then accepted in silence."""
    cut = mv.truncate(IMAGES / "IMG0000505.jpg", tmp_path / "cut.jpg", cut=200)  # read with a warning
    base = IMAGES / BASE_IMAGE
    stub = mv.truncate(base, tmp_path / "stub.jpg", keep=len(base.read_bytes()) // 6)  # must be refused
    stop, cut_reads = threading.Event(), []

    def read_cut_until_stopped() -> None:
        while not stop.is_set():
            cut_reads.append(read_image(cut).meta.get("truncated"))

    reader = threading.Thread(target=read_cut_until_stopped)
    reader.start()
    accepted = 0
    try:
        for _ in range(300):
            try:
                read_image(stub)
                accepted += 1
            except ImageReadError:
                pass
    finally:
        stop.set()
        reader.join()
    assert accepted == 0
    assert len(cut_reads) > 10 and all(cut_reads)  # the other thread really was reading its truncated file


def test_a_truncated_progressive_jpeg_says_its_missing_share_is_unknown(grey: np.ndarray, tmp_path: Path) -> None:
    """A progressive JPEG sends the whole image coarse first: cut after its first scan, no rows are missing
    and the loss cannot be measured, which the warning must say (not "0% of rows missing")."""
    Image.fromarray(grey).save(tmp_path / "p.jpg", quality=90, progressive=True)
    data = (tmp_path / "p.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.warns(ImageReadWarning) as record:
        image = read_image(tmp_path / "cut.jpg")
    messages = [str(w.message) for w in record]
    assert messages == [
        "cut.jpg: JPEG file is truncated; progressive JPEG, share missing unknown (detail may be lost everywhere)"
    ]
    assert image.meta["truncated"] is True and image.meta["truncated_missing_fraction"] is None
    assert image.meta["warnings"] == messages
    # Cut inside its first scan, the rows it never reached are measurable, as a lower bound: a stub is refused.
    (tmp_path / "stub.jpg").write_bytes(data[: len(data) // 20])
    with pytest.raises(
        ImageReadError, match=r"^stub\.jpg: JPEG file is truncated; at least \d+% of the image is missing$"
    ):
        read_image(tmp_path / "stub.jpg")


# ---------------------------------------------------------------- DICOM messages: whole, naming the file
def test_pydicom_warnings_name_their_file(grey: np.ndarray, tmp_path: Path) -> None:
    padded = mv.dicom(tmp_path / "padded.dcm", grey, bits_stored=8, raw_pixel_bytes=grey.tobytes() + b"\0" * 128)
    with pytest.warns(UserWarning) as record:  # pydicom's own, unnamed one too
        image = read_image(padded)
    ours = [w for w in record if issubclass(w.category, ImageReadWarning)]
    assert len(ours) == 1 and ours[0].filename == __file__  # pointing at the caller of read_image
    message = str(ours[0].message)
    assert message.startswith("padded.dcm: The pixel data is ") and "128 bytes of excess padding" in message
    assert image.meta["warnings"] == [message]
    np.testing.assert_array_equal(image.pixels, grey / np.float32(255))


def test_pydicom_warnings_stay_with_their_file_across_threads(grey: np.ndarray, tmp_path: Path) -> None:
    """Files read at once in threads (predict_many, the server) each keep exactly their own warnings."""
    pad = {f"p{i}.dcm": 2 * (i + 1) for i in range(4)}
    paths = [
        mv.dicom(tmp_path / n, grey, bits_stored=8, raw_pixel_bytes=grey.tobytes() + b"\0" * k) for n, k in pad.items()
    ]
    paths.append(mv.dicom(tmp_path / "clean.dcm", grey, bits_stored=8))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with ThreadPoolExecutor(4) as pool:
            images = list(pool.map(read_image, paths * 8))
    for image in images:
        name = Path(image.path).name
        if name == "clean.dcm":
            assert "warnings" not in image.meta
        else:
            [said] = image.meta["warnings"]
            assert said.startswith(f"{name}: ") and f"contains {pad[name]} bytes of excess padding" in said


def test_dicom_decoding_errors_are_whole_single_lines(grey: np.ndarray, tmp_path: Path) -> None:
    """pydicom's reasons span lines ("...raised by all available plugins:" then one line per decoder);
    only the first used to be kept, which ends before any reason."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    ds = pydicom.dcmread(mv.dicom(tmp_path / "plain.dcm", grey, bits_stored=8))
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xe0" + b"not a JPEG stream" * 8])
    ds["PixelData"].VR = "OB"
    ds.save_as(tmp_path / "broken.dcm", enforce_file_format=True)
    with pytest.raises(ImageReadError) as caught:
        read_image(tmp_path / "broken.dcm")
    message = str(caught.value)
    assert message.startswith("broken.dcm: DICOM pixel data cannot be decoded (transfer syntax JPEG Baseline")
    assert "every decoder failed: " in message and "pillow: " in message and "\n" not in message
    assert not message.rstrip().endswith(":")
    truncated = get_testdata_file("MR_truncated.dcm", download=False)  # in pydicom's wheel
    with pytest.raises(ImageReadError) as caught:
        read_image(truncated)
    message = str(caught.value)
    assert message.startswith("MR_truncated.dcm: ") and "(8130 vs 8192 bytes)" in message
    assert message.endswith("or the transfer syntax may be incorrect") and "\n" not in message
