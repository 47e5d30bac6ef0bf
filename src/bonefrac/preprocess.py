"""The one preprocessing path (train, evaluate, predict, serve, export), torch-free.

file -> `read_for_model` -> `letterbox` (per-image min-max, aspect-preserving resize, zero padding
to a square; large images box-reduced first, JPEGs already while decoding)
-> `normalize` (mean/std from the ModelSpec) -> model. `Geometry` records the resize and padding so a
heatmap on the model grid maps back onto the image as read.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image

from bonefrac.io.image import XrayImage
from bonefrac.io.read import read_image
from bonefrac.spec import REDUCE_FROM, ModelSpec

T = TypeVar("T")  # an np.ndarray or a torch.Tensor: `normalize` is plain arithmetic on either


@dataclass(frozen=True)
class Geometry:
    """How an (height x width) image was placed in the (size x size) model input: resized to `content` pixels
    (long side `size`), then padded by `pad_x`, `pad_y`. Points and boxes cross between image pixels and model
    pixels only through `to_model` and `to_image`."""

    height: int
    width: int
    size: int
    scale: float
    pad_x: int
    pad_y: int

    @property
    def content(self) -> tuple[int, int]:
        """(height, width) of the image inside the model input, before padding."""
        return resized_shape(self.height, self.width, self.size)

    def to_model(self, coords: np.ndarray | list) -> np.ndarray:
        """x, y pairs (points, or [x0, y0, x1, y1] boxes: any last axis of even length) from image pixels to
        model-input pixels. x and y have their own scale: the content's sides are rounded separately."""
        nh, nw = self.content
        xy = np.asarray(coords, np.float64)
        pairs = xy.reshape(*xy.shape[:-1], -1, 2)
        out = pairs * [nw / self.width, nh / self.height] + [self.pad_x, self.pad_y]
        return out.reshape(xy.shape)

    def to_image(self, coords: np.ndarray | list, clip: bool = True) -> np.ndarray:
        """The inverse of `to_model`, clipped to the image unless `clip` is False."""
        nh, nw = self.content
        xy = np.asarray(coords, np.float64)
        pairs = (xy.reshape(*xy.shape[:-1], -1, 2) - [self.pad_x, self.pad_y]) * [self.width / nw, self.height / nh]
        if clip:
            pairs = np.clip(pairs, 0, [self.width, self.height])
        return pairs.reshape(xy.shape)


def resized_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """(height, width) scaled so that the long side is `size`, aspect kept."""
    scale = size / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def letterbox_geometry(height: int, width: int, size: int) -> Geometry:
    """Where an (height x width) image lands in the (size x size) model input."""
    nh, nw = resized_shape(height, width, size)
    return Geometry(height, width, size, nh / height, (size - nw) // 2, (size - nh) // 2)


def box_mask(boxes: list[list[float]], geometry: Geometry) -> np.ndarray:
    """(size, size) float32 mask, 1 inside any [x0, y0, x1, y1] box given in image pixels."""
    mask = np.zeros((geometry.size, geometry.size), dtype=np.float32)
    for x0, y0, x1, y1 in (geometry.to_model(b[:4]) for b in boxes):
        c0, c1, r0, r1 = int(np.floor(x0)), int(np.ceil(x1)), int(np.floor(y0)), int(np.ceil(y1))
        mask[max(r0, 0) : min(r1, geometry.size), max(c0, 0) : min(c1, geometry.size)] = 1.0
    return mask


def reduction_factor(height: int, width: int, size: int, reduce_from: int = REDUCE_FROM) -> int:
    """1, 2, 4 or 8: the integer factor by which an image is box-reduced before it is resized to a `size`
    model input. Images whose long side is at least `reduce_from` x `size` are reduced, never below
    2x `size`, so the final antialiased resize still sees every detail it keeps.

    The point is speed: a JPEG is then decoded by libjpeg at 1/2, 1/4 or 1/8 scale (`read_for_model`;
    timings: bench/bench_read.py), other images are reduced in memory (`letterbox`).
    """
    long_side = max(height, width)
    if long_side < reduce_from * size:
        return 1
    for k in (8, 4, 2):
        if long_side >= 2 * size * k:
            return k
    return 1


def letterbox(pixels: np.ndarray, size: int, reduce_from: int = REDUCE_FROM) -> tuple[np.ndarray, Geometry]:
    """Stretch to the full [0, 1] range, resize the long side to `size` (antialiased), pad to a square;
    values are multiples of 1/255 (the 8-bit grid of the training cache).

    Per-image min-max makes the model input the same for any re-encoding of one radiograph (8/16-bit,
    DICOM windows) and for any linear intensity scaling. A large image (`reduce_from` x `size` or more) is
    first box-reduced by `reduction_factor` (cheap, and the resize after it then costs little).
    """
    return _letterbox(_on_8bit_scale(pixels), size, None, 1, reduce_from)


def letterbox_image(image: XrayImage, size: int, reduce_from: int = REDUCE_FROM) -> tuple[np.ndarray, Geometry]:
    """`letterbox` for an `XrayImage`, whether read whole or at reduced scale (`read_image(reduce=...)`)."""
    reduced_by = int(image.meta.get("reduced_by", 1))
    full_shape = (int(image.meta["height"]), int(image.meta["width"])) if reduced_by > 1 else None
    return _letterbox(_on_8bit_scale(image.pixels), size, full_shape, reduced_by, reduce_from)


def _on_8bit_scale(pixels: np.ndarray) -> Image.Image:
    """[0, 1] pixels as a Pillow "F" image of 0-255 values. An 8-bit file's values k / 255 become exactly
    the integers k again (float32 k / 255 * 255 == k for every k), so its model input does not depend on how
    k / 255 rounds: it is the input made from the decoded 8-bit image, which the bundled model's training
    cache holds. The min-max scaling in `_letterbox` makes the scale otherwise irrelevant."""
    return float_image(np.multiply(pixels, np.float32(255), dtype=np.float32))


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
    nh, nw = resized_shape(h, w, size)
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


def read_for_model(path: str | Path, spec: ModelSpec) -> XrayImage:
    """Read a file as the model's preprocessing wants it: a large JPEG decoded already reduced
    (`reduction_factor` with the model's input size and `reduce_from`)."""
    return read_image(path, partial(reduction_factor, size=spec.image_size, reduce_from=spec.reduce_from))


def normalize(x: T, spec: ModelSpec) -> T:
    """[0, 1] intensities -> model input. Works on (1, H, W) and (N, 1, H, W), numpy or torch."""
    return (x - spec.mean) / spec.std


def preprocess(image: XrayImage, spec: ModelSpec) -> tuple[np.ndarray, Geometry]:
    """An `XrayImage` -> normalised float32 array (1, size, size) plus the geometry to undo."""
    boxed, geometry = letterbox_image(image, spec.image_size, spec.reduce_from)
    return normalize(boxed[None], spec), geometry
