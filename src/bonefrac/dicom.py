"""DICOM pixels to greyscale [0, 1]: modality LUT, VOI LUT or window, MONOCHROME1 inversion.

Imported lazily by `io.read_image`, so pydicom costs nothing for JPEG/PNG users. Patient-identifying
attributes are never read into the returned metadata, never printed and never logged.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from .errors import BonefracError, ImageReadError
from .io import DICOM_PHOTOMETRICS, check_size, warn


def read_dicom(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    """Decode the first frame of a DICOM file into float32 [0, 1], bone bright."""
    try:
        return _read_dicom(path)
    except BonefracError:
        raise
    except Exception as e:
        # A damaged file makes pydicom raise from wherever a bad element is first converted
        # (NotImplementedError, struct.error, BytesLengthException, ...). Its message may quote element
        # values, and so patient data: keep only the exception type and the tag.
        tag = re.search(r"\([0-9A-Fa-f]{4},[0-9A-Fa-f]{4}\)", str(e))
        where = f" in tag {tag.group(0)}" if tag else ""
        raise ImageReadError(f"{path.name}: corrupt DICOM file ({type(e).__name__}{where})") from None


def _read_dicom(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import pixel_array

    name = path.name
    try:
        # defer_size keeps the pixel bytes on disk until the size checks below have passed.
        ds = pydicom.dcmread(path, defer_size="256 KB", force=True)
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError, AttributeError) as e:
        raise ImageReadError(f"{name}: not a readable DICOM file ({type(e).__name__})") from None
    if not any(t in ds for t in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        if not getattr(ds, "preamble", None) and not ds.get("SOPClassUID"):
            # Reached only through a .dcm extension, and pydicom's forced parse found nothing DICOM-like.
            raise ImageReadError(f"{name}: not a recognised image (JPEG, PNG or DICOM)")
        raise ImageReadError(f"{name}: DICOM file has no pixel data (not an image object)")
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        bits_stored = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)))
    except (AttributeError, TypeError, ValueError):
        raise ImageReadError(f"{name}: DICOM image attributes (Rows, Columns, ...) are missing or invalid") from None
    check_size(cols, rows, name)
    if photometric not in DICOM_PHOTOMETRICS:
        raise ImageReadError(
            f"{name}: unsupported DICOM photometric interpretation {photometric!r} "
            f"(supported: {', '.join(DICOM_PHOTOMETRICS)})"
        )
    notes: dict[str, Any] = {}
    if frames > 1:
        warn(notes, f"{name}: multi-frame DICOM ({frames} frames); reading the first", stacklevel=4)
    try:
        arr = pixel_array(ds, index=0 if frames > 1 else None)
    except Exception as e:  # pydicom raises many types for corrupt/unsupported encodings
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        ts_name = getattr(ts, "name", str(ts)) if ts is not None else "unknown"
        raise ImageReadError(
            f"{name}: DICOM pixel data cannot be decoded (transfer syntax {ts_name}: {str(e).splitlines()[0][:120]})"
        ) from None
    if arr.ndim == 3 and arr.shape[-1] == 3:  # RGB / YBR (pydicom converts YBR to RGB)
        arr = arr.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
        values = arr / (2.0**bits_stored - 1)
    elif arr.ndim == 2:
        values = _grey_to_unit(arr, ds, bits_stored, name)
    else:
        raise ImageReadError(f"{name}: DICOM pixel array of shape {arr.shape} is not a 2-D image")
    values = np.clip(values, 0.0, 1.0)
    if photometric == "MONOCHROME1":
        values = 1.0 - values  # MONOCHROME1 stores bone dark; show it the way MONOCHROME2 does
    body_part = str(ds.get("BodyPartExamined", "") or "").strip() or None
    meta = {
        "format": "dicom",
        "bit_depth": bits_stored,
        "photometric": photometric,
        "body_part": body_part,
        "modality": str(ds.get("Modality", "") or "") or None,
        "frames": frames,
        **notes,
    }
    return values.astype(np.float32), meta


def _grey_to_unit(arr: np.ndarray, ds: Any, bits_stored: int, name: str) -> np.ndarray:
    """Stored values -> modality values -> VOI (window or LUT) -> [0, 1]."""
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    stored = arr.astype(np.int64)
    # Respect BitsStored: bits above it may hold overlays or garbage in old files.
    if not signed and bits_stored < 16 and stored.max(initial=0) >= 2**bits_stored:
        stored = stored & (2**bits_stored - 1)
    lo_stored = -(2 ** (bits_stored - 1)) if signed else 0
    hi_stored = 2 ** (bits_stored - 1) - 1 if signed else 2**bits_stored - 1
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    if ds.get("ModalityLUTSequence"):
        values, bits = _apply_lut(stored, ds.ModalityLUTSequence[0], ds, name)
        lo, hi = 0.0, 2.0**bits - 1
    else:
        values = stored.astype(np.float64) * slope + intercept
        lo, hi = sorted((lo_stored * slope + intercept, hi_stored * slope + intercept))
    if ds.get("VOILUTSequence"):
        out, bits = _apply_lut(values, ds.VOILUTSequence[0], ds, name)
        return out / (2.0**bits - 1)
    window = _first_window(ds)
    if window is not None:
        center, width = window
        # DICOM PS3.3 C.11.2.1.2.1, linear function.
        low = center - 0.5 - (width - 1) / 2
        high = center - 0.5 + (width - 1) / 2
        return (values - low) / max(high - low, 1e-6)
    return (values - lo) / max(hi - lo, 1e-6)


def _apply_lut(values: np.ndarray, item: Any, ds: Any, name: str) -> tuple[np.ndarray, int]:
    """Look `values` up in a modality or VOI LUT item; returns (output values, bits per output entry).

    Done here rather than with pydicom's apply_voi_lut, which indexes 8-bit LUTs through a uint8 array
    (so any LUT longer than 256 entries wraps around) and warns on the float input a rescale produces.
    Inputs below the first mapped value take the first entry, inputs past the end the last (PS3.3 C.11.2.1.1).
    """
    try:
        entries, first, bits = (int(v) for v in item.LUTDescriptor)
    except (AttributeError, TypeError, ValueError):
        raise ImageReadError(f"{name}: DICOM LUT has no valid LUT Descriptor") from None
    entries = entries or 65536  # 0 means 2**16 entries
    if first >= 2**15 and int(ds.get("PixelRepresentation", 0)) == 1:
        first -= 2**16  # the descriptor is "US or SS": signed data may store a negative first value as US
    data = item.get("LUTData")
    if isinstance(data, bytes | bytearray):  # OW: one entry per 16-bit word, or 8-bit entries packed in pairs
        little = getattr(ds, "original_encoding", (None, True))[1] is not False
        if len(data) >= 2 * entries:
            table = np.frombuffer(data, dtype="<u2" if little else ">u2", count=entries)
        else:
            table = np.frombuffer(data, dtype=np.uint8, count=min(entries, len(data)))
    else:
        table = np.atleast_1d(np.asarray(data if data is not None else [], dtype=np.float64))
    if len(table) < entries or not 1 <= bits <= 16:
        raise ImageReadError(f"{name}: DICOM LUT Data does not match its LUT Descriptor")
    index = np.clip(np.rint(values) - first, 0, entries - 1).astype(np.intp)
    return table[:entries].astype(np.float64)[index], bits


def _first_window(ds: Any) -> tuple[float, float] | None:
    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        return None
    center, width = ds.WindowCenter, ds.WindowWidth
    try:
        center = float(center[0]) if hasattr(center, "__len__") and not isinstance(center, str) else float(center)
        width = float(width[0]) if hasattr(width, "__len__") and not isinstance(width, str) else float(width)
    except (TypeError, ValueError, IndexError):
        return None
    if width < 1:
        return None
    return center, width
