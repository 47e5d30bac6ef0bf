"""Overlay pictures: the radiograph, the heatmap in colour where the model looks, the boxes, and the verdict.

Two kinds of boxes, as clinical fracture detectors draw them (`box_kinds`): a solid "fracture" box for a
detection scoring at least the model's `high_specificity` threshold, a dashed "suspicious" box for one scoring
at least `high_sensitivity`; nothing below `high_sensitivity` is drawn, whatever the decision's threshold. The
heatmap is drawn on its own absolute scale: its opacity follows its value, so a map of low values leaves the
radiograph as it is (nothing here renormalises it per image).

What a clinician reads never covers the anatomy and never leaves the picture (`overlay_layout`): the verdict
and the image's warnings in a band above the radiograph, wrapped to its width; a legend and the list of the
boxes in a band below; each box carries a small number tag, placed inside the radiograph clear of the other
tags, instead of a text label. Text is sized from the picture's width, and a small radiograph is enlarged (a
narrow one framed) so that the text stays readable.

The one renderer, used by `bonefrac predict --overlay-dir`, the web server and the DICOM outputs. Everything
is drawn at display resolution (long side at most `DISPLAY_SIDE`): the radiograph is shrunk before any colour
work, so an 8000 x 8000 upload costs a display-sized picture, not a full-size one.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from bonefrac.inference.decode import DISPLAY_SIDE, display_shape
from bonefrac.io.read import XrayImage, read_image
from bonefrac.preprocess import float_image, reduction_factor
from bonefrac.render.layout import (
    MIN_SIDE,
    MIN_WIDTH,
    TEXT_COLOUR,
    WARNING_COLOUR,
    BoxKind,
    Key,
    Layout,
    Rect,
    Tag,
    TextLine,
    box_kinds,
    font,
    kind_thresholds,
    overlaps,
    overlay_layout,
    picture_shape,
    wrap,
)
from bonefrac.results import Prediction

__all__ = [
    "BAND_COLOUR", "FRACTURE_COLOUR", "HEAT_FLOOR", "MIN_SIDE", "MIN_WIDTH", "PNG_COMPRESS_LEVEL",
    "SUSPICIOUS_COLOUR", "TEXT_COLOUR", "WARNING_COLOUR", "BoxKind", "Key", "Layout", "Tag", "TextLine",
    "box_kinds", "colormap", "dashed_rectangle", "display_grey", "font", "heat_alpha", "heat_at", "heatmap_rgba",
    "kind_thresholds", "overlaps", "overlay_layout", "overlay_name", "picture_shape", "read_for_display",
    "render_overlay", "wrap",
]  # fmt: skip

PNG_COMPRESS_LEVEL = 1  # zlib's default level 6 costs far more time for a slightly smaller file (bench/README.md)
#: Heat at or below this is not drawn: a detector's heatmap is a probability per place, and the faint
#: background of a normal image must not tint the radiograph. Above it the opacity grows linearly with heat.
HEAT_FLOOR = 0.05
FRACTURE_COLOUR = (255, 64, 64)
SUSPICIOUS_COLOUR = (255, 200, 0)
BAND_COLOUR = (0, 0, 0)


def read_for_display(path: str | Path) -> XrayImage:
    """Read a file for an overlay: a large JPEG decoded at a reduced scale that still covers the display
    size (other formats are read whole; `display_grey` shrinks them)."""
    # reduction_factor(h, w, side/2, reduce_from=2): reduce by k only while the long side stays >= side.
    return read_image(path, partial(reduction_factor, size=DISPLAY_SIDE // 2, reduce_from=2))


def colormap(heat: np.ndarray) -> np.ndarray:
    """(H, W) in [0, 1] -> (H, W, 3) uint8, the heatmap colours shared by overlays and the web page."""
    from bonefrac.render.inferno import INFERNO

    # matplotlib's Colormap.__call__ without matplotlib (not in the core install): index int(heat * 256) in
    # heat's own dtype, below 0 -> the first colour, 1.0 and above -> the last, NaN -> black.
    scaled = np.asarray(heat) * 256
    rgb = INFERNO[np.clip(np.nan_to_num(scaled, nan=0.0), 0, 255).astype(np.intp)]
    rgb[np.isnan(scaled)] = 0
    return rgb


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


# ---------------------------------------------------------------- drawing
def render_overlay(
    image: XrayImage,
    pred: Prediction,
    *,
    operating_points: Mapping[str, float] | None = None,
    opacity: float = 0.45,
) -> Image.Image:
    """An RGB picture: a band with the verdict (and the image's warnings), the radiograph at display size with
    the heatmap blended over it (opacity following its absolute value) and the detections as solid "fracture"
    and dashed "suspicious" boxes, numbered (`box_kinds` at the model's `operating_points`; without them, the
    boxes kept at the decision, solid), and a band with the legend and the list of the boxes (`overlay_layout`).
    `image` may be read whole or reduced."""
    layout = overlay_layout(pred, operating_points)
    x0, y0, x1, y1 = layout.picture
    shape = (y1 - y0, x1 - x0)
    base = np.repeat(display_grey(image, shape)[..., None], 3, axis=2).astype(np.float32)
    if pred.heatmap is not None:
        heat = heat_at(pred.heatmap, shape)
        alpha = (opacity * heat_alpha(heat))[..., None]  # cold regions stay the plain radiograph
        base = base * (1 - alpha) + colormap(heat).astype(np.float32) * alpha
    im = Image.new("RGB", layout.size, BAND_COLOUR)
    im.paste(Image.fromarray(np.round(base).astype(np.uint8), "RGB"), (x0, y0))
    draw = ImageDraw.Draw(im)
    for tag in reversed(layout.tags):  # weakest first, so a fracture box is drawn over a suspicious one
        _box(draw, tag.box, tag.kind, layout.line, solid=tag.kind == "fracture")
    for tag in layout.tags:
        if not overlaps(tag.rect, tuple(round(v) for v in tag.box), gap=layout.line + 2):  # nudged away: a leader
            draw.line([_centre(tag.rect), _nearest_corner(tag.box, _centre(tag.rect))], fill=_colour(tag.kind))
        _tag(draw, tag.rect, tag.number, tag.kind, layout.text_size)
    for key in layout.keys:
        if key.style == "tag":
            _tag(draw, key.rect, key.number, key.kind, layout.text_size)
        elif key.style == "solid":
            draw.rectangle(key.rect, fill=_colour(key.kind))
        else:
            kx0, ky0, kx1, ky1 = key.rect
            period = max(3, (kx1 - kx0 + 2) // 3)  # three dashes, however long the sample
            for start in range(kx0, kx1, period):
                draw.rectangle((start, ky0, min(start + period * 3 // 5, kx1), ky1), fill=_colour(key.kind))
    for text in layout.lines:
        draw.text(text.xy, text.text, fill=text.colour, font=font(text.size))
    return im


def _colour(kind: BoxKind) -> tuple[int, int, int]:
    return FRACTURE_COLOUR if kind == "fracture" else SUSPICIOUS_COLOUR


def _box(draw: ImageDraw.ImageDraw, rect: tuple[float, ...], kind: BoxKind, width: int, solid: bool) -> None:
    if solid:
        draw.rectangle(rect, outline=_colour(kind), width=width)
    else:
        dashed_rectangle(draw, rect, _colour(kind), width)


def _tag(draw: ImageDraw.ImageDraw, rect: Rect, number: int, kind: BoxKind, size: int) -> None:
    draw.rectangle(rect, fill=_colour(kind), outline=(0, 0, 0))
    draw.text(_centre(rect), str(number), fill=(0, 0, 0), font=font(size), anchor="mm")


def _centre(rect: Rect) -> tuple[int, int]:
    return (rect[0] + rect[2]) // 2, (rect[1] + rect[3]) // 2


def _nearest_corner(box: tuple[float, ...], point: tuple[int, int]) -> tuple[float, float]:
    corners = [(box[0], box[1]), (box[2], box[1]), (box[0], box[3]), (box[2], box[3])]
    return min(corners, key=lambda c: (c[0] - point[0]) ** 2 + (c[1] - point[1]) ** 2)


def dashed_rectangle(
    draw: ImageDraw.ImageDraw, rect: tuple[float, ...], colour: tuple[int, int, int], width: int
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


def overlay_name(path: str | None, index: int) -> str:
    """A stable, collision-free file name for the overlay of the index-th input."""
    stem = Path(path).name if path else "image"
    return f"{index:05d}_{stem}.overlay.png"
