"""Overlay pictures: the radiograph, the heatmap in colour where the model looks, the boxes, and the verdict.

The one renderer, used by `bonefrac predict --overlay-dir`, the web server and the DICOM outputs. Everything
is drawn at display resolution (long side at most `postprocess.DISPLAY_SIDE`): the radiograph is shrunk
before any colour work, so an 8000 x 8000 upload costs a display-sized picture, not a full-size one.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .io import XrayImage, read_image
from .postprocess import DISPLAY_SIDE, Prediction, display_shape
from .transforms import float_image, reduction_factor

PNG_COMPRESS_LEVEL = 1  # zlib's default level 6 costs far more time for a slightly smaller file (bench/README.md)


def read_for_display(path: str | Path) -> XrayImage:
    """Read a file for an overlay: a large JPEG decoded at a reduced scale that still covers the display
    size (other formats are read whole; `display_grey` shrinks them)."""
    # reduction_factor(h, w, side/2, reduce_from=2): reduce by k only while the long side stays >= side.
    return read_image(path, partial(reduction_factor, size=DISPLAY_SIDE // 2, reduce_from=2))


def colormap(heat: np.ndarray) -> np.ndarray:
    """(H, W) in [0, 1] -> (H, W, 3) uint8, the heatmap colours shared by overlays and the web page."""
    from matplotlib import colormaps

    return (colormaps["inferno"](heat)[..., :3] * 255).astype(np.uint8)


def display_grey(image: XrayImage, shape: tuple[int, int]) -> np.ndarray:
    """The radiograph as 8-bit grey (H, W) at `shape` (height, width), antialiased when shrunk."""
    im = float_image(np.clip(image.pixels, 0.0, 1.0))
    if (im.height, im.width) != shape:
        im = im.resize(shape[::-1], Image.BILINEAR, reducing_gap=2.0)
    return np.round(np.asarray(im) * 255).astype(np.uint8)


def heat_at(heatmap: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A heatmap (any resolution, covering the whole image) resized to `shape`, clipped to [0, 1]."""
    if heatmap.shape != shape:
        heatmap = np.asarray(float_image(heatmap).resize(shape[::-1], Image.BILINEAR))
    return np.clip(heatmap, 0.0, 1.0)


def heatmap_rgba(heatmap: np.ndarray, side: int) -> Image.Image:
    """The heatmap alone as RGBA (alpha = heat), long side `side`: for the web page to layer with CSS."""
    h = heat_at(heatmap, display_shape(*heatmap.shape, side=side))
    return Image.fromarray(np.dstack([colormap(h), (h * 255).astype(np.uint8)]))


def render_overlay(image: XrayImage, pred: Prediction, opacity: float = 0.45) -> Image.Image:
    """An RGB picture at display resolution: heatmap blended over the radiograph (stronger where heat is
    higher), the boxes, and a caption with the verdict. `image` may be read whole or reduced."""
    shape = display_shape(pred.height, pred.width)
    base = np.repeat(display_grey(image, shape)[..., None], 3, axis=2).astype(np.float32)
    if pred.heatmap is not None:
        heat = heat_at(pred.heatmap, shape)
        alpha = (opacity * heat)[..., None]  # cold regions stay the plain radiograph
        base = base * (1 - alpha) + colormap(heat).astype(np.float32) * alpha
    im = Image.fromarray(base.astype(np.uint8), "RGB")
    scale = shape[1] / pred.width
    draw = ImageDraw.Draw(im)
    line = max(2, round(max(im.size) / 300))
    for x0, y0, x1, y1, score in pred.boxes:
        draw.rectangle([x0 * scale, y0 * scale, x1 * scale, y1 * scale], outline=(0, 255, 128), width=line)
        draw.text((x0 * scale + line, y0 * scale + line), f"{score:.2f}", fill=(0, 255, 128), font=_font(im, 0.025))
    verdict = "FRACTURE" if pred.fractured else "no fracture"
    caption = f"{verdict}  p={pred.probability:.3f}  (threshold {pred.threshold:.3f}, {pred.operating_point})"
    font = _font(im, 0.032)
    box = draw.textbbox((0, 0), caption, font=font)
    pad = line * 2
    draw.rectangle([0, 0, box[2] + 2 * pad, box[3] + 2 * pad], fill=(0, 0, 0))
    draw.text((pad, pad), caption, fill=(255, 80, 80) if pred.fractured else (160, 255, 160), font=font)
    return im


def _font(im: Image.Image, fraction: float) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    size = max(12, round(max(im.size) * fraction))
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no sized default font
        return ImageFont.load_default()


def overlay_name(path: str | None, index: int) -> str:
    """A stable, collision-free file name for the overlay of the index-th input."""
    stem = Path(path).name if path else "image"
    return f"{index:05d}_{stem}.overlay.png"
