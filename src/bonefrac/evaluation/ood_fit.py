"""Fitting a model's out-of-distribution statistics (`models.ood`) on images: what `bonefrac calibrate` runs.

Which fit depends on what there is (`fit_ood`):
- a model without statistics and a split file: the Gaussian on the split's training images, the threshold on the
  calibration images (held out of the fit, as `bonefrac train` does with validation);
- at least `ood.MIN_REFIT` calibration images: the Gaussian refitted on them (the shallow features react to a
  site's acquisition and processing, so its own images describe "in distribution" best), the threshold from
  two-fold cross-fitted scores: each half scored by the Gaussian of the other, so that the threshold is taken on
  images held out of the fit, as it should be;
- fewer, with statistics: only the threshold moves, to the quantile of these images' scores;
- fewer, without: nothing can be fitted; the model keeps predicting without an ood_score.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bonefrac.errors import BonefracError
from bonefrac.models.ood import MIN_REFIT, OUTPUT, QUANTILE, OodGaussian
from bonefrac.preprocess import preprocess, read_for_model

if TYPE_CHECKING:
    from bonefrac.inference.detector import FractureDetector


def features_of(det: FractureDetector, paths: Sequence[str | Path], batch_size: int = 8) -> np.ndarray | None:
    """(N, D) `ood_features` of the readable images among `paths` (unreadable ones are left out), or None when
    the model's graph has no such output (a classifier)."""
    out: list[np.ndarray] = []
    batch: list[np.ndarray] = []

    def run() -> bool:
        values = det.backend.run(np.stack(batch))
        batch.clear()
        if OUTPUT not in values:
            return False
        out.append(np.asarray(values[OUTPUT], dtype=np.float32))
        return True

    for path in paths:
        try:
            batch.append(preprocess(read_for_model(path, det.spec), det.spec)[0])
        except BonefracError:
            continue  # the predictions report it; a missing image only leaves the fit one fewer
        if len(batch) == batch_size and not run():
            return None
    if batch and not run():
        return None
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def cross_fitted_scores(features: np.ndarray) -> np.ndarray:
    """Each image's ood_score under the Gaussian fitted on the other half (alternate images)."""
    halves = np.arange(len(features)) % 2
    scores = np.empty(len(features))
    for h in (0, 1):
        scores[halves == h] = OodGaussian.fit(features[halves != h]).score(features[halves == h])
    return scores


def fit_ood(
    det: FractureDetector,
    paths: Sequence[str | Path],
    current: dict[str, Any] | None,
    train_paths: Sequence[str | Path] | None = None,
    quantile: float = QUANTILE,
) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """The model's new OOD statistics (`ModelSpec.ood`) from the calibration images `paths` (and, for a model
    without statistics, the split's `train_paths`), and the record of what was done (info["calibration"]["ood"])."""
    features = features_of(det, paths)
    if features is None:
        return current, {"method": "none: the model has no ood_features output"}
    previous = None if current is None else current.get("threshold")
    if current is None and train_paths:
        train = features_of(det, train_paths)
        assert train is not None  # (the same graph)
        g = OodGaussian.fit(train).with_threshold(features, quantile)
        method = "Gaussian on the split's training images, threshold on these"
    elif len(features) >= MIN_REFIT:
        scores = cross_fitted_scores(features)
        g = replace(
            OodGaussian.fit(features),
            threshold=float(np.quantile(scores, quantile)),
            quantile=quantile,
            n_threshold=len(features),
        )
        method = "Gaussian refitted on these images, threshold on their two-fold cross-fitted scores"
    elif current is not None:
        g = OodGaussian.from_dict(current).with_threshold(features, quantile)
        method = f"threshold only (fewer than {MIN_REFIT} images to refit the Gaussian)"
    else:
        return None, {
            "method": f"none: the model has no OOD statistics and {len(features)} images are fewer than "
            f"{MIN_REFIT} (give --split with a train subset, or more images)"
        }
    flagged = float(1 - g.in_distribution(g.score(features)).mean())
    record = {
        "method": method,
        "n_fit": g.n_fit,
        "n_threshold": g.n_threshold,
        "quantile": quantile,
        "threshold": g.threshold,
        "previous_threshold": previous,
        # in-sample: ~1 - quantile where the threshold came from these images' own scores (less where they also
        # fitted the Gaussian: a fit set lies closer to its Gaussian than new images)
        "flagged_here": flagged,
    }
    return g.to_dict(), record
