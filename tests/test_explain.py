"""Boxes from heatmaps: the region finder gives exactly what scipy.ndimage.label would."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from bonefrac.explain import MAX_BOXES, boxes_from_heatmap


def _scipy_boxes(heat: np.ndarray, probability: float, threshold: float) -> list[list[float]]:
    mask = heat >= threshold * float(heat.max())
    labels, _ = ndimage.label(mask)  # 4-connectivity, scipy's default
    boxes = []
    for i, (ys, xs) in enumerate(ndimage.find_objects(labels), start=1):
        peak = float(heat[ys, xs][labels[ys, xs] == i].max())
        boxes.append([float(xs.start), float(ys.start), float(xs.stop), float(ys.stop), round(probability * peak, 4)])
    return sorted(boxes, key=lambda b: -b[4])[:MAX_BOXES]


@pytest.mark.parametrize("threshold", [0.95, 0.7, 0.3])
def test_regions_match_scipy_label_on_random_maps(threshold: float) -> None:
    rng = np.random.default_rng(7)
    for _ in range(400):
        h, w = rng.integers(1, 48, 2)
        heat = rng.random((h, w)).astype(np.float32)
        assert boxes_from_heatmap(heat, 0.8, threshold) == _scipy_boxes(heat, 0.8, threshold)


def test_regions_of_smooth_maps_like_real_heatmaps() -> None:
    """Upsampled CAMs: a few large blobs, including ones that touch only diagonally (not joined)."""
    from bonefrac.transforms import upsample_maps

    rng = np.random.default_rng(8)
    for _ in range(50):
        heat = upsample_maps(rng.normal(size=(1, 8, 8)), 256)[0]
        heat = (heat - heat.min()) / (heat.max() - heat.min())
        assert boxes_from_heatmap(heat, 0.6, 0.9) == _scipy_boxes(heat, 0.6, 0.9)
    diagonal = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    assert len(boxes_from_heatmap(diagonal, 1.0)) == 2
    assert boxes_from_heatmap(np.zeros((4, 4), np.float32), 1.0) == []
