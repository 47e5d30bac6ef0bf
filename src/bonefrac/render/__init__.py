"""Overlay pictures: the radiograph, the heatmap in colour where the model looks, the boxes, and the verdict.

Two kinds of boxes, as clinical fracture detectors draw them (`box_kinds`): a solid "fracture" box for a
detection scoring at least the model's `high_specificity` threshold, a dashed "suspicious" box for one scoring
at least `high_sensitivity` (or the decision's threshold, when a custom one is lower: every box kept at the
decision is drawn). The heatmap is drawn on its own absolute scale: its opacity follows its value, so a map of
low values leaves the radiograph as it is (nothing here renormalises it per image).

The one renderer, used by `bonefrac predict --overlay-dir`, the web server and the DICOM outputs. Everything
is drawn at display resolution (long side at most `postprocess.DISPLAY_SIDE`): the radiograph is shrunk
before any colour work, so an 8000 x 8000 upload costs a display-sized picture, not a full-size one.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from bonefrac.inference.decode import DISPLAY_SIDE, display_shape
from bonefrac.io.read import XrayImage, read_image
from bonefrac.preprocess import float_image, reduction_factor
from bonefrac.results import Prediction

PNG_COMPRESS_LEVEL = 1  # zlib's default level 6 costs far more time for a slightly smaller file (bench/README.md)
#: Heat at or below this is not drawn: a detector's heatmap is a probability per place, and the faint
#: background of a normal image must not tint the radiograph. Above it the opacity grows linearly with heat.
HEAT_FLOOR = 0.05
FRACTURE_COLOUR = (255, 64, 64)
SUSPICIOUS_COLOUR = (255, 200, 0)

BoxKind = Literal["fracture", "suspicious"]


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


def heat_alpha(heat: np.ndarray) -> np.ndarray:
    """Opacity in [0, 1] for heat in [0, 1]: 0 up to `HEAT_FLOOR`, then linear up to 1 at heat 1."""
    return np.clip((heat - HEAT_FLOOR) / (1.0 - HEAT_FLOOR), 0.0, 1.0)


def heatmap_rgba(heatmap: np.ndarray, side: int) -> Image.Image:
    """The heatmap alone as RGBA (alpha = `heat_alpha`), long side `side`: for the web page to layer with CSS."""
    h = heat_at(heatmap, display_shape(*heatmap.shape, side=side))
    return Image.fromarray(np.dstack([colormap(h), np.round(heat_alpha(h) * 255).astype(np.uint8)]))


def box_kinds(
    detections: list[list[float]], operating_points: Mapping[str, float], threshold: float | None = None
) -> list[tuple[list[float], BoxKind]]:
    """The detections worth drawing, each with its kind: "fracture" at or above `high_specificity`,
    "suspicious" at or above `high_sensitivity` (lowered to `threshold`, the decision's, when that is lower).
    A model without those named points uses the decision's threshold for both (then only "fracture" boxes)."""
    fallback = threshold if threshold is not None else operating_points.get("default", 0.5)
    solid = operating_points.get("high_specificity", fallback)
    dashed = operating_points.get("high_sensitivity", fallback)
    if threshold is not None:
        dashed = min(dashed, threshold)
    return [(d, "fracture" if d[4] >= solid else "suspicious") for d in detections if d[4] >= min(dashed, solid)]


def render_overlay(
    image: XrayImage,
    pred: Prediction,
    *,
    operating_points: Mapping[str, float] | None = None,
    opacity: float = 0.45,
) -> Image.Image:
    """An RGB picture at display resolution: the heatmap blended over the radiograph (opacity following its
    absolute value), the detections as solid "fracture" and dashed "suspicious" boxes (`box_kinds` at the
    model's `operating_points`; without them, the boxes kept at the decision, solid), and a caption with the
    verdict. `image` may be read whole or reduced."""
    shape = display_shape(pred.height, pred.width)
    base = np.repeat(display_grey(image, shape)[..., None], 3, axis=2).astype(np.float32)
    if pred.heatmap is not None:
        heat = heat_at(pred.heatmap, shape)
        alpha = (opacity * heat_alpha(heat))[..., None]  # cold regions stay the plain radiograph
        base = base * (1 - alpha) + colormap(heat).astype(np.float32) * alpha
    im = Image.fromarray(np.round(base).astype(np.uint8), "RGB")
    scale = shape[1] / pred.width
    draw = ImageDraw.Draw(im)
    line = max(2, round(max(im.size) / 300))
    font = _font(im, 0.025)
    # Weakest first, so a fracture box is drawn over a suspicious one where they overlap.
    for (x0, y0, x1, y1, score), kind in reversed(box_kinds(pred.detections, operating_points or {}, pred.threshold)):
        rect = (x0 * scale, y0 * scale, x1 * scale, y1 * scale)
        colour = FRACTURE_COLOUR if kind == "fracture" else SUSPICIOUS_COLOUR
        if kind == "fracture":
            draw.rectangle(rect, outline=colour, width=line)
        else:
            dashed_rectangle(draw, rect, colour, line)
        draw.text((rect[0] + line, rect[1] + line), f"{kind} {score:.2f}", fill=colour, font=font)
    verdict = "FRACTURE" if pred.fractured else "no fracture"
    caption = f"{verdict}  p={pred.probability:.3f}  (threshold {pred.threshold:.3f}, {pred.operating_point})"
    font = _font(im, 0.032)
    box = draw.textbbox((0, 0), caption, font=font)
    pad = line * 2
    draw.rectangle([0, 0, box[2] + 2 * pad, box[3] + 2 * pad], fill=(0, 0, 0))
    draw.text((pad, pad), caption, fill=(255, 80, 80) if pred.fractured else (160, 255, 160), font=font)
    return im


def dashed_rectangle(
    draw: ImageDraw.ImageDraw, rect: tuple[float, float, float, float], colour: tuple[int, int, int], width: int
) -> None:
    """A rectangle outline of dashes 4 line-widths long with gaps of 3, covering the pixels that
    `ImageDraw.rectangle(rect, width=width)`'s solid outline would (PIL has no dashed lines)."""
    x0, y0, x1, y1 = (round(v) for v in rect)
    dash, gap, w = 4 * width, 3 * width, width - 1
    for start in range(x0, x1 + 1, dash + gap):
        end = min(start + dash - 1, x1)
        draw.rectangle([start, y0, end, y0 + w], fill=colour)
        draw.rectangle([start, y1 - w, end, y1], fill=colour)
    for start in range(y0, y1 + 1, dash + gap):
        end = min(start + dash - 1, y1)
        draw.rectangle([x0, start, x0 + w, end], fill=colour)
        draw.rectangle([x1 - w, start, x1, end], fill=colour)


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
