"""Box supervision of the heatmap: fracture-box masks on the decode cache's grid, and the loss that pulls the
class-activation map's spatial softmax towards them (where the dataset has boxes; see `train`)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from bonefrac.preprocess import box_mask
from bonefrac.train.data import DecodeCache, Record


def load_box_masks(cache: DecodeCache, records: list[Record], idx: list[int]) -> torch.Tensor:
    """(N, 1, S, S) fracture-box masks on the cached grid; all zero for images without boxes."""
    masks = [
        box_mask(records[i].boxes, cache.geometry(records[i].path))
        if records[i].boxes
        else np.zeros((cache.size, cache.size), np.float32)
        for i in idx
    ]
    return torch.from_numpy(np.stack(masks))[:, None]


def box_targets(cam: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The share of each heatmap cell covered by boxes (N, h*w), and which images have any box (N,)."""
    target = F.adaptive_avg_pool2d(masks, cam.shape[-2:]).flatten(1)
    return target, target.sum(1) > 1e-6


def localization_loss(cam: torch.Tensor, masks: torch.Tensor, n_boxed: int | None = None) -> torch.Tensor:
    """Cross-entropy between the heatmap's spatial softmax and the share of each cell covered by boxes.

    It shapes only *where* the heatmap is high, relative to the rest of the image, so it does not fight
    the image-level logit (the heatmap's mean). Images without boxes (negatives) contribute nothing. The
    mean is over the boxed images here, or over `n_boxed` images: under DDP the global batch's count, so
    that the ranks' losses add up to the loss one process computes on the whole batch.
    """
    target, keep = box_targets(cam, masks)
    if not keep.any():
        return cam.sum() * 0.0  # keeps every parameter in the graph (DistributedDataParallel needs that)
    target = target[keep] / target[keep].sum(1, keepdim=True)
    per_image = -(target * F.log_softmax(cam[keep].flatten(1), dim=1)).sum(1)
    return per_image.mean() if n_boxed is None else per_image.sum() / n_boxed
