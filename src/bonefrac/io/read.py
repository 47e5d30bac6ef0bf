"""Read any supported X-ray file into greyscale float32 pixels in [0, 1].

One entry point, `read_image(path)`. The format is sniffed from the bytes, never trusted from the
extension: DICOM by the `DICM` magic at offset 128 (read by `dicom.read_dicom`), everything else through
Pillow. What comes out is an `XrayImage`: the image on its own pixel grid (EXIF orientation applied),
bright bone on a dark background, plus metadata that never contains patient identifiers.

Contrast is not stretched here: the reader maps each format's value range onto [0, 1] faithfully
(bit depth, DICOM modality and VOI LUTs) and `transforms.preprocess` does the per-image normalisation,
so a re-encoding of the same radiograph gives the same model input.
"""

from __future__ import annotations

from collections.abc import Callable
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from bonefrac.errors import ImageReadError, ImageTooLargeError
from bonefrac.io.image import ImageReadWarning, XrayImage, check_size, warn

# The reader's public names; `XrayImage` and `ImageReadWarning` live in `image` and are re-exported here
# because `read_image` returns and raises them.
__all__ = [
    "IMAGE_SUFFIXES",
    "ImageReadWarning",
    "Reduce",
    "XrayImage",
    "find_images",
    "is_dicom",
    "is_dicom_file",
    "read_image",
]

#: A truncated JPEG is read when at most this share of its rows is missing (FracAtlas has files missing up
#: to 51%); beyond it there is too little radiograph left to judge, and the file is refused.
MAX_TRUNCATED_FRACTION = 0.6

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".dcm", ".dicom")

#: `read_image`'s `reduce`: the factor k itself, or a function of the file's (height, width) returning it.
Reduce = int | Callable[[int, int], int]

_JPEG_END_OF_IMAGE = b"\xff\xd9"


def is_dicom(head: bytes) -> bool:
    """True when the first bytes of a file carry the DICOM Part 10 preamble magic: bonefrac's one sniff.

    `pydicom.misc.is_dicom`'s test, on bytes already read: the reader sniffs before it knows it needs pydicom,
    and importing pydicom costs JPEG/PNG users half a second. `is_dicom_file` is the same test on a path.
    """
    return len(head) >= 132 and head[128:132] == b"DICM"


def read_image(path: str | Path, reduce: Reduce = 1) -> XrayImage:
    """Read a JPEG, PNG (8/16-bit) or DICOM file as an `XrayImage`.

    Args:
        path: the file.
        reduce: decode at 1/k scale where the format allows it: a JPEG is decoded by libjpeg in the DCT
            domain at 1/2, 1/4 or 1/8 (the largest of these not above k); other formats come out full
            size. `reduce` is k, or a function of the file's (height, width) as stored (before EXIF
            orientation) returning k, called only for a file that can be decoded reduced. The model's rule
            is `transforms.reduction_factor`. After a reduced read, `pixels` are smaller than the file,
            `meta["reduced_by"]` says by how much, and `meta["height"]`/`["width"]` keep the full size
            (what heatmaps and boxes refer to).

    Raises:
        ImageReadError: empty, unreadable, not an image, unsupported, or corrupt beyond recovery.
        ImageTooLargeError: more than `image.MAX_PIXELS` pixels (checked before decoding).
    """
    if not callable(reduce):
        _check_factor(reduce)
    path = Path(path)
    name = path.name
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except IsADirectoryError:
        raise ImageReadError(f"{name}: is a directory, not an image") from None
    except FileNotFoundError:
        raise ImageReadError(f"{name}: no such file") from None
    except OSError as e:
        raise ImageReadError(f"{name}: cannot open ({e.strerror or e})") from None
    if not head:
        raise ImageReadError(f"{name}: empty file")
    if is_dicom(head) or (path.suffix.lower() in (".dcm", ".dicom") and not _looks_like_raster(head)):
        from bonefrac.io.dicom import read_dicom  # lazy: pydicom is only imported for DICOM files

        pixels, meta = read_dicom(path)
    else:
        pixels, meta = _read_raster(path, reduce)
    if pixels.ndim != 2:
        raise ImageReadError(f"{name}: image of shape {pixels.shape} is not a greyscale radiograph")
    image = XrayImage(np.ascontiguousarray(pixels, dtype=np.float32), meta, str(path))
    # 8- and 16-bit rasters are finite by construction; DICOM rescaling and float images may not be.
    if (meta.get("format") == "dicom" or meta.get("bit_depth", 32) > 16) and not np.isfinite(image.pixels).all():
        raise ImageReadError(f"{name}: pixel values are not finite")
    if min(image.height, image.width) < 2:
        raise ImageReadError(f"{name}: image of shape ({image.height}, {image.width}) is too small to be a radiograph")
    if meta.get("reduced_by", 1) == 1:
        meta.update(height=image.height, width=image.width)
    return image


def _check_factor(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"reduce must be an integer >= 1 (or a function returning one), got {k!r}")
    return int(k)


def _looks_like_raster(head: bytes) -> bool:
    return head.startswith((b"\xff\xd8\xff", b"\x89PNG"))


def _read_raster(path: Path, reduce: Reduce = 1) -> tuple[np.ndarray, dict[str, Any]]:
    name = path.name
    try:
        im = Image.open(path)  # reads the header only
    except Image.DecompressionBombError:
        raise ImageTooLargeError(f"{name}: declared size is absurd (decompression bomb); refused") from None
    except UnidentifiedImageError:
        raise ImageReadError(f"{name}: not a recognised image (JPEG, PNG or DICOM)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageReadError(f"{name}: cannot be read as an image ({e})") from None
    with im:
        fmt = (im.format or "unknown").lower()
        check_size(im.width, im.height, name)
        meta: dict[str, Any] = {"format": fmt, "mode": im.mode}
        if getattr(im, "n_frames", 1) > 1:
            warn(meta, f"{name}: has {im.n_frames} frames; reading the first", stacklevel=3)
        full_w, full_h = im.size
        k = 1
        if fmt == "jpeg":  # only libjpeg decodes at a reduced scale
            k = _check_factor(reduce(full_h, full_w)) if callable(reduce) else reduce
        _configure_decoder(im, k)
        im = _load(im, path, meta, k)
        reduced_by = round(full_w / im.width)  # 1 unless decoded at a reduced scale
        swap = False
        try:
            swap = im.getexif().get(0x0112, 1) in (5, 6, 7, 8)  # these orientations turn the image by 90 degrees
            ImageOps.exif_transpose(im, in_place=True)  # (not in place, it copies even when there is nothing to do)
        except Exception:  # a broken EXIF block must not cost the image; orientation stays as stored
            meta["exif_orientation_error"] = True
        if reduced_by > 1:  # the full size, as displayed: what heatmaps and boxes refer to
            meta.update(reduced_by=reduced_by, height=full_w if swap else full_h, width=full_h if swap else full_w)
        pixels, bit_depth = _to_unit_grey(im, name)
    meta["bit_depth"] = bit_depth
    return pixels, meta


def _load(im: Image.Image, path: Path, meta: dict[str, Any], reduce: int = 1) -> Image.Image:
    """Decode pixels; a JPEG cut short is decoded as far as it goes, with a warning, unless too much of
    it is missing."""
    name = path.name
    try:
        im.load()
        return im
    except OSError as e:
        if "truncated" not in str(e).lower() or im.format != "JPEG":
            raise ImageReadError(f"{name}: corrupt image data ({e})") from None
    except (ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ImageReadError(f"{name}: corrupt image data ({e})") from None
    # Decode again with an End Of Image marker after the bytes that are there: libjpeg then finishes the
    # image (the blocks it never reached take the last decoded DC value: a flat grey). Pillow's switch for
    # this, ImageFile.LOAD_TRUNCATED_IMAGES, does the same (JpegImageFile.load_read) but is process-wide:
    # set while other threads decode, it made them accept any truncated file, however short, in silence.
    try:
        retry = Image.open(BytesIO(path.read_bytes() + _JPEG_END_OF_IMAGE))
        _configure_decoder(retry, reduce)
        retry.load()
    except Exception as e:
        raise ImageReadError(f"{name}: truncated image could not be recovered ({e})") from None
    missing = _missing_rows_fraction(retry)
    progressive = bool(retry.info.get("progressive"))
    if missing > MAX_TRUNCATED_FRACTION:
        at_least = "at least " if progressive else ""
        raise ImageReadError(f"{name}: JPEG file is truncated; {at_least}{missing:.0%} of the image is missing")
    meta["truncated"] = True
    if progressive and missing == 0:
        # A progressive JPEG sends the whole image coarse first and refines it scan by scan: cut short, it
        # lacks detail everywhere rather than rows at the bottom, and how much is lost cannot be measured.
        meta["truncated_missing_fraction"] = None
        message = "progressive JPEG, share missing unknown (detail may be lost everywhere)"
    else:
        meta["truncated_missing_fraction"] = round(missing, 3)
        message = f"{'at least ' if progressive else ''}{missing:.0%} of rows missing (filled grey)"
    warn(meta, f"{name}: JPEG file is truncated; {message}", stacklevel=4)
    return retry


def _configure_decoder(im: Image.Image, reduce: int = 1) -> None:
    """Set libjpeg up before loading: decode at 1/`reduce` scale (DCT domain), and decode a colour
    (YCbCr) JPEG straight to its luma channel.

    Luma is the ITU-R 601 grey that converting RGB to L computes, so radiographs stored as RGB give the
    same pixels (bit-identical on all 2,707 RGB FracAtlas files) without the chroma upsampling and
    colour conversion (about half the decoding time: bench/README.md). In a truly coloured JPEG, saturated
    colour (an annotation) can differ, since the RGB route clips it: measured up to 28 levels on 1% of pixels."""
    if im.format != "JPEG" or (reduce == 1 and im.mode != "RGB"):
        return
    size = (max(1, im.width // reduce), max(1, im.height // reduce))  # Pillow picks the scale from this
    im.draft("L" if im.mode == "RGB" else im.mode, size)


def _missing_rows_fraction(im: Image.Image) -> float:
    """Share of rows at the bottom that a truncated JPEG never reached: libjpeg leaves them one flat grey,
    identical to the last row. (A progressive JPEG cut after its first scan has no such rows: 0 here.)"""
    arr = np.asarray(im.convert("L"))
    flat = (arr == arr[-1:, :1]).all(axis=1)  # rows equal, everywhere, to the bottom-left pixel
    if not flat[-1]:
        return 0.0
    decoded = np.nonzero(~flat)[0]
    return 1.0 - (decoded[-1] + 1) / arr.shape[0] if len(decoded) else 1.0


def _to_unit_grey(im: Image.Image, name: str) -> tuple[np.ndarray, int]:
    """Map any Pillow mode onto greyscale float32 in [0, 1] without losing 16-bit precision."""
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        arr = np.asarray(im).astype(np.float32)  # (asarray(im, dtype=...) converts pixel by pixel: far slower)
        bits = _png_significant_bits(im) or 16
        return arr / float(2**bits - 1), bits
    if mode == "I":  # 32-bit signed; Pillow also uses it for some 16-bit PNGs
        arr = np.asarray(im).astype(np.float64)
        bits = _png_significant_bits(im) or (16 if arr.min() >= 0 and arr.max() <= 65535 else 32)
        if bits == 32:
            lo, hi = float(arr.min()), float(arr.max())
            return ((arr - lo) / max(hi - lo, 1.0)).astype(np.float32), 32
        return (np.clip(arr, 0, 2**bits - 1) / float(2**bits - 1)).astype(np.float32), bits
    if mode == "F":
        arr = np.asarray(im, dtype=np.float32)
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        return (arr - lo) / max(hi - lo, 1e-12), 32
    if mode == "1":
        return np.asarray(im, dtype=np.float32), 1
    if mode in ("LA", "PA", "RGBA", "P", "CMYK", "YCbCr", "LAB", "HSV", "RGBX", "RGBa", "La"):
        im = im.convert("RGB") if mode not in ("LA", "La") else im.convert("L")
    if im.mode == "RGB":
        im = im.convert("L")  # ITU-R 601 luma; X-ray content in RGB files is grey anyway
    if im.mode != "L":
        raise ImageReadError(f"{name}: unsupported pixel mode {mode}")
    # Not asarray(im, dtype=float32): numpy converts a Pillow image element by element (bench/README.md).
    # The result is a new array: no reference to the file or a memory map of it is kept.
    return np.divide(np.asarray(im), np.float32(255), dtype=np.float32), 8


def _png_significant_bits(im: Image.Image) -> int | None:
    """16-bit PNGs written by modalities often hold 10-14 significant bits, declared in the sBIT chunk."""
    sbit = im.info.get("sbit") if hasattr(im, "info") else None
    if isinstance(sbit, tuple):
        sbit = sbit[0] if sbit else None
    if isinstance(sbit, int) and 1 <= sbit <= 16:
        return sbit
    return None


def find_images(paths: list[str | Path]) -> list[Path]:
    """Expand files and folders (recursively) into image files, sorted for a stable order.

    Folders contribute .jpg/.jpeg/.png/.dcm files and extension-less files that carry the DICOM magic.
    Files named explicitly are always kept, whatever their extension, so they get a per-file error.
    """
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                if not f.is_file() or f.name.startswith("."):
                    continue
                if f.suffix.lower() in IMAGE_SUFFIXES or (f.suffix == "" and is_dicom_file(f)):
                    out.append(f)
        else:
            out.append(p)
    return out


def is_dicom_file(path: str | Path) -> bool:
    """`is_dicom` on a file's first bytes; False for a file that cannot be opened."""
    try:
        with open(path, "rb") as f:
            return is_dicom(f.read(132))
    except OSError:
        return False
