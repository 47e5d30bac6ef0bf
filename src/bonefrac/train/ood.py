"""The end of `bonefrac train` for a detector: its out-of-distribution statistics (`models.ood`) into model.pt.

The Gaussian is fitted on the training images' `ood_features` and thresholded at `ood.QUANTILE` of the validation
images' scores: held out of the fit, as new in-distribution images are (the fit set's own scores are optimistic,
and a threshold taken from them would flag too many new images).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from bonefrac.datasets import Record
from bonefrac.models.checkpoint import load_model, save_model
from bonefrac.models.ood import OodGaussian
from bonefrac.models.registry import kind_of
from bonefrac.spec import ModelSpec
from bonefrac.train import distributed
from bonefrac.train.data import DecodeCache, run_on_cache


def cached_features(
    model: torch.nn.Module,
    spec: ModelSpec,
    cache: DecodeCache,
    records: list[Record],
    batch_size: int = 32,
    workers: int = 0,
) -> np.ndarray:
    """(N, 152) `ood_features` of `records` from the decode cache (the images the training saw, prepared as
    prediction prepares them)."""
    from bonefrac.models.centernet import pooled_features

    return run_on_cache(lambda x: pooled_features(model, x), spec, cache, records, batch_size, workers)


def add_ood_statistics(
    checkpoint: Path, cache: DecodeCache, train: list[Record], val: list[Record], workers: int = 0
) -> dict[str, Any] | None:
    """Fit the statistics for the detector in `checkpoint` and save it again with them in its spec (and the
    record of the fit in info["ood"]); returns that record, or None for a classifier or too few images."""
    model, spec, info = load_model(checkpoint)
    if kind_of(spec.arch) != "detector" or len(train) < 2 or not val:
        return None
    model = model.to(distributed.device())
    g = OodGaussian.fit(cached_features(model, spec, cache, train, workers=workers))
    val_features = cached_features(model, spec, cache, val, workers=workers)
    g = g.with_threshold(val_features)
    spec.ood = g.to_dict()
    record = {
        "method": "Gaussian on the training images, threshold on the validation images",
        "n_fit": g.n_fit,
        "n_threshold": g.n_threshold,
        "quantile": g.quantile,
        "threshold": g.threshold,
        "flagged_validation": float(1 - g.in_distribution(g.score(val_features)).mean()),
    }
    info.pop("sha256", None)  # (`load_model`'s digest of the file being replaced)
    save_model(model.cpu(), spec, checkpoint, {**info, "ood": record})
    return record
