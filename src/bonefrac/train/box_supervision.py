"""Box supervision of a classifier's heatmap: fracture-box masks on the decode cache's grid (the loss that pulls
the class-activation map towards them: `models.classifier.localization_loss`)."""

from __future__ import annotations

import numpy as np
import torch

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
