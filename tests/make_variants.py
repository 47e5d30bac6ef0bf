"""Re-encode one real radiograph as the PNG, JPEG and DICOM variants the reader must handle.

Every writer takes the 8-bit greyscale radiograph `grey` (H, W) uint8 and a target path, writes the file
and returns the path. The DICOM writers build the dataset by hand (pydicom 3), so each one controls
exactly the attributes under test; nothing is downloaded.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

FIXTURES = Path(__file__).parent / "fixtures"
#: A greyscale (mode L) landscape fixture: the radiograph every variant is made from.
BASE_IMAGE = "IMG0002553.jpg"
PATIENT_NAME = "Doe^Jane"
PATIENT_ID = "PID-4711-SECRET"
DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def to_12bit(grey: np.ndarray) -> np.ndarray:
    """8-bit values spread over 12 bits (0..4095), as a 12-bit detector would store them."""
    return np.round(grey.astype(np.float64) * 4095 / 255).astype(np.uint16)


# ---------------------------------------------------------------- PNG / JPEG
def png8(grey: np.ndarray, path: Path) -> Path:
    Image.fromarray(grey).save(path)
    return path


def png16(grey: np.ndarray, path: Path) -> Path:
    """16-bit PNG holding value * 257, which maps 0..255 exactly onto 0..65535."""
    Image.fromarray(grey.astype(np.uint16) * 257).save(path)
    return path


def jpeg_rgb(grey: np.ndarray, path: Path, quality: int = 100) -> Path:
    Image.fromarray(np.stack([grey] * 3, axis=-1)).save(path, quality=quality, subsampling=0)
    return path


def jpeg_cmyk(grey: np.ndarray, path: Path) -> Path:
    Image.fromarray(grey).convert("CMYK").save(path, quality=100)
    return path


def jpeg_exif_orientation(grey: np.ndarray, path: Path, orientation: int) -> Path:
    """The pixels stored as given, with an EXIF Orientation tag telling viewers how to display them."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(grey).save(path, quality=100, exif=exif)
    return path


def png_palette(grey: np.ndarray, path: Path) -> Path:
    """Mode P: the stored indices are the grey values, through a 256-entry grey ramp palette."""
    im = Image.frombytes("P", (grey.shape[1], grey.shape[0]), np.ascontiguousarray(grey).tobytes())
    im.putpalette([v for i in range(256) for v in (i, i, i)])
    im.save(path)
    return path


def png_grey_alpha(grey: np.ndarray, path: Path) -> Path:
    """Mode LA with a non-trivial alpha channel (a gradient), which the reader must ignore."""
    alpha = np.tile(np.linspace(0, 255, grey.shape[1]).astype(np.uint8), (grey.shape[0], 1))
    Image.fromarray(np.stack([grey, alpha], axis=-1)).save(path)
    return path


def png_declaring(width: int, height: int, path: Path) -> Path:
    """A tiny PNG whose IHDR declares width x height (8-bit grey) with a valid CRC, and one tiny IDAT."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 16)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def text_file(path: Path) -> Path:
    path.write_text("patient list, not an image\n" * 20)
    return path


def random_bytes(path: Path, n: int = 4096) -> Path:
    path.write_bytes(np.random.default_rng(0).bytes(n))
    return path


def truncate(src: Path, path: Path, keep: int | None = None, cut: int | None = None) -> Path:
    """Copy `src` keeping only its first `keep` bytes, or dropping its last `cut` bytes."""
    data = src.read_bytes()
    path.write_bytes(data[:keep] if keep is not None else data[: len(data) - (cut or 0)])
    return path


# ---------------------------------------------------------------- DICOM
def dicom(
    path: Path,
    stored: np.ndarray,
    *,
    bits_stored: int,
    photometric: str = "MONOCHROME2",
    signed: bool = False,
    patient: bool = False,
    pixel_data: bool = True,
    rows_cols: tuple[int, int] | None = None,
    raw_pixel_bytes: bytes | None = None,
    rle: bool = False,
    modality: str | None = "DX",
    sop_class: str = DX_FOR_PRESENTATION,
    **attributes: Any,
) -> Path:
    """Write a DICOM Part 10 file whose pixel data is `stored`: (H, W), (frames, H, W) or, for RGB, (H, W, 3).

    Args:
        bits_stored: BitsStored; BitsAllocated is 8 when this is 8, else 16.
        photometric: PhotometricInterpretation, written as given (even unsupported ones).
        signed: PixelRepresentation 1 (two's complement).
        patient: set PatientName / PatientID / PatientBirthDate to recognisable strings.
        pixel_data: False writes an image-less object (no PixelData element at all).
        rows_cols: declare these Rows/Columns instead of the array's (for decompression bombs).
        raw_pixel_bytes: write these bytes as PixelData instead of the array's (no allocation).
        rle: compress with RLE Lossless (pydicom's native encoder).
        modality: the Modality element; None leaves it out.
        sop_class: the SOP Class UID (also the file meta's Media Storage SOP Class UID).
        attributes: any further DICOM keyword=value (RescaleSlope, WindowCenter, VOILUTSequence, ...).
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid

    rgb = photometric == "RGB"  # then `stored` is (H, W, 3), colour-by-pixel
    frames = stored.shape[0] if stored.ndim == 3 and not rgb else 1
    rows, cols = rows_cols or (stored.shape[:2] if rgb else stored.shape[-2:])
    bits_allocated = 8 if bits_stored <= 8 else 16
    dtype = {(8, False): np.uint8, (8, True): np.int8, (16, False): np.uint16, (16, True): np.int16}
    arr = stored.astype(dtype[bits_allocated, signed])

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    if modality is not None:
        ds.Modality = modality
    ds.BodyPartExamined = "HAND"
    if patient:
        ds.PatientName = PATIENT_NAME
        ds.PatientID = PATIENT_ID
        ds.PatientBirthDate = "19700101"
    ds.Rows, ds.Columns = int(rows), int(cols)
    ds.SamplesPerPixel = 3 if rgb else 1
    if rgb:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = bits_allocated
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = int(signed)
    if frames > 1:
        ds.NumberOfFrames = frames
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    if pixel_data:
        ds.PixelData = raw_pixel_bytes if raw_pixel_bytes is not None else arr.tobytes()
        if rle:
            ds.compress(RLELossless, arr, generate_instance_uid=False)
    ds.save_as(path, enforce_file_format=True)
    return path


def voi_lut_item(lut: np.ndarray, first_mapped: int, bits: int) -> Any:
    """One VOILUTSequence item: LUTDescriptor [entries, first mapped value, bits per entry] + LUTData."""
    from pydicom.dataset import Dataset

    item = Dataset()
    item.LUTDescriptor = [len(lut), first_mapped, bits]
    item.add_new(0x00283006, "OW", np.asarray(lut, dtype="<u2").tobytes())  # LUTData
    return item
