"""DICOM pixels to greyscale [0, 1]: modality LUT, VOI LUT or window, MONOCHROME1 inversion.

Imported lazily by `io.read_image`, so pydicom costs nothing for JPEG/PNG users. Patient-identifying
attributes are never read into the returned metadata, never printed and never logged.
"""

from __future__ import annotations

import logging
import re
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from bonefrac.errors import BonefracError, ImageReadError
from bonefrac.io.image import DICOM_PHOTOMETRICS, check_size, warn


def read_dicom(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    """Decode the first frame of a DICOM file into float32 [0, 1], bone bright.

    What pydicom warns about while reading the file comes out as `ImageReadWarning`s that name the file,
    and in `meta["warnings"]` (see `_pydicom_warnings`).
    """
    named: dict[str, Any] = {}  # warn() keeps its messages in named["warnings"]
    with _pydicom_warnings() as said:
        try:
            pixels, meta = _read_dicom(path)
        except BonefracError:
            raise
        except Exception as e:
            # A damaged file makes pydicom raise from wherever a bad element is first converted
            # (NotImplementedError, struct.error, BytesLengthException, ...). Its message may quote element
            # values, and so patient data: keep only the exception type and the tag.
            tag = re.search(r"\([0-9A-Fa-f]{4},[0-9A-Fa-f]{4}\)", str(e))
            where = f" in tag {tag.group(0)}" if tag else ""
            raise ImageReadError(f"{path.name}: corrupt DICOM file ({type(e).__name__}{where})") from None
        finally:
            # Also when the file is refused: the warning may say why (an invalid Rows value, ...).
            for message in said:
                warn(named, f"{path.name}: {_withhold_values(message, path)}", stacklevel=3)
    if named:
        meta["warnings"] = meta.get("warnings", []) + named["warnings"]
    return pixels, meta


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
    meta = header_meta(ds, name)
    photometric, frames, bits_stored = meta["photometric"], meta["frames"], meta["bit_depth"]
    notes: dict[str, Any] = {}
    if frames > 1:
        warn(notes, f"{name}: multi-frame DICOM ({frames} frames); reading the first", stacklevel=4)
    try:
        arr = pixel_array(ds, index=0 if frames > 1 else None)
    except Exception as e:  # pydicom raises many types for corrupt/unsupported encodings
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        ts_name = getattr(ts, "name", str(ts)) if ts is not None else "unknown"
        raise ImageReadError(
            f"{name}: DICOM pixel data cannot be decoded (transfer syntax {ts_name}): {_one_line(str(e), path)}"
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
    meta = {k: v for k, v in meta.items() if k not in ("height", "width")}  # (read_image sets them)
    meta.update(notes)
    return values.astype(np.float32), meta


def header_meta(ds: Any, name: str) -> dict[str, Any]:
    """What the header says, checked before any pixel is decoded: pixel data present, a supported size and
    photometric interpretation. The DICOM node refuses an image with this (and `check_pixel_length`) alone,
    so that its pixels are decoded once, when it is predicted.

    Raises:
        ImageReadError: one line naming `name`.
    """
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
    file_meta = getattr(ds, "file_meta", None)
    sop_class = ds.get("SOPClassUID") or (file_meta.get("MediaStorageSOPClassUID") if file_meta else None)
    return {
        "format": "dicom",
        "height": rows,
        "width": cols,
        "bit_depth": bits_stored,
        "photometric": photometric,
        "body_part": _text(ds.get("BodyPartExamined")),
        # What `modality.check_radiograph` decides on (neither identifies a patient).
        "modality": (_text(ds.get("Modality")) or "").upper() or None,
        "sop_class_uid": _text(sop_class),
        "frames": frames,
    }


def check_pixel_length(ds: Any, name: str) -> None:
    """Refuse uncompressed pixel data shorter than the header says, without decoding it (a compressed one is
    only known bad once decoded). `read_image` leaves this to the decoder, whose message says more.

    Raises:
        ImageReadError: one line naming `name`.
    """
    from pydicom.pixels.utils import get_expected_length

    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if ts is None or ts.is_compressed or "PixelData" not in ds:
        return
    try:
        expected = get_expected_length(ds, unit="bytes")
        actual = len(ds.PixelData)
    except (AttributeError, TypeError, ValueError, KeyError):
        return  # the decoder says what is wrong, with more detail
    if actual < expected:
        raise ImageReadError(f"{name}: DICOM pixel data is shorter than its header says ({actual} vs {expected} bytes)")


def _text(value: Any) -> str | None:
    return str(value or "").strip() or None


# ---------------------------------------------------------------- pydicom's warnings, naming the file
@contextmanager
def _pydicom_warnings() -> Iterator[list[str]]:
    """Collect the warnings pydicom gives in this thread while the block runs.

    Every pydicom warning goes through `pydicom.misc.warn_and_log`, which logs it to the "pydicom" logger
    before calling `warnings.warn`. Log records carry their thread, so a handler added for the block and
    keeping only this thread's records sees exactly this file's warnings, however many threads read files
    at once. `warnings.catch_warnings` would not do: it swaps process-wide state, so two threads in it at
    once can leave warnings going to a list nobody reads, and serialising it with a lock would serialise
    every DICOM decode of a batch. pydicom's own, unnamed `UserWarning` still reaches Python's warning
    filters (shown once per location by default); a caller that reports `meta["warnings"]` may filter it
    (`module="pydicom"`). If the "pydicom" logger is set above WARNING, nothing is collected.
    """
    handler = _ThreadWarnings()
    logger = logging.getLogger("pydicom")
    logger.addHandler(handler)
    try:
        yield handler.messages
    finally:
        logger.removeHandler(handler)


class _ThreadWarnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.thread = threading.get_ident()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        # funcName: only what warn_and_log sends (also a Python warning), not pydicom's log-only notes.
        if record.thread == self.thread and record.funcName == "warn_and_log":
            self.messages.append(record.getMessage())


#: A value quoted in a pydicom message ("Invalid value for VR IS: '1A'", 'Value "x" is not valid ...'):
#: it may come from any element, so it is withheld.
_QUOTED_VALUE = re.compile(r"""(for VR \w+: |Value )b?(['"]).*?(?<!\\)\2""")
_SEE_STANDARD = re.compile(r"\s*Please see <[^>]*> for allowed values for each VR\.?")


def _withhold_values(message: str, path: Path) -> str:
    """One line of a pydicom warning fit to show with the file's name: element values withheld (they may be
    patient data), the file's full path (the name comes first anyway) and the link to the standard left out."""
    message = _QUOTED_VALUE.sub(r"\1(value withheld)", message)
    message = _SEE_STANDARD.sub("", message.replace(f" in file {path}", ""))
    return _one_line(message, path)


def _one_line(message: str, path: Path) -> str:
    """A multi-line pydicom message as one whole line. "Unable to decode as exceptions were raised by all
    available plugins:" followed by one line per decoder becomes "every decoder failed: a: ...; b: ..."."""
    lines = [line.strip() for line in str(message).replace(str(path), path.name).splitlines() if line.strip()]
    if not lines:
        return "no reason given"
    if len(lines) > 1 and lines[0].endswith(":"):
        head = "every decoder failed:" if "all available plugins" in lines[0] else lines[0]
        return f"{head} {'; '.join(lines[1:])}"
    return " ".join(lines)


def _grey_to_unit(arr: np.ndarray, ds: Any, bits_stored: int, name: str) -> np.ndarray:
    """Stored values -> modality values -> VOI (LUT, or window with its VOI LUT Function) -> [0, 1].

    pydicom's `apply_voi` and `apply_windowing` do the VOI step (LINEAR, LINEAR_EXACT and SIGMOID windows),
    except for the two tables it mis-reads, which `_apply_lut` looks up instead: an 8-bit VOI LUT longer than
    256 entries (pydicom indexes it through a uint8 array, so the index wraps around) and any modality LUT
    (pydicom makes a `uint<bits>` array of it, which does not exist for a 12-bit table).
    """
    from pydicom.pixels import apply_voi, apply_windowing

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
        item = ds.VOILUTSequence[0]
        if _wraps_in_pydicom(item):
            out, bits = _apply_lut(values, item, ds, name)
        else:
            # A LUT is indexed by integers: rescaled values are rounded to the nearest entry first.
            try:
                out, bits = apply_voi(np.rint(values).astype(np.int64), ds), int(item.LUTDescriptor[2])
            except (AttributeError, TypeError, ValueError, IndexError, NotImplementedError, struct.error):
                raise ImageReadError(f"{name}: DICOM LUT Data does not match its LUT Descriptor") from None
        return np.asarray(out, dtype=np.float64) / (2.0**bits - 1)
    if "WindowCenter" in ds and "WindowWidth" in ds:
        # pydicom reads the output range from these; a file may omit them (their defaults are the reader's).
        ds.BitsStored, ds.PixelRepresentation = bits_stored, int(signed)
        try:
            windowed = apply_windowing(values, ds)
        except (TypeError, ValueError, IndexError):
            windowed = None  # an unusable window (width under 1, not a number): the full range instead
        if windowed is not None:
            return (windowed - lo) / max(hi - lo, 1e-6)
    return (values - lo) / max(hi - lo, 1e-6)


def _wraps_in_pydicom(item: Any) -> bool:
    """An 8-bit LUT longer than 256 entries (or with its entries packed in pairs in OW), which pydicom's
    `apply_voi` indexes through a uint8 array."""
    try:
        entries, _, bits = (int(v) for v in item.LUTDescriptor)
    except (AttributeError, TypeError, ValueError):
        return True  # `_apply_lut` says what is wrong with it
    entries = entries or 65536
    data = item.get("LUTData")
    packed = isinstance(data, bytes | bytearray) and len(data) < 2 * entries
    return bits == 8 and (entries > 256 or packed)


def _apply_lut(values: np.ndarray, item: Any, ds: Any, name: str) -> tuple[np.ndarray, int]:
    """Look `values` up in a modality or VOI LUT item; returns (output values, bits per output entry).

    Used only where pydicom mis-reads the table (see `_grey_to_unit`). Inputs below the first mapped value
    take the first entry, inputs past the end the last (PS3.3 C.11.2.1.1).
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
