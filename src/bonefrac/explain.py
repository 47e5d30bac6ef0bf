"""Class-activation heatmaps and the boxes derived from them.

The classifier head is global-average-pool then linear, so applying `forward_head` at every location of
the `forward_features` map gives a per-location logit whose mean is exactly the image logit (CAM, Zhou et
al. 2016). No hooks, no gradients: the same computation runs in torch and inside the ONNX graph.

Boxes (documented method): the heatmap, mapped back onto the image, is thresholded at
`BOX_THRESHOLD` of its own maximum; each connected region becomes one box [x0, y0, x1, y1, score], with
score = fracture probability x the region's peak heat. At most `MAX_BOXES`, best first. The threshold was
chosen on the bundled model's validation split: FracAtlas fracture boxes are small (median 29 px wide in
373x454 images) and the heatmap comes from an 8 x 8 grid, so only its very top marks a fracture-sized
region (top-box precision at IoU 0.3: 0.01 at 50% of the peak, 0.22 at 90%, 0.31 at 95%, 0.29 at 97%).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch stays unimported when predicting through onnxruntime
    import torch

BOX_THRESHOLD = 0.95
MAX_BOXES = 3


def class_activation_map(model: torch.nn.Module, features: torch.Tensor) -> torch.Tensor:
    """(N, C, h, w) features -> (N, h, w) per-location logits, via the model's own `forward_head`."""
    n, c, h, w = features.shape
    cells = features.permute(0, 2, 3, 1).reshape(n * h * w, c, 1, 1)
    return model.forward_head(cells).reshape(n, h, w)


def normalize_heatmap(cam: np.ndarray) -> np.ndarray:
    """Per-image min-max to [0, 1]: where the model looks, relative to the rest of this image."""
    lo, hi = float(cam.min()), float(cam.max())
    return ((cam - lo) / (hi - lo)).astype(np.float32) if hi > lo else np.zeros_like(cam, dtype=np.float32)


def heatmap_peak(heat: np.ndarray) -> tuple[float, float]:
    """(x, y) pixel position of the heatmap maximum."""
    y, x = np.unravel_index(int(np.argmax(heat)), heat.shape)
    return float(x), float(y)


def boxes_from_heatmap(heat: np.ndarray, probability: float, threshold: float = BOX_THRESHOLD) -> list[list[float]]:
    """Connected regions of `heat >= threshold * max` as [x0, y0, x1, y1, score] in the heatmap's pixels."""
    from scipy import ndimage

    if heat.size == 0 or float(heat.max()) <= 0:
        return []
    mask = heat >= threshold * float(heat.max())
    labels, n = ndimage.label(mask)
    boxes = []
    for i, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        peak = float(heat[sl][labels[sl] == i].max())
        ys, xs = sl
        boxes.append([float(xs.start), float(ys.start), float(xs.stop), float(ys.stop), round(probability * peak, 4)])
    boxes.sort(key=lambda b: -b[4])
    return boxes[:MAX_BOXES]
