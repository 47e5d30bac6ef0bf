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
    for threshold in (0.95, 0.9, 0.6):  # 0.95: the bundled boxes; lower ones give more, larger, odder blobs
        for _ in range(60):
            heat = upsample_maps(rng.normal(size=(1, 8, 8)), 256)[0][:, 20:230]  # cropped, as the letterbox content
            heat = (heat - heat.min()) / (heat.max() - heat.min())
            assert boxes_from_heatmap(heat, 0.6, threshold) == _scipy_boxes(heat, 0.6, threshold)
    diagonal = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    assert len(boxes_from_heatmap(diagonal, 1.0)) == 2
    assert boxes_from_heatmap(np.zeros((4, 4), np.float32), 1.0) == []


def test_regions_of_shapes_the_cuts_cannot_separate() -> None:
    """A ring around a blob, a U, a spiral-ish hook and blobs meeting only at a corner: labelled run by run."""
    mask = np.zeros((40, 40), bool)
    mask[2:20, 2:20] = True
    mask[5:17, 5:17] = False
    mask[8:14, 8:14] = True  # inside the ring: its own region
    mask[22:38, 2:6] = mask[22:38, 14:18] = mask[34:38, 2:18] = True  # U
    mask[22:30, 22:30] = mask[30:38, 30:38] = True  # corner to corner: two regions
    mask[2:4, 24:38] = mask[2:14, 36:38] = mask[12:14, 26:38] = mask[6:14, 26:28] = True  # hook
    heat = np.where(mask, 0.5 + np.random.default_rng(3).random(mask.shape) / 2, 0.1).astype(np.float32)
    for threshold in (0.5, 0.0):
        got = boxes_from_heatmap(heat, 1.0, threshold)
        assert got == _scipy_boxes(heat, 1.0, threshold)
    from bonefrac.explain import _regions

    assert len(_regions(mask, heat)) == 6
