"""Out-of-distribution score: how unlike the model's training images an image is, from features it computes.

The detector's graph has one extra output, `ood_features` (N, 152): the spatial mean of each channel of two
backbone taps, c8 (after block 5, 40 channels) and c16 (after block 11, 112 channels), letterbox padding
included. Here, in numpy alone (predicting through onnxruntime imports no torch):

1. standardise each feature by the fit set's mean and std;
2. a Ledoit-Wolf Gaussian (sklearn, imported only to fit) gives the squared Mahalanobis distance d²;
3. ood_score = (d² - mean d²) / std d² over the fit set: ~0 typical, larger = less like the fit images;
4. in_distribution = ood_score <= threshold, the `QUANTILE` of the scores of held-out in-distribution images
   (validation, or a site's own images in `bonefrac calibrate`): scores of the fit images themselves are
   optimistic, so a threshold taken from them would flag too many new images.

The shallow taps react to acquisition and processing (zoom, crops, sharpening, inversion, non-radiographs);
the head's features or the later taps separate such images worse (docs/, bench/). The statistics travel in
the checkpoint's spec (`ModelSpec.ood`, `OodGaussian.to_dict`) as plain lists.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

#: The name of the detector graph's extra output.
OUTPUT = "ood_features"
#: (tap, channels) of the pooled backbone taps, in the order the graph concatenates them.
TAPS = (("c8", 40), ("c16", 112))
FEATURES = sum(c for _, c in TAPS)
#: The share of held-out in-distribution images called in distribution at the threshold.
QUANTILE = 0.99
#: `bonefrac calibrate` refits the Gaussian on a site's images from this many on (a 152-dimensional
#: covariance from fewer is mostly shrinkage); below it only the threshold moves.
MIN_REFIT = 300
#: What an out-of-distribution image's `Prediction.warnings` says.
WARNING = "unlike the images this model was trained on: results less reliable"
#: Fields stored as arrays (float32 lists in the spec).
_ARRAYS = ("mean", "std", "location", "precision")


@dataclass(frozen=True)
class OodGaussian:
    """A Ledoit-Wolf Gaussian over standardised features, its d² z-scored by the fit set's, and a threshold.

    Attributes:
        mean, std: per-feature standardisation (the fit set's).
        location, precision: the Gaussian's mean and inverse covariance on standardised features.
        d2_mean, d2_std: mean and standard deviation of d² over the fit set.
        threshold: ood_score above it is out of distribution (None: not set, every image is in).
        quantile: the quantile of the held-out scores the threshold is.
        n_fit, n_threshold: images the Gaussian and the threshold were fitted on.
    """

    mean: np.ndarray
    std: np.ndarray
    location: np.ndarray
    precision: np.ndarray
    d2_mean: float
    d2_std: float
    threshold: float | None = None
    quantile: float = QUANTILE
    n_fit: int = 0
    n_threshold: int = 0

    @classmethod
    def fit(cls, features: np.ndarray) -> OodGaussian:
        """The Gaussian of `features` (N, D), N > 1; no threshold yet (`with_threshold`)."""
        from sklearn.covariance import LedoitWolf

        x = _features(features)
        if len(x) < 2:
            raise ValueError(f"fitting an OOD Gaussian needs at least 2 images, got {len(x)}")
        mean, std = x.mean(0), x.std(0) + 1e-6  # (a constant feature would divide by zero)
        lw = LedoitWolf().fit((x - mean) / std)
        g = cls(mean, std, lw.location_, lw.precision_, 0.0, 1.0, n_fit=len(x))
        d2 = g.d2(x)
        return replace(g, d2_mean=float(d2.mean()), d2_std=float(max(d2.std(), 1e-12)))

    def d2(self, features: np.ndarray) -> np.ndarray:
        """Squared Mahalanobis distances (N,) of `features` (N, D) from the Gaussian."""
        y = (_features(features) - self.mean) / self.std - self.location
        return np.einsum("ij,jk,ik->i", y, self.precision, y)

    def score(self, features: np.ndarray) -> np.ndarray:
        """ood_score (N,): d² z-scored by the fit set's."""
        return (self.d2(features) - self.d2_mean) / self.d2_std

    def with_threshold(self, features: np.ndarray, quantile: float = QUANTILE) -> OodGaussian:
        """The same Gaussian thresholded at `quantile` of the scores of held-out in-distribution `features`."""
        scores = self.score(features)
        if not len(scores):
            raise ValueError("choosing an OOD threshold needs at least one image")
        return replace(self, threshold=float(np.quantile(scores, quantile)), quantile=quantile, n_threshold=len(scores))

    def in_distribution(self, scores: np.ndarray) -> np.ndarray:
        """score <= threshold (all True without a threshold)."""
        scores = np.asarray(scores, dtype=np.float64)
        return np.ones(scores.shape, bool) if self.threshold is None else scores <= self.threshold

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types: the arrays as float32-rounded lists (what `ModelSpec.ood` holds)."""
        arrays = {k: np.asarray(getattr(self, k), np.float32).tolist() for k in _ARRAYS}
        return {
            **arrays,
            "d2_mean": self.d2_mean,
            "d2_std": self.d2_std,
            "threshold": self.threshold,
            "quantile": self.quantile,
            "n_fit": self.n_fit,
            "n_threshold": self.n_threshold,
            "features": [f"{tap}_mean" for tap, _ in TAPS],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> OodGaussian:
        arrays = {k: np.asarray(d[k], dtype=np.float64) for k in _ARRAYS}
        threshold = d.get("threshold")
        return cls(
            **arrays,
            d2_mean=float(d["d2_mean"]),
            d2_std=float(d["d2_std"]),
            threshold=None if threshold is None else float(threshold),
            quantile=float(d.get("quantile", QUANTILE)),
            n_fit=int(d.get("n_fit", 0)),
            n_threshold=int(d.get("n_threshold", 0)),
        )


def _features(features: np.ndarray) -> np.ndarray:
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"OOD features are (N, D), got shape {x.shape}")
    return x


_LOADED: dict[int, tuple[dict[str, Any], OodGaussian]] = {}


def gaussian_of(stats: dict[str, Any]) -> OodGaussian:
    """`OodGaussian.from_dict(stats)`, remembered per dict object: decoding every batch of a run reads the
    same spec's statistics, and rebuilding a 152 x 152 matrix from lists each time would be wasted."""
    hit = _LOADED.get(id(stats))
    if hit is None or hit[0] is not stats:
        if len(_LOADED) > 8:
            _LOADED.clear()
        hit = _LOADED[id(stats)] = (stats, OodGaussian.from_dict(stats))
    return hit[1]


def scores_and_flags(
    stats: dict[str, Any] | None, features: np.ndarray | None, n: int
) -> list[tuple[float, bool] | None]:
    """Per image of a batch of `n`: (ood_score, in_distribution), or None when the model has no statistics or
    its graph no `ood_features` output (classifiers, older checkpoints and exports)."""
    if stats is None or features is None:
        return [None] * n
    g = gaussian_of(stats)
    s = g.score(features)
    return [(float(v), bool(f)) for v, f in zip(s, g.in_distribution(s), strict=True)]
