"""Where an overlay's parts go, computed from the image's size and the prediction alone (no pixels): the
kinds of the boxes worth drawing, the text bands above and below the radiograph wrapped to the canvas's width,
and the boxes' number tags placed inside the radiograph clear of one another. `render_overlay` draws it."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from itertools import chain
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import ImageFont

from bonefrac.inference.decode import display_shape
from bonefrac.results import Prediction, verdict

WARNING_COLOUR = (255, 170, 60)
TEXT_COLOUR = (225, 225, 225)
#: A radiograph whose long side is shorter is enlarged to it: tags and lines need some pixels to be seen.
MIN_SIDE = 480
#: The overlay is never narrower (a narrow radiograph is framed in black): the text bands need the width.
MIN_WIDTH = 480

BoxKind = Literal["fracture", "suspicious"]
Rect = tuple[int, int, int, int]


def kind_thresholds(operating_points: Mapping[str, float], threshold: float | None = None) -> tuple[float, float]:
    """(solid, dashed): the scores from which a box is drawn as "fracture" (`high_specificity`) and as
    "suspicious" (`high_sensitivity`). A model without those named points uses the decision's threshold."""
    fallback = threshold if threshold is not None else operating_points.get("default", 0.5)
    return operating_points.get("high_specificity", fallback), operating_points.get("high_sensitivity", fallback)


def box_kinds(
    detections: list[list[float]], operating_points: Mapping[str, float], threshold: float | None = None
) -> list[tuple[list[float], BoxKind]]:
    """The detections worth drawing, each with its kind: "fracture" at or above `high_specificity`,
    "suspicious" at or above `high_sensitivity`, none below (`kind_thresholds`). The kinds are the model's:
    the decision's `threshold` matters only to a model without those named points."""
    solid, dashed = kind_thresholds(operating_points, threshold)
    return [(d, "fracture" if d[4] >= solid else "suspicious") for d in detections if d[4] >= min(dashed, solid)]


# ---------------------------------------------------------------- layout: where everything goes, no pixels
@dataclass(frozen=True)
class TextLine:
    """One line of text: `draw.text(xy, text)` at font size `size`; `bbox` is where its ink falls."""

    text: str
    xy: tuple[int, int]
    size: int
    colour: tuple[int, int, int]
    bbox: Rect


@dataclass(frozen=True)
class Tag:
    """A numbered box: the box on the canvas (solid or dashed by `kind`) and its number tag's rectangle."""

    number: int
    kind: BoxKind
    score: float
    box: tuple[float, float, float, float]
    rect: Rect


@dataclass(frozen=True)
class Key:
    """A sample in the bands: a solid or dashed line (legend), or a box's number tag (the list)."""

    rect: Rect
    kind: BoxKind
    style: Literal["solid", "dashed", "tag"]
    number: int = 0


@dataclass(frozen=True)
class Layout:
    """The overlay's geometry: canvas `size` (width, height), the radiograph's place `picture` (drawn at
    `scale` canvas pixels per image pixel) with boxes `line` px wide, the text lines, the boxes with their
    tags (numbers at `text_size`), the bands' samples."""

    size: tuple[int, int]
    picture: Rect
    scale: float
    line: int
    text_size: int
    lines: list[TextLine]
    tags: list[Tag]
    keys: list[Key]


def picture_shape(height: int, width: int) -> tuple[int, int]:
    """(height, width) the radiograph is drawn at: shrunk to `DISPLAY_SIDE`, or enlarged to `MIN_SIDE`."""
    if max(height, width) >= MIN_SIDE:
        return display_shape(height, width)
    s = MIN_SIDE / max(height, width)
    return max(1, round(height * s)), max(1, round(width * s))


def text_size(width: int) -> int:
    """The font size for a canvas `width` px wide: about 36 characters per line, from 13 to 32 px."""
    return int(np.clip(round(width / 36), 13, 32))


@lru_cache(maxsize=64)
def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's own scalable font (no system font needed), at `size` px."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no sized default font
        return ImageFont.load_default()


def wrap(text: str, size: int, width: float) -> list[str]:
    """`text` in lines no wider than `width` at font `size`: broken between words, and inside a word only
    when the word alone is wider than the line."""
    f, lines, current = font(size), [], ""
    for word in text.split():
        trial = f"{current} {word}" if current else word
        if f.getlength(trial) <= width:
            current = trial
            continue
        if current:
            lines.append(current)
        while f.getlength(word) > width and len(word) > 1:
            cut = max(1, next((n for n in range(len(word), 0, -1) if f.getlength(word[:n]) <= width), 1))
            lines.append(word[:cut])
            word = word[cut:]
        current = word
    return [*lines, current] if current else lines


class _Column:
    """Lines stacked down a band, `pad` from its left and right edges."""

    def __init__(self, width: int, top: int, pad: int) -> None:
        self.width, self.y, self.pad, self.lines = width, top, pad, []

    def add(self, text: str, size: int, colour: tuple[int, int, int], indent: int = 0) -> list[TextLine]:
        added = []
        for part in wrap(text, size, self.width - 2 * self.pad - indent):
            added.append(self.place(part, self.pad + indent, size, colour))
            self.y += _line_height(size)
        self.lines += added
        return added

    def place(self, text: str, x: int, size: int, colour: tuple[int, int, int]) -> TextLine:
        left, top, right, bottom = font(size).getbbox(text)
        return TextLine(text, (x, self.y), size, colour, (x + left, self.y + top, x + right, self.y + bottom))


def _line_height(size: int) -> int:
    ascent, descent = font(size).getmetrics()
    return ascent + descent + max(2, size // 6)


def _tag_size(number: int, size: int) -> tuple[int, int]:
    left, top, right, bottom = font(size).getbbox(str(number))
    pad = max(2, size // 5)
    return right - left + 2 * pad + 2, bottom - top + 2 * pad


def header_texts(pred: Prediction) -> list[tuple[str, tuple[int, int, int]]]:
    """The band above the radiograph: the verdict with its probability, the threshold it was decided at, and
    the image's warnings (without the file name they start with: the overlay is that file's)."""
    decision = verdict(pred.fractured)
    texts = [
        (f"{decision}  p={pred.probability:.3f}", (255, 90, 90) if pred.fractured else (150, 240, 150)),
        (f"threshold {pred.threshold:.3f} ({pred.operating_point})", TEXT_COLOUR),
    ]
    name = f"{Path(pred.path).name}: " if pred.path else None
    for w in pred.warnings:
        texts.append((f"warning: {w.removeprefix(name) if name else w}", WARNING_COLOUR))
    return texts


def overlay_layout(pred: Prediction, operating_points: Mapping[str, float] | None = None) -> Layout:
    """Where `render_overlay` puts everything for `pred`: computed from the image's size and the prediction
    alone, so that tests can check it (text inside the canvas, tags inside the radiograph, apart)."""
    ops = operating_points or {}
    ph, pw = picture_shape(pred.height, pred.width)
    width = max(pw, MIN_WIDTH)
    size = text_size(width)
    head, pad, line = round(size * 1.25), max(4, size // 2), max(2, round(max(ph, pw) / 400))
    top = _Column(width, pad, pad)
    verdict, at, *warnings = header_texts(pred)
    joined = f"{verdict[0]}   {at[0]}"
    if font(head).getlength(joined) <= width - 2 * pad:  # one line when it fits, the verdict coloured
        first = top.place(verdict[0], pad, head, verdict[1])
        second = top.place(at[0], pad + round(font(head).getlength(verdict[0] + "   ")), head, at[1])
        top.lines += [first, second]
        top.y += _line_height(head)
    else:
        top.add(verdict[0], head, verdict[1])
        top.add(at[0], head, at[1])
    for text, colour in warnings:
        top.add(text, size, colour)
    picture = ((width - pw) // 2, top.y + pad, (width - pw) // 2 + pw, top.y + pad + ph)
    scale = pw / pred.width

    kinds = box_kinds(pred.detections, ops, pred.threshold)
    tags = place_tags(kinds, picture, scale, size, line)

    bottom = _Column(width, picture[3] + pad, pad)
    keys: list[Key] = []
    solid, dashed = kind_thresholds(ops, pred.threshold)
    named = "high_specificity" in ops
    sample = 2 * size
    legend: list[tuple[BoxKind, str]] = [
        ("fracture", f"solid = fracture: scores from {solid:.3f} ({'high_specificity' if named else 'the decision'})")
    ]
    if dashed < solid:
        legend.append(("suspicious", f"dashed = suspicious: scores from {dashed:.3f} (high_sensitivity)"))
    for kind, text in legend:
        (first, *_) = bottom.add(text, size, TEXT_COLOUR, indent=sample + pad)
        mid = (first.bbox[1] + first.bbox[3]) // 2
        keys.append(Key((pad, mid - line, pad + sample, mid + line), kind, "solid" if kind == "fracture" else "dashed"))
    if not tags:
        bottom.add(f"no box scores {min(solid, dashed):.3f} or more", size, TEXT_COLOUR)
    x = pad
    for tag in tags:  # the list of boxes, flowing left to right: [n] kind score
        tw, th = _tag_size(tag.number, size)
        text = f"{tag.kind} {tag.score:.2f}"
        needed = tw + pad // 2 + round(font(size).getlength(text)) + 2 * pad
        if x > pad and x + needed > width - pad:
            x, bottom.y = pad, bottom.y + _line_height(size)
        entry = bottom.place(text, x + tw + pad // 2, size, TEXT_COLOUR)
        mid = (entry.bbox[1] + entry.bbox[3]) // 2
        keys.append(Key((x, mid - th // 2, x + tw, mid - th // 2 + th), tag.kind, "tag", tag.number))
        bottom.lines.append(entry)
        x += needed
    if tags:
        bottom.y += _line_height(size)
    return Layout((width, bottom.y + pad), picture, scale, line, size, top.lines + bottom.lines, tags, keys)


def place_tags(
    kinds: list[tuple[list[float], BoxKind]], picture: Rect, scale: float, size: int, line: int
) -> list[Tag]:
    """Each box's number tag, best box first: just above the box's top-left corner when that place is free,
    else another place next to the box, else the nearest free place; always inside the radiograph, never on
    another tag."""
    placed: list[Tag] = []
    for number, ((x0, y0, x1, y1, score), kind) in enumerate(kinds, start=1):
        box = (picture[0] + x0 * scale, picture[1] + y0 * scale, picture[0] + x1 * scale, picture[1] + y1 * scale)
        tw, th = _tag_size(number, size)
        bx0, by0, bx1, by1 = (round(v) for v in box)
        preferred = [(bx0, by0 - th), (bx0 - tw, by0), (bx1 - tw, by0 - th), (bx0, by1), (bx0 + line, by0 + line)]
        reach = max(picture[2] - picture[0], picture[3] - picture[1])
        spots = chain(preferred, _rings(*preferred[0], step=max(2, th // 2), reach=reach))  # lazily: usually 1-5
        candidates = (_clamped((x, y, x + tw, y + th), picture) for x, y in spots)
        taken = [other.rect for other in placed]
        rect = next((r for r in candidates if not any(overlaps(r, t, gap=2) for t in taken)), None)
        rect = rect or _clamped((*preferred[0], preferred[0][0] + tw, preferred[0][1] + th), picture)
        placed.append(Tag(number, kind, float(score), box, rect))
    return placed


def _rings(x: int, y: int, step: int, reach: int) -> Iterator[tuple[int, int]]:
    """Points on squares of growing size around (x, y), `step` apart: where to look for a free place."""
    for r in range(step, reach, step):
        for d in range(-r, r + 1, step):
            yield from ((x + d, y - r), (x + d, y + r), (x - r, y + d), (x + r, y + d))


def _clamped(rect: Rect, within: Rect) -> Rect:
    """`rect` moved (not resized) to lie inside `within` as far as its size allows."""
    x = min(max(rect[0], within[0]), max(within[0], within[2] - (rect[2] - rect[0])))
    y = min(max(rect[1], within[1]), max(within[1], within[3] - (rect[3] - rect[1])))
    return x, y, x + rect[2] - rect[0], y + rect[3] - rect[1]


def overlaps(a: Rect, b: Rect, gap: int = 0) -> bool:
    """Whether rectangles `a` and `b` (x0, y0, x1, y1) come closer than `gap` pixels."""
    return a[0] < b[2] + gap and b[0] < a[2] + gap and a[1] < b[3] + gap and b[1] < a[3] + gap
