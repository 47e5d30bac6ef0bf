"""Read any supported X-ray file into greyscale float32 pixels in [0, 1].

One entry point, `read_image(path)`. The format is sniffed from the bytes, never trusted from the
extension: DICOM by the `DICM` magic at offset 128, everything else through Pillow. What comes out is
the image on its own pixel grid (EXIF orientation applied), bright bone on a dark background, plus
metadata that never contains patient identifiers.

Contrast is not stretched here: the reader maps each format's value range onto [0, 1] faithfully
(bit depth, DICOM modality and VOI LUTs) and `transforms.preprocess` does the per-image normalisation,
so a re-encoding of the same radiograph gives the same model input.
"""

from __future__ import annotations

import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from .errors import ImageReadError, ImageTooLargeError

#: A truncated JPEG is read when at most this share of its rows is missing (FracAtlas has files missing up
#: to 51%); beyond it there is too little radiograph left to judge, and the file is refused.
MAX_TRUNCATED_FRACTION = 0.6

#: Largest image accepted, in pixels (width x height of one frame). Checked from the header, before any
#: decoding, so a decompression bomb costs nothing. 80 MP is well above any plain radiograph
#: (a 43x43 cm detector at 100 um is 18 MP) and far below what would exhaust memory.
MAX_PIXELS = 80_000_000

DICOM_PHOTOMETRICS = ("MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "YBR_FULL_422")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".dcm", ".dicom")

# Pillow's truncated-image switch is process-global; flipping it only for the retry keeps strict
# decoding (and so the warning) for every other file. The lock keeps two retries from racing.
_TRUNCATED_LOCK = threading.Lock()


class ImageReadWarning(UserWarning):
    """A file was read, but something about it deserves a look (truncated JPEG, extra frames)."""


class XrayImage:
    """A radiograph as read from disk.

    Attributes:
        pixels: float32 array (H, W) in [0, 1], higher = brighter (bone), orientation as displayed.
        meta: format, width, height, bit_depth, and for DICOM photometric/body_part/frames.
            Never patient identifiers.
        path: where it came from, if it came from a file.

    An 8-bit file is kept as its 8-bit Pillow image until `pixels` is first used: the model's
    preprocessing works from that directly (`grey8`), which spares a float copy and two passes over
    every radiograph (measured +2.5% images/s for `bonefrac predict`). Once `pixels` has been handed
    out, the array is the image (it may be changed in place) and `grey8` is None.
    """

    def __init__(
        self,
        pixels: np.ndarray | None = None,
        meta: dict[str, Any] | None = None,
        path: str | None = None,
        *,
        grey8: Image.Image | None = None,
    ) -> None:
        if pixels is None and (grey8 is None or grey8.mode != "L"):
            raise ValueError("XrayImage needs pixels (or an 8-bit greyscale Pillow image)")
        self._pixels, self._grey8 = pixels, grey8 if pixels is None else None
        self.meta = meta if meta is not None else {}
        self.path = path

    @property
    def pixels(self) -> np.ndarray:
        if self._pixels is None:
            # The same float32 values as asarray(im, dtype=float32) / 255, an order of magnitude faster
            # (5.4 -> 0.36 ms for 1024 x 819): numpy's dtype conversion of a Pillow image is per element.
            self._pixels = np.divide(np.asarray(self._grey8), np.float32(255), dtype=np.float32)
        self._grey8 = None
        return self._pixels

    @pixels.setter
    def pixels(self, value: np.ndarray) -> None:
        self._pixels, self._grey8 = value, None

    @property
    def grey8(self) -> Image.Image | None:
        """The 8-bit Pillow image the pixels come from, while `pixels` has not been used."""
        return self._grey8

    @property
    def height(self) -> int:
        return int(self._pixels.shape[0]) if self._pixels is not None else self._grey8.height  # type: ignore[union-attr]

    @property
    def width(self) -> int:
        return int(self._pixels.shape[1]) if self._pixels is not None else self._grey8.width  # type: ignore[union-attr]

    def __repr__(self) -> str:
        return f"XrayImage({self.height}x{self.width}, path={self.path!r}, meta={self.meta!r})"


def warn(meta: dict[str, Any], message: str, stacklevel: int = 2) -> None:
    """Warn library users, and keep the message in `meta["warnings"]`: batch prediction reads files in
    threads, where catching `warnings` is not thread-safe, and reports these per file instead."""
    meta.setdefault("warnings", []).append(message)
    warnings.warn(message, ImageReadWarning, stacklevel=stacklevel + 1)


def is_dicom(head: bytes) -> bool:
    """True when the first bytes of a file carry the DICOM Part 10 preamble magic."""
    return len(head) >= 132 and head[128:132] == b"DICM"


#: Images whose long side is at least this many times the model input are box-reduced before the resize
#: (see `reduction_factor`); models record the value they were trained with (`ModelSpec.reduce_from`).
REDUCE_FROM = 4
#: The value for checkpoints from before `ModelSpec.reduce_from` existed: only very large images reduced.
LEGACY_REDUCE_FROM = 8


def reduction_factor(height: int, width: int, size: int, reduce_from: int = REDUCE_FROM) -> int:
    """1, 2, 4 or 8: the integer factor by which an image is box-reduced before it is resized to a `size`
    model input. Images whose long side is at least `reduce_from` x `size` are reduced, never below
    2x `size`, so the final antialiased resize still sees every detail it keeps.

    The point is speed: a JPEG is then decoded by libjpeg at 1/2, 1/4 or 1/8 scale
    (`read_image(reduce_for=...)`; 2304 x 2880: ~50 -> ~10 ms; a 1024 px FracAtlas file, read and
    preprocessed: 3.7 -> 2.2 ms, bench/bench_read.py), other images are reduced in memory.
    """
    long_side = max(height, width)
    if long_side < reduce_from * size:
        return 1
    for k in (8, 4, 2):
        if long_side >= 2 * size * k:
            return k
    return 1


def read_image(path: str | Path, reduce_for: int | None = None, reduce_from: int = REDUCE_FROM) -> XrayImage:
    """Read a JPEG, PNG (8/16-bit) or DICOM file as an `XrayImage`.

    With `reduce_for` (a model input size), a JPEG large enough for `reduction_factor` (with `reduce_from`,
    the model's `ModelSpec.reduce_from`) is decoded at that reduced scale, in the DCT domain: `pixels`
    are then smaller than the file, `meta["reduced_by"]` says by how much, and `meta["height"]`/`["width"]`
    keep the full size (what heatmaps and boxes refer to). This is how bonefrac reads files for the model;
    without it, the full image is read.

    Raises:
        ImageReadError: empty, unreadable, not an image, unsupported, or corrupt beyond recovery.
        ImageTooLargeError: more than `MAX_PIXELS` pixels (checked before decoding).
    """
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
        from .dicom import read_dicom  # lazy: pydicom is only imported for DICOM files

        pixels, meta = read_dicom(path)
    else:
        pixels, meta = _read_raster(path, reduce_for, reduce_from)
    if isinstance(pixels, Image.Image):
        image = XrayImage(meta=meta, path=str(path), grey8=pixels)
    else:
        image = XrayImage(np.ascontiguousarray(pixels, dtype=np.float32), meta, str(path))
        if pixels.ndim != 2:
            raise ImageReadError(f"{name}: image of shape {pixels.shape} is not a greyscale radiograph")
        # 8- and 16-bit rasters are finite by construction; DICOM rescaling and float images may not be.
        if (meta.get("format") == "dicom" or meta.get("bit_depth", 32) > 16) and not np.isfinite(pixels).all():
            raise ImageReadError(f"{name}: pixel values are not finite")
    if min(image.height, image.width) < 2:
        raise ImageReadError(f"{name}: image of shape ({image.height}, {image.width}) is too small to be a radiograph")
    if meta.get("reduced_by", 1) == 1:
        meta.update(height=image.height, width=image.width)
    return image


def check_size(width: int, height: int, name: str) -> None:
    """Refuse absurd declared sizes before any pixel is decoded."""
    if width <= 0 or height <= 0:
        raise ImageReadError(f"{name}: declares an empty image ({width}x{height})")
    if width * height > MAX_PIXELS:
        raise ImageTooLargeError(
            f"{name}: {width}x{height} pixels exceeds the limit of {MAX_PIXELS:,} "
            "(bonefrac.io.MAX_PIXELS); refused before decoding"
        )


def _looks_like_raster(head: bytes) -> bool:
    return head.startswith((b"\xff\xd8\xff", b"\x89PNG"))


def _read_raster(
    path: Path, reduce_for: int | None = None, reduce_from: int = REDUCE_FROM
) -> tuple[np.ndarray | Image.Image, dict[str, Any]]:
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
        k = reduction_factor(full_h, full_w, reduce_for, reduce_from) if reduce_for and fmt == "jpeg" else 1
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
    """Decode pixels; a JPEG cut short by a few bytes is decoded as far as it goes, with a warning."""
    name = path.name
    try:
        im.load()
        return im
    except OSError as e:
        if "truncated" not in str(e).lower() or im.format != "JPEG":
            raise ImageReadError(f"{name}: corrupt image data ({e})") from None
    except (ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ImageReadError(f"{name}: corrupt image data ({e})") from None
    with _TRUNCATED_LOCK:
        ImageFile.LOAD_TRUNCATED_IMAGES = True
        try:
            retry = Image.open(path)
            _configure_decoder(retry, reduce)
            retry.load()
        except Exception as e:
            raise ImageReadError(f"{name}: truncated image could not be recovered ({e})") from None
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = False
    missing = _missing_rows_fraction(retry)
    if missing > MAX_TRUNCATED_FRACTION:
        raise ImageReadError(f"{name}: JPEG file is truncated; {missing:.0%} of the image is missing")
    meta["truncated"] = True
    meta["truncated_missing_fraction"] = round(missing, 3)
    warn(meta, f"{name}: JPEG file is truncated; {missing:.0%} of rows missing (filled grey)", stacklevel=4)
    return retry


def _configure_decoder(im: Image.Image, reduce: int = 1) -> None:
    """Set libjpeg up before loading: decode at 1/`reduce` scale (DCT domain), and decode a colour
    (YCbCr) JPEG straight to its luma channel.

    Luma is the ITU-R 601 grey that converting RGB to L computes, so radiographs stored as RGB give the
    same pixels (bit-identical on all 2,707 RGB FracAtlas files) without the chroma upsampling and
    colour conversion: 0.85 -> 0.39 ms per 373 x 454 file. In a truly coloured JPEG, saturated colour
    (an annotation) can differ, since the RGB route clips it: measured up to 28 levels on 1% of pixels."""
    if im.format != "JPEG" or (reduce == 1 and im.mode != "RGB"):
        return
    size = (max(1, im.width // reduce), max(1, im.height // reduce))  # Pillow picks the scale from this
    im.draft("L" if im.mode == "RGB" else im.mode, size)


def _missing_rows_fraction(im: Image.Image) -> float:
    """Share of rows at the bottom that a truncated baseline JPEG never reached: Pillow leaves them one
    flat grey, identical to the last row. (A progressive JPEG degrades everywhere instead: 0 here.)"""
    arr = np.asarray(im.convert("L"))
    flat = (arr == arr[-1:, :1]).all(axis=1)  # rows equal, everywhere, to the bottom-left pixel
    if not flat[-1]:
        return 0.0
    decoded = np.nonzero(~flat)[0]
    return 1.0 - (decoded[-1] + 1) / arr.shape[0] if len(decoded) else 1.0


def _to_unit_grey(im: Image.Image, name: str) -> tuple[np.ndarray | Image.Image, int]:
    """Map any Pillow mode onto greyscale float32 in [0, 1] without losing 16-bit precision; 8-bit
    greyscale stays an 8-bit Pillow image (see `XrayImage`)."""
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        arr = np.asarray(im).astype(np.float32)  # asarray(im, dtype=...) converts pixel by pixel: 15x slower
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
    # The decoded image itself: leaving `with Image.open(...)` closes only the file, not the pixels (copying
    # them cost 0.12 ms per FracAtlas file). A memory-mapped raster is copied, so no file stays mapped.
    return (im.copy() if getattr(im, "map", None) else im), 8


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
                if f.suffix.lower() in IMAGE_SUFFIXES or (f.suffix == "" and _has_dicom_magic(f)):
                    out.append(f)
        else:
            out.append(p)
    return out


def _has_dicom_magic(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return is_dicom(f.read(132))
    except OSError:
        return False
