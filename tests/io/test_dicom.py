"""io.dicom beyond what test_read covers: the VOI LUT Function of a window (pydicom's windowing), and the
header-only check the DICOM node refuses images with before any pixel is decoded."""

from __future__ import annotations

import warnings
from pathlib import Path

import make_variants as mv
import numpy as np
import pydicom
import pytest

from bonefrac.errors import ImageReadError
from bonefrac.io.dicom import check_pixel_length, header_meta
from bonefrac.io.read import read_image


def _read(path: Path) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return read_image(path).pixels


def test_sigmoid_window(grey: np.ndarray, tmp_path: Path) -> None:
    """PS3.3 C.11.2.1.3.1: y = 1 / (1 + exp(-4 (x - c) / w)) over the output range; the centre maps to 0.5."""
    stored = mv.to_12bit(grey)
    center, width = 2048.0, 1024.0
    path = mv.dicom(
        tmp_path / "s.dcm", stored, bits_stored=12, WindowCenter=center, WindowWidth=width, VOILUTFunction="SIGMOID"
    )
    expected = 1.0 / (1.0 + np.exp(-4.0 * (stored - center) / width))
    # float32 output of a float64 computation: a few ulps of 1.0
    np.testing.assert_allclose(_read(path), expected, rtol=1e-6, atol=1e-6)


def test_linear_exact_window(grey: np.ndarray, tmp_path: Path) -> None:
    """PS3.3 C.11.2.1.3.2: no half-pixel offsets, unlike LINEAR: (x - (c - w/2)) / w."""
    stored = mv.to_12bit(grey)
    center, width = 2000.0, 1000.0
    path = mv.dicom(
        tmp_path / "e.dcm",
        stored,
        bits_stored=12,
        WindowCenter=center,
        WindowWidth=width,
        VOILUTFunction="LINEAR_EXACT",
    )
    expected = np.clip((stored - (center - width / 2)) / width, 0.0, 1.0)
    np.testing.assert_allclose(_read(path), expected, rtol=1e-6, atol=1e-6)


def test_header_meta_refuses_short_pixel_data_without_decoding(grey: np.ndarray, tmp_path: Path) -> None:
    path = mv.dicom(tmp_path / "c.dcm", grey, bits_stored=8, raw_pixel_bytes=b"\0" * 100)
    ds = pydicom.dcmread(path)
    with pytest.raises(
        ImageReadError, match=r"c\.dcm: DICOM pixel data is shorter than its header says \(100 vs \d+ bytes\)"
    ):
        check_pixel_length(ds, "c.dcm")
    good = pydicom.dcmread(mv.dicom(tmp_path / "g.dcm", grey, bits_stored=8))
    check_pixel_length(good, "g.dcm")
    meta = header_meta(good, "g.dcm")
    assert (meta["height"], meta["width"], meta["frames"], meta["format"]) == (*grey.shape, 1, "dicom")
