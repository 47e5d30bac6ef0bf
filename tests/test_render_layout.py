"""Overlays a clinician can read, on odd sizes (a narrow portrait, a wide, a tiny and a huge radiograph) and on
the bundled examples: the verdict, warnings, legend and box list fit the canvas without overlapping, in bands
that leave the radiograph uncovered; each box drawn (only those at or above high_sensitivity) has one number
tag, inside the radiograph and clear of the other tags; and the picture drawn is the layout's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bonefrac.io.read import XrayImage, read_image
from bonefrac.paths import EXAMPLES_DIR
from bonefrac.render import (
    FRACTURE_COLOUR,
    SUSPICIOUS_COLOUR,
    WARNING_COLOUR,
    Layout,
    box_kinds,
    overlaps,
    overlay_layout,
    render_overlay,
    wrap,
)
from bonefrac.results import Prediction

OPS = {"default": 0.5, "high_sensitivity": 0.2, "high_specificity": 0.8}
TRUNCATED = "DOE^JOHN_12345.jpg: JPEG file is truncated; 37% of rows missing (filled grey)"
SIZES = {"narrow portrait": (1200, 300), "wide": (400, 1600), "tiny": (90, 120), "huge": (5000, 4000)}
EXAMPLES = sorted(EXAMPLES_DIR.glob("*.jpg"))


def crowded(height: int, width: int, n: int = 13, seed: int = 0, warnings: tuple[str, ...] = ()) -> Prediction:
    """`n` detections clustered in the middle of the image (where text labels would collide), scores from 0.95
    down in steps of 0.07: three fracture boxes, eight suspicious ones, two below high_sensitivity."""
    rng = np.random.default_rng(seed)
    detections = []
    for i in range(n):
        bw, bh = width * rng.uniform(0.05, 0.2), height * rng.uniform(0.05, 0.2)
        cx, cy = width * rng.uniform(0.3, 0.7), height * rng.uniform(0.3, 0.7)
        detections.append([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2, round(0.95 - i * 0.07, 2)])
    return Prediction(
        path="DOE^JOHN_12345.jpg",
        probability=0.564,
        fractured=True,
        threshold=0.5,
        operating_point="default",
        operating_points={k: 0.564 >= t for k, t in OPS.items()},
        boxes=[d for d in detections if d[4] >= 0.5],
        model_version="test",
        width=width,
        height=height,
        detections=detections,
        warnings=list(warnings),
    )


def assert_readable(layout: Layout, pred: Prediction) -> None:
    width, height = layout.size
    px0, py0, px1, py1 = layout.picture
    assert 0 <= px0 < px1 <= width and 0 < py0 < py1 < height
    texts = [line.bbox for line in layout.lines]
    for (x0, y0, x1, y1), line in zip(texts, layout.lines, strict=True):
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height, line.text  # never cut at an edge
        assert y1 <= py0 or y0 >= py1, line.text  # in a band, not on the anatomy
        assert line.size >= 13  # readable on the smallest canvas
    assert not any(overlaps(a, b) for i, a in enumerate(texts) for b in texts[i + 1 :])
    # Only the boxes at or above high_sensitivity, numbered best first, each tag inside the radiograph, apart.
    assert [(t.number, t.score) for t in layout.tags] == [
        (i, d[4]) for i, (d, _) in enumerate(box_kinds(pred.detections, OPS, pred.threshold), start=1)
    ]
    assert all(t.score >= OPS["high_sensitivity"] for t in layout.tags)
    for tag in layout.tags:
        x0, y0, x1, y1 = tag.rect
        assert px0 <= x0 < x1 <= px1 and py0 <= y0 < y1 <= py1
    rects = [t.rect for t in layout.tags]
    assert not any(overlaps(a, b) for i, a in enumerate(rects) for b in rects[i + 1 :])
    # The legend says what solid and dashed mean, and the list names every tag.
    words = " ".join(line.text for line in layout.lines)
    assert "solid = fracture: scores from 0.800 (high_specificity)" in words
    assert "dashed = suspicious: scores from 0.200 (high_sensitivity)" in words
    for tag in layout.tags:
        assert f"{tag.kind} {tag.score:.2f}" in words
    assert sorted(k.number for k in layout.keys if k.style == "tag") == [t.number for t in layout.tags]


@pytest.mark.parametrize("name", SIZES)
def test_odd_sizes_are_readable(name: str) -> None:
    height, width = SIZES[name]
    pred = crowded(height, width, warnings=(TRUNCATED,))
    layout = overlay_layout(pred, OPS)
    assert_readable(layout, pred)
    assert len(layout.tags) == 11  # 13 detections, two below high_sensitivity
    # The header: the verdict whole, then the warning without the file name (the overlay is that file's).
    header = [line for line in layout.lines if line.bbox[3] <= layout.picture[1]]
    assert header[0].text.startswith("FRACTURE  p=0.564")
    assert " ".join(line.text for line in header).endswith(
        "threshold 0.500 (default) warning: JPEG file is truncated; 37% of rows missing (filled grey)"
    )
    assert any(line.colour == WARNING_COLOUR for line in header)
    assert "DOE" not in " ".join(line.text for line in layout.lines)


def test_text_is_sized_from_the_width() -> None:
    sizes = {name: overlay_layout(crowded(h, w), OPS).text_size for name, (h, w) in SIZES.items()}
    assert sizes["tiny"] == sizes["narrow portrait"] == 13  # the smallest canvas: 480 px wide
    assert sizes["huge"] > 2 * sizes["tiny"]  # 4000 x 5000 drawn 1280 px wide: text to match
    tiny = overlay_layout(crowded(90, 120), OPS)
    assert tiny.picture[2] - tiny.picture[0] == 480 and tiny.scale == 4  # enlarged to be seen


@pytest.mark.parametrize("name", ["tiny", "huge"])
def test_the_picture_drawn_is_the_layout(name: str) -> None:
    height, width = SIZES[name]
    pred = crowded(height, width, warnings=(TRUNCATED,))
    image = XrayImage(np.full((height, width), 0.5, dtype=np.float32), {}, "flat.png")
    layout = overlay_layout(pred, OPS)
    im = np.asarray(render_overlay(image, pred, operating_points=OPS)).astype(int)
    assert im.shape == (layout.size[1], layout.size[0], 3)
    for tag in layout.tags:  # each tag filled with its kind's colour around its number
        x0, y0, x1, y1 = tag.rect
        colour = FRACTURE_COLOUR if tag.kind == "fracture" else SUSPICIOUS_COLOUR
        filled = (np.abs(im[y0 + 1 : y1 - 1, x0 + 1 : x1 - 1] - colour) <= 1).all(axis=-1)
        assert 0.3 < filled.mean() < 1  # the colour, and the number's ink on it
    px0, py0, px1, py1 = layout.picture
    bands = np.concatenate([im[:py0].reshape(-1, 3), im[py1:].reshape(-1, 3)])
    assert (np.abs(bands - WARNING_COLOUR) <= 1).all(axis=-1).any()  # the warning is drawn


@pytest.mark.skipif(not EXAMPLES, reason="no bundled examples")
@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_bundled_examples_are_readable(path: Path) -> None:
    image = read_image(path)
    height, width = image.pixels.shape
    pred = crowded(height, width, seed=len(path.name))
    assert_readable(overlay_layout(pred, OPS), pred)
    assert render_overlay(image, pred, operating_points=OPS).size == overlay_layout(pred, OPS).size


def test_a_custom_threshold_draws_no_box_below_high_sensitivity() -> None:
    pred = crowded(400, 600).decided_at("custom", 0.05)
    layout = overlay_layout(pred, OPS)
    assert min(t.score for t in layout.tags) >= OPS["high_sensitivity"] and len(layout.tags) == 11
    nothing = overlay_layout(crowded(400, 600, n=0), OPS)
    assert nothing.tags == [] and any("no box scores 0.200 or more" in line.text for line in nothing.lines)


def test_wrap_breaks_between_words_and_inside_a_word_only_when_it_must() -> None:
    assert wrap("one two three", 13, 1000) == ["one two three"]
    lines = wrap("fracture " + "x" * 200, 13, 200)
    assert lines[0] == "fracture" and "".join(lines[1:]) == "x" * 200 and len(lines) > 2
