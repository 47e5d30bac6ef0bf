"""The one preprocessing path (train, evaluate, predict, serve, export), torch-free.

file -> read_image(reduce_for=size) -> `letterbox` (per-image min-max, aspect-preserving resize, zero padding
to a square; large images box-reduced first, JPEGs already while decoding)
-> `normalize` (mean/std from the ModelSpec) -> model. `Geometry` records the resize and padding so a
heatmap on the model grid maps back onto the image as read.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import lru_cache
from typing import TypeVar

import numpy as np
from PIL import Image
from threadpoolctl import ThreadpoolController

from .io import REDUCE_FROM, XrayImage, reduction_factor
from .spec import ModelSpec

T = TypeVar("T")  # an np.ndarray or a torch.Tensor: `normalize` is plain arithmetic on either


@dataclass(frozen=True)
class Geometry:
    """How an (height x width) image was placed in the (size x size) model input."""

    height: int
    width: int
    size: int
    scale: float
    pad_x: int
    pad_y: int

    def crop_content(self, upsampled: np.ndarray) -> np.ndarray:
        """The image's part of a (size, size) map (see `upsample_maps`), without the letterbox padding."""
        nh, nw = _resized_shape(self.height, self.width, self.size)
        return upsampled[self.pad_y : self.pad_y + nh, self.pad_x : self.pad_x + nw]

    def content_to_image(self, content: np.ndarray) -> np.ndarray:
        """A content map (from `crop_content`) resized onto the original (height, width) image, bilinear
        (antialiased when the image is smaller than the model input)."""
        im = float_image(content)
        return np.asarray(im.resize((self.width, self.height), Image.BILINEAR))

    def content_box_to_image(self, box: list[float]) -> list[float]:
        """[x0, y0, x1, y1, ...] in model-content pixels -> the same box in original image pixels."""
        nh, nw = _resized_shape(self.height, self.width, self.size)
        sx, sy = self.width / nw, self.height / nh
        x0, y0, x1, y1 = box[:4]
        return [
            min(x0 * sx, self.width),
            min(y0 * sy, self.height),
            min(x1 * sx, self.width),
            min(y1 * sy, self.height),
            *box[4:],
        ]


def upsample_maps(maps: np.ndarray, size: int) -> np.ndarray:
    """(N, h, w) maps on the feature grid -> (N, size, size), bicubic, in one call for a whole batch (per
    image, the call overhead costs more than the model).

    Bicubic, not bilinear: a bilinear surface peaks exactly on a feature-grid point (every 32 px), a bicubic
    one between points, towards the warmer neighbours. On validation fractures this moved the peak into the
    ground-truth box a quarter more often (pointing game 0.25 -> 0.33).
    """
    w = _bicubic_matrix(maps.shape[-1], size)
    h = w if maps.shape[-2] == maps.shape[-1] else _bicubic_matrix(maps.shape[-2], size)
    # OpenBLAS would split these small products over threads that then spin-wait for more work, taking
    # the cores from onnxruntime: measured ~7 ms of CPU per image in `bonefrac predict`. One thread is
    # plenty; the lock keeps concurrent callers from restoring each other's limit wrongly.
    with _BLAS_LOCK, _blas().limit(limits=1, user_api="blas"):
        return h @ np.asarray(maps, dtype=np.float32) @ w.T


_BLAS_LOCK = threading.Lock()


@lru_cache(maxsize=1)
def _blas() -> ThreadpoolController:
    return ThreadpoolController()


@lru_cache(maxsize=8)
def _bicubic_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of 1-D bicubic resampling, exactly as torch's `interpolate(mode="bicubic",
    align_corners=False)` (Keys kernel, a = -0.75, edge pixels repeated). Upsampling is separable, so a
    batch of maps is two small matrix products: far cheaper than a general resampler, and torch-free."""
    a = -0.75
    x = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    x0 = np.floor(x)
    t = x - x0
    weights = [
        ((a * (t + 1) - 5 * a) * (t + 1) + 8 * a) * (t + 1) - 4 * a,
        ((a + 2) * t - (a + 3)) * t * t + 1,
        ((a + 2) * (1 - t) - (a + 3)) * (1 - t) * (1 - t) + 1,
        ((a * (2 - t) - 5 * a) * (2 - t) + 8 * a) * (2 - t) - 4 * a,
    ]
    m = np.zeros((n_out, n_in))
    for k, wk in enumerate(weights):
        np.add.at(m, (np.arange(n_out), np.clip(x0.astype(int) + k - 1, 0, n_in - 1)), wk)
    return m.astype(np.float32)


def _resized_shape(height: int, width: int, size: int) -> tuple[int, int]:
    scale = size / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def letterbox_geometry(height: int, width: int, size: int) -> Geometry:
    """Where an (height x width) image lands in the (size x size) model input."""
    nh, nw = _resized_shape(height, width, size)
    return Geometry(height, width, size, nh / height, (size - nw) // 2, (size - nh) // 2)


def box_mask(boxes: list[list[float]], geometry: Geometry) -> np.ndarray:
    """(size, size) float32 mask, 1 inside any [x0, y0, x1, y1] box given in image pixels."""
    g = geometry
    nh, nw = _resized_shape(g.height, g.width, g.size)
    sx, sy = nw / g.width, nh / g.height
    mask = np.zeros((g.size, g.size), dtype=np.float32)
    for x0, y0, x1, y1 in (b[:4] for b in boxes):
        c0, c1 = int(np.floor(x0 * sx + g.pad_x)), int(np.ceil(x1 * sx + g.pad_x))
        r0, r1 = int(np.floor(y0 * sy + g.pad_y)), int(np.ceil(y1 * sy + g.pad_y))
        mask[max(r0, 0) : min(r1, g.size), max(c0, 0) : min(c1, g.size)] = 1.0
    return mask


def letterbox(pixels: np.ndarray, size: int, reduce_from: int = REDUCE_FROM) -> tuple[np.ndarray, Geometry]:
    """Stretch to the full [0, 1] range, resize the long side to `size` (antialiased), pad to a square;
    values are multiples of 1/255 (the 8-bit grid of the training cache).

    Per-image min-max makes the model input the same for any re-encoding of one radiograph (8/16-bit,
    DICOM windows) and for any linear intensity scaling. A large image (`reduce_from` x `size` or more) is
    first box-reduced by `io.reduction_factor` (cheap, and the resize after it then costs little).
    """
    return _letterbox(float_image(pixels), size, None, 1, reduce_from)


def letterbox_image(image: XrayImage, size: int, reduce_from: int = REDUCE_FROM) -> tuple[np.ndarray, Geometry]:
    """`letterbox` for an `XrayImage`, whether read whole or reduced (`read_image(reduce_for=size)`), from
    its 8-bit Pillow image when it still has one (the same result, without a full-size float array)."""
    reduced_by = int(image.meta.get("reduced_by", 1))
    full_shape = (int(image.meta["height"]), int(image.meta["width"])) if reduced_by > 1 else None
    grey8 = image.grey8
    source = grey8.convert("F") if grey8 is not None else float_image(image.pixels)  # 0-255 or 0-1: min-max
    return _letterbox(source, size, full_shape, reduced_by, reduce_from)


def _letterbox(
    im: Image.Image, size: int, full_shape: tuple[int, int] | None, reduced_by: int, reduce_from: int
) -> tuple[np.ndarray, Geometry]:
    """The core of `letterbox` on a Pillow "F" image. An image decoded already reduced (by `reduced_by`,
    from one of `full_shape`) skips the box reduction; the geometry always refers to the full image."""
    h, w = full_shape or (im.height, im.width)
    extra = max(1, reduction_factor(h, w, size, reduce_from) // max(1, reduced_by))
    if extra > 1:
        im = im.reduce(extra)
    lo, hi = im.getextrema()
    g = letterbox_geometry(h, w, size)
    nh, nw = _resized_shape(h, w, size)
    out = np.zeros((size, size), dtype=np.float32)
    if hi > lo:
        # Resizing is linear (its weights sum to 1), so the min-max scaling is applied after it, to the
        # small image: the same values up to float rounding, without full-resolution temporaries.
        resized = np.asarray(im.resize((nw, nh), Image.BILINEAR))
        unit = np.clip((resized - lo) / (hi - lo), 0.0, 1.0)
        # On the 8-bit grid that the training decode cache stores, so that predict feeds a model exactly
        # the inputs it was trained, validated and given its thresholds on. (Unrounded inputs moved the
        # bundled model's probabilities by 0.008 in the median and up to 0.045: enough to move sensitivity
        # at a threshold by several points.)
        out[g.pad_y : g.pad_y + nh, g.pad_x : g.pad_x + nw] = np.round(unit * 255) / 255
    return out, g


def float_image(a: np.ndarray) -> Image.Image:
    """A float32 array as a Pillow "F" image (a copy: Pillow maps only 8/16-bit and RGBA buffers)."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    return Image.frombuffer("F", (a.shape[1], a.shape[0]), a, "raw", "F", 0, 1)


def normalize(x: T, spec: ModelSpec) -> T:
    """[0, 1] intensities -> model input. Works on (1, H, W) and (N, 1, H, W), numpy or torch."""
    return (x - spec.mean) / spec.std


def preprocess(image: XrayImage, spec: ModelSpec) -> tuple[np.ndarray, Geometry]:
    """An `XrayImage` -> normalised float32 array (1, size, size) plus the geometry to undo."""
    boxed, geometry = letterbox_image(image, spec.image_size, spec.reduce_from)
    return normalize(boxed[None], spec), geometry
