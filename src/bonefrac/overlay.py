"""Overlay PNGs: the radiograph, the heatmap in colour where the model looks, the boxes, and the verdict.

Used by `bonefrac predict --overlay-dir` and by the web server, so both show the same picture.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .detector import Prediction
from .io import XrayImage

MAX_SIDE = 1600  # overlays of 3000-px radiographs are downscaled: they are for looking at, not measuring
PNG_COMPRESS_LEVEL = 1  # zlib level 6 (the default) costs ~190 ms per megapixel for ~10% smaller files


def colormap(heat: np.ndarray) -> np.ndarray:
    """(H, W) in [0, 1] -> (H, W, 3) uint8, the heatmap colours shared by overlays and the web page."""
    from matplotlib import colormaps

    return (colormaps["inferno"](heat)[..., :3] * 255).astype(np.uint8)


def render_overlay(image: XrayImage, pred: Prediction, opacity: float = 0.45) -> Image.Image:
    """An RGB picture: heatmap blended over the radiograph (stronger where heat is higher), boxes, caption."""
    grey = (np.clip(image.pixels, 0, 1) * 255).astype(np.uint8)
    base = np.repeat(grey[..., None], 3, axis=2).astype(np.float32)
    if pred.heatmap is not None:
        heat = np.clip(pred.heatmap, 0, 1)
        alpha = (opacity * heat)[..., None]  # cold regions stay the plain radiograph
        base = base * (1 - alpha) + colormap(heat).astype(np.float32) * alpha
    im = Image.fromarray(base.astype(np.uint8), "RGB")
    scale = min(1.0, MAX_SIDE / max(im.size))
    if scale < 1.0:
        im = im.resize((round(im.width * scale), round(im.height * scale)), Image.BILINEAR)
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


def overlay_png_bytes(image: XrayImage, pred: Prediction) -> bytes:
    buf = io.BytesIO()
    render_overlay(image, pred).save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()


def overlay_name(path: str | None, index: int) -> str:
    """A stable, collision-free file name for the overlay of the index-th input."""
    stem = Path(path).name if path else "image"
    return f"{index:05d}_{stem}.overlay.png"
