"""The overlay renderer, pixel by pixel, on a hand-made prediction over a flat grey radiograph: solid
"fracture" and dashed "suspicious" boxes where the detections are, nothing for a weak one, and a heatmap
drawn on its absolute scale (low values leave the radiograph as it is; nothing renormalises it). The text
and number tags' geometry on odd sizes is tested in test_render_layout.py."""

from __future__ import annotations

import numpy as np
import pytest

from bonefrac.io.read import XrayImage
from bonefrac.render import (
    FRACTURE_COLOUR,
    HEAT_FLOOR,
    SUSPICIOUS_COLOUR,
    box_kinds,
    heatmap_rgba,
    overlay_layout,
    render_overlay,
)
from bonefrac.results import Prediction

OPS = {"default": 0.5, "high_sensitivity": 0.2, "high_specificity": 0.8}
H, W = 400, 600
GREY = 128
# Well below the caption band at the top; same size so the edges compare alike.
STRONG = [50.0, 150.0, 150.0, 250.0, 0.9]  # >= high_specificity: a solid fracture box
WEAK = [250.0, 150.0, 350.0, 250.0, 0.3]  # >= high_sensitivity only: a dashed suspicious box
FAINT = [400.0, 150.0, 500.0, 250.0, 0.05]  # below every point: not drawn


def grey_image() -> XrayImage:
    return XrayImage(np.full((H, W), GREY / 255, dtype=np.float32), {}, "flat.png")


def prediction(detections: list[list[float]], heatmap: np.ndarray | None = None, threshold: float = 0.5) -> Prediction:
    probability = max((d[4] for d in detections), default=0.01)
    undecided = Prediction(
        path="flat.png",
        probability=probability,
        fractured=False,
        threshold=float("nan"),
        operating_point="",
        operating_points={k: probability >= t for k, t in OPS.items()},
        boxes=[],
        model_version="test",
        width=W,
        height=H,
        detections=detections,
        heatmap=heatmap,
    )
    return undecided.decided_at("custom" if threshold not in OPS.values() else "default", threshold)


def pixels(pred: Prediction, operating_points: dict[str, float] | None = OPS, **kwargs: object) -> np.ndarray:
    """The radiograph's part of the overlay (between the text bands), in image pixels (drawn at scale 1)."""
    im = render_overlay(grey_image(), pred, operating_points=operating_points, **kwargs)
    x0, y0, x1, y1 = overlay_layout(pred, operating_points).picture
    assert (x1 - x0, y1 - y0) == (W, H)
    return np.asarray(im).astype(int)[y0:y1, x0:x1]


def is_colour(row: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    return (np.abs(row - np.array(colour)) <= 1).all(axis=-1)


def edge_rows(im: np.ndarray, box: list[float]) -> np.ndarray:
    """The bottom edge's row of the box's outline (x inside the corners), away from the label at its top."""
    x0, _, x1, y1 = (int(v) for v in box[:4])
    return im[y1 - 1, x0 + 3 : x1 - 3]


def test_fracture_box_is_solid_and_suspicious_box_is_dashed() -> None:
    im = pixels(prediction([STRONG, WEAK, FAINT]))
    solid = edge_rows(im, STRONG)
    assert is_colour(solid, FRACTURE_COLOUR).all()  # unbroken
    dashed = edge_rows(im, WEAK)
    on, off = is_colour(dashed, SUSPICIOUS_COLOUR), (dashed == GREY).all(axis=-1)
    assert on.sum() > 0.4 * len(dashed) and off.sum() > 0.2 * len(dashed) and (on | off).all()  # dashes and gaps
    assert (np.diff(on.astype(int)) != 0).sum() >= 8  # several dashes along 100 px, not one line cut short
    # Both verticals too: the left edge of each box.
    assert is_colour(im[165:235, int(STRONG[0])], FRACTURE_COLOUR).all()
    assert 0 < is_colour(im[165:235, int(WEAK[0])], SUSPICIOUS_COLOUR).sum() < 70
    # The faint detection is drawn nowhere; inside the boxes the radiograph is untouched (tags go outside).
    x0, y0, x1, y1 = (int(v) for v in FAINT[:4])
    assert (im[y0 - 5 : y1 + 5, x0 - 5 : x1 + 5] == GREY).all()
    assert (im[155:245, 55:145] == GREY).all() and (im[155:245, 255:345] == GREY).all()


def test_a_detection_qualifying_as_fracture_is_drawn_once_solid() -> None:
    assert box_kinds([STRONG, WEAK, FAINT], OPS, 0.5) == [(STRONG, "fracture"), (WEAK, "suspicious")]
    # Whatever the decision's threshold, a fracture box is never listed (drawn) again as suspicious.
    for threshold in (None, 0.1, 0.5, 0.85):
        assert box_kinds([STRONG], OPS, threshold) == [(STRONG, "fracture")]


def test_box_kinds_are_the_models() -> None:
    # Nothing below high_sensitivity is drawn, even when a custom threshold below it keeps the box.
    assert box_kinds([FAINT], OPS, 0.04) == box_kinds([FAINT], OPS, 0.5) == []
    # A threshold above high_specificity changes nothing: the kinds are the model's, not the decision's.
    assert box_kinds([STRONG, WEAK], OPS, 0.95) == [(STRONG, "fracture"), (WEAK, "suspicious")]
    # A model with only a default point: the decision's boxes, solid.
    assert box_kinds([STRONG, WEAK], {"default": 0.5}, 0.5) == [(STRONG, "fracture")]


def test_without_operating_points_the_decisions_boxes_are_drawn_solid() -> None:
    im = pixels(prediction([STRONG, WEAK]), operating_points=None)
    assert is_colour(edge_rows(im, STRONG), FRACTURE_COLOUR).all()
    assert (edge_rows(im, WEAK) == GREY).all()


def test_a_low_valued_heatmap_leaves_the_radiograph_unchanged() -> None:
    plain = pixels(prediction([]))
    low = np.full((H // 4, W // 4), HEAT_FLOOR * 0.8, dtype=np.float32)
    low[40:60, 60:90] = HEAT_FLOOR  # a "peak" a per-image min-max would turn into a hot spot
    assert (pixels(prediction([], heatmap=low)) == plain).all()
    assert heatmap_rgba(low, 64).getextrema()[3] == (0, 0)  # the page's layer: fully transparent


def test_heatmap_opacity_follows_its_absolute_value() -> None:
    plain = pixels(prediction([]))
    heat = np.zeros((H, W), dtype=np.float32)
    heat[300:380, 100:200], heat[300:380, 300:400] = 0.3, 0.9
    im = pixels(prediction([], heatmap=heat))
    change = np.abs(im - plain).sum(axis=-1)
    weak, strong = change[320:360, 120:180], change[320:360, 320:380]
    assert (weak > 0).all() and (strong > weak.max()).all()  # 0.9 shows more than 0.3, both show
    assert (change[320:360, 450:550] == 0).all()  # zero heat: untouched
    # Scaling the whole map down dims it: the renderer does not stretch it back to full scale.
    dimmed = np.abs(pixels(prediction([], heatmap=heat / 3)) - plain).sum(axis=-1)
    assert dimmed[320:360, 320:380].max() < strong.min()


@pytest.mark.parametrize("opacity", [0.0, 1.0])
def test_opacity_bounds(opacity: float) -> None:
    heat = np.ones((H, W), dtype=np.float32)
    im = pixels(prediction([], heatmap=heat), opacity=opacity)
    region = im[300:380, 100:500]
    if opacity == 0:
        assert (region == GREY).all()
    else:  # full heat at full opacity: the colour map's top colour, no radiograph left
        assert (np.abs(region - region[0, 0]) <= 1).all() and (region[0, 0] != GREY).any()
