"""Discrimination, operating points, calibration and localisation scores (scikit-learn where it has them)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.metrics import confusion_matrix, roc_auc_score

from bonefrac.errors import DatasetError
from bonefrac.spec import DEFAULT_OPERATING_POINTS

#: Targets for the named operating points, chosen on the validation split only.
HIGH_SENSITIVITY_TARGET = 0.90
HIGH_SPECIFICITY_TARGET = 0.95

#: Below this many fractured, or unfractured, images one image moves the AUC by several points and a
#: sensitivity by 10% or more: such figures come with their CI and a caveat, never as a bare "AUC 1.000".
MIN_PER_CLASS = 10


def auc(y: np.ndarray, p: np.ndarray) -> float:
    y = np.asarray(y)
    return float(roc_auc_score(y, p)) if len(np.unique(y)) == 2 else float("nan")


def auc_ci(y: np.ndarray, p: np.ndarray, n_boot: int = 2000, seed: int = 0, alpha: float = 0.05) -> list[float]:
    """Percentile bootstrap CI for the AUC, resampling positives and negatives separately (stratified)."""
    y, p = np.asarray(y), np.asarray(p, dtype=np.float64)
    pos, neg = p[y == 1], p[y == 0]
    if len(pos) < 2 or len(neg) < 2:
        return [float("nan"), float("nan")]
    rng = np.random.default_rng(seed)
    aucs = np.empty(n_boot)
    for b in range(n_boot):
        bp = rng.choice(pos, len(pos))
        bn = np.sort(rng.choice(neg, len(neg)))
        # Mann-Whitney U: P(pos > neg) + 0.5 P(tie), via sorted negatives -- the same value roc_auc_score gives.
        below = np.searchsorted(bn, bp, side="left")
        ties = np.searchsorted(bn, bp, side="right") - below
        aucs[b] = (below.sum() + 0.5 * ties.sum()) / (len(bp) * len(bn))
    return [float(np.quantile(aucs, alpha / 2)), float(np.quantile(aucs, 1 - alpha / 2))]


def choose_operating_points(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """Three distinct thresholds on validation probabilities `p`, always high_sensitivity < default <
    high_specificity:

    - high_sensitivity: the highest threshold with sensitivity >= `HIGH_SENSITIVITY_TARGET`;
    - high_specificity: the lowest threshold with specificity >= `HIGH_SPECIFICITY_TARGET` (the most specific
      threshold there is when none reaches it);
    - default: Youden's J (sensitivity + specificity - 1; the highest threshold among equals), clipped
      strictly between the two.

    Where both targets hold over a range of thresholds (a model better than them), the two named points
    swap ends: high_sensitivity takes the range's lowest threshold, high_specificity its highest, so each
    is as sensitive (specific) as it can be with both targets met. Where the named points are too close to
    leave a threshold between them, they move apart one threshold at a time, high_specificity first: a named
    point only ever moves towards its own aim. Scores with fewer than three thresholds to choose from (all
    equal, say, as from a model that has learnt nothing yet) carry nothing to choose with: the spec's
    `DEFAULT_OPERATING_POINTS` are returned.

    Each threshold sits halfway between the validation score it admits and the next lower one (below the
    lowest score: half of it; above the highest: halfway to 1): on a score itself, the image deciding the
    figure would flip with float rounding (torch vs onnxruntime: ~1e-6). Raises `DatasetError` unless both
    classes are present."""
    y, p = np.asarray(y).astype(int), np.asarray(p, dtype=np.float64)
    pos, neg = np.sort(p[y == 1]), np.sort(p[y == 0])
    if not len(pos) or not len(neg):
        raise DatasetError(f"operating points need both classes ({len(pos)} fractured, {len(neg)} not)")
    u = np.unique(p)
    # Threshold k admits the scores >= u[k] (k = len(u): none, only while a threshold above them is below 1).
    thresholds = np.concatenate([[u[0] / 2], (u[:-1] + u[1:]) / 2, [(u[-1] + 1) / 2] if u[-1] < 1 else []])
    if len(thresholds) < 3:
        return dict(DEFAULT_OPERATING_POINTS)
    lowest_admitted = np.append(u, np.inf)[: len(thresholds)]
    tp = len(pos) - np.searchsorted(pos, lowest_admitted, side="left")
    tn = np.searchsorted(neg, lowest_admitted, side="left")
    hs = int(np.nonzero(tp >= HIGH_SENSITIVITY_TARGET * len(pos) - 1e-9)[0][-1])
    specific = np.nonzero(tn >= HIGH_SPECIFICITY_TARGET * len(neg) - 1e-9)[0]
    hsp = int(specific[0]) if len(specific) else len(thresholds) - 1
    lo, hi = min(hs, hsp), max(hs, hsp)
    while hi - lo < 2:
        if hi < len(thresholds) - 1:
            hi += 1
        else:
            lo -= 1
    j = tp * len(neg) + tn * len(pos)  # Youden's J x n+ x n- (+ const): integers, so equal J compare equal
    default = int(np.nonzero(j == j.max())[0][-1])
    default = min(max(default, lo + 1), hi - 1)
    return {
        "default": float(thresholds[default]),
        "high_sensitivity": float(thresholds[lo]),
        "high_specificity": float(thresholds[hi]),
    }


def operating_point_stats(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, float]:
    """Sensitivity, specificity, PPV, NPV and the confusion counts at `probability >= threshold`."""
    pred = (np.asarray(p) >= threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(np.asarray(y), pred, labels=[0, 1]).ravel()

    def ratio(a: int, b: int) -> float:
        return float(a / b) if b else float("nan")

    return {
        "threshold": float(threshold),
        "sensitivity": ratio(tp, tp + fn),
        "specificity": ratio(tn, tn + fp),
        "ppv": ratio(tp, tp + fp),
        "npv": ratio(tn, tn + fn),
        "sensitivity_ci95": wilson_ci(int(tp), int(tp + fn)),
        "specificity_ci95": wilson_ci(int(tn), int(tn + fp)),
        "ppv_ci95": wilson_ci(int(tp), int(tp + fp)),
        "npv_ci95": wilson_ci(int(tn), int(tn + fn)),
        "tp": int(tp),
        "fp": int(fp),
        "tn": int(tn),
        "fn": int(fn),
    }


def wilson_ci(successes: int, n: int, confidence: float = 0.95) -> list[float]:
    """Wilson score interval of a proportion `successes / n`: unlike the normal approximation it stays inside
    [0, 1] and is not of zero width at 0/n or n/n, where a small evaluation set puts many sensitivities.
    [nan, nan] when n is 0."""
    from scipy.stats import norm

    if n <= 0:
        return [float("nan"), float("nan")]
    z = float(norm.ppf(0.5 + confidence / 2))
    p, z2 = successes / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * np.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    # At 0/n and n/n the interval touches 0 (or 1) exactly; the float sum would leave it 1e-16 short.
    lo = 0.0 if successes == 0 else max(0.0, centre - half)
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return [float(lo), float(hi)]


def auc_verdict(d: Mapping[str, Any], what: str = "this set") -> str:
    """One plain sentence on whether the AUC `d["auc"]` with its 95% CI `d["auc_ci95"]` shows the model
    telling fractured from other images on `what`: a CI including 0.5 is no evidence that it does."""
    a, (lo, hi) = d.get("auc", float("nan")), d.get("auc_ci95", (float("nan"), float("nan")))
    if not np.isfinite(a):
        return f"AUC undefined: {what} lacks images of one class; no conclusion on discrimination"
    if not np.isfinite([lo, hi]).all():
        return f"AUC {a:.2f} with no CI (under 2 images of a class): no conclusion on discrimination from {what}"
    head = f"AUC {a:.2f}, 95% CI {lo:.2f}-{hi:.2f}"
    if lo <= 0.5 <= hi:
        return f"{head} includes 0.5: no evidence that the model discriminates on {what}"
    if hi < 0.5:
        return f"{head} lies below 0.5: the model ranks {what} against its labels (labels swapped?)"
    return f"{head} excludes 0.5: the model discriminates fractured from other images on {what}"


def discrimination(y: np.ndarray, p: np.ndarray, operating_points: Mapping[str, float]) -> dict[str, Any]:
    """The one summary of how well scores `p` separate labels `y`: counts, AUC with its bootstrap CI, the
    statistics at each named threshold, and `caveat` (a sentence, or None) when the group is too small."""
    y, p = np.asarray(y).astype(int), np.asarray(p, dtype=np.float64)
    ci = auc_ci(y, p)
    return {
        "n": int(len(y)),
        "n_positive": int(y.sum()),
        "auc": auc(y, p),
        "auc_ci95": ci,
        "operating_points": {k: operating_point_stats(y, p, t) for k, t in operating_points.items()},
        "caveat": small_sample_caveat(int(y.sum()), int(len(y) - y.sum()), ci),
    }


#: The specificity at which `bonefrac evaluate` reads the sensitivity off the ROC (issue 16's comparison).
ROC_SPECIFICITY = 0.90


def sensitivity_at_specificity(y: np.ndarray, p: np.ndarray, specificity: float = ROC_SPECIFICITY) -> dict[str, Any]:
    """The ROC's best sensitivity among the thresholds whose specificity is at least `specificity`: the model's
    ranking read at a fixed specificity, with no operating point chosen on any data (so models compare alike).

    Thresholds are the scores themselves (`probability >= threshold` is positive), every tie kept together;
    the returned `specificity` is the one reached there (>= the target). nan without both classes."""
    y, p = np.asarray(y).astype(int), np.asarray(p, dtype=np.float64)
    pos, neg = np.sort(p[y == 1]), np.sort(p[y == 0])
    out: dict[str, Any] = {"target_specificity": float(specificity)}
    if not len(pos) or not len(neg):
        return out | {"sensitivity": float("nan"), "specificity": float("nan"), "threshold": float("nan")}
    # Candidate thresholds: every distinct score, and one above them all (nothing positive: specificity 1).
    t = np.append(np.unique(p), np.inf)
    tn = np.searchsorted(neg, t, side="left")  # negatives below the threshold
    tp = len(pos) - np.searchsorted(pos, t, side="left")
    ok = tn >= specificity * len(neg) - 1e-9  # counts, not rates: no float rounding at exactly 90%
    k = int(np.nonzero(ok)[0][0])  # the lowest admissible threshold: the most sensitive
    return out | {
        "sensitivity": float(tp[k] / len(pos)),
        "specificity": float(tn[k] / len(neg)),
        "threshold": float(t[k]),
    }


#: Equal-width probability bins of the expected calibration error (the common choice since Guo et al. 2017).
ECE_BINS = 15


def calibration(y: np.ndarray, p: np.ndarray, bins: int = ECE_BINS) -> dict[str, Any]:
    """How far the probabilities `p` are from the observed frequencies of `y`:

    - ece: expected calibration error, sum over `bins` equal-width bins of [0, 1] of (share of images in the
      bin) x |fraction fractured - mean probability| (the last bin includes 1.0; empty bins count nothing);
    - brier: mean squared difference between probability and label (scikit-learn's Brier score).
    """
    from sklearn.metrics import brier_score_loss

    y, p = np.asarray(y).astype(int), np.asarray(p, dtype=np.float64)
    if not len(y):
        return {"ece": float("nan"), "brier": float("nan"), "bins": bins, "n": 0}
    which = np.minimum((p * bins).astype(int), bins - 1)
    ece = sum(abs(y[which == b].mean() - p[which == b].mean()) * (which == b).mean() for b in np.unique(which))
    return {"ece": float(ece), "brier": float(brier_score_loss(y, p, pos_label=1)), "bins": bins, "n": int(len(y))}


def small_sample_caveat(n_positive: int, n_negative: int, ci: Sequence[float]) -> str | None:
    """A plain sentence when fewer than `MIN_PER_CLASS` images of either class make the figures unstable."""
    if n_positive == 0 or n_negative == 0:
        missing = "fractured images" if n_positive == 0 else "images without a fracture"
        return f"no {missing}: AUC undefined"
    few = []
    if n_positive < MIN_PER_CLASS:
        few.append(f"fractures (n={n_positive})")
    if n_negative < MIN_PER_CLASS:
        few.append(f"images without a fracture (n={n_negative})")
    if not few:
        return None
    lo, hi = ci
    spread = f"95% CI {lo:.2f}-{hi:.2f}" if np.isfinite([lo, hi]).all() else "no CI with under 2 of a class"
    return f"too few {' and '.join(few)} for a stable AUC; {spread}"


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def localization_scores(
    peaks: list[tuple[float, float]],
    pred_boxes: list[list[list[float]]],
    true_boxes: list[list[list[float]]],
    iou_threshold: float = 0.3,
) -> dict[str, float]:
    """Over fractured images with ground-truth boxes:

    - pointing_game: share whose heatmap peak (x, y) falls inside any ground-truth box;
    - box precision: share of predicted boxes matching a ground-truth box at IoU >= threshold;
    - box recall: share of ground-truth boxes matched by a predicted box.
    """
    hits = matched_pred = n_pred = matched_true = n_true = 0
    for (px, py), preds, trues in zip(peaks, pred_boxes, true_boxes, strict=True):
        hits += any(t[0] <= px <= t[2] and t[1] <= py <= t[3] for t in trues)
        n_pred += len(preds)
        n_true += len(trues)
        matched_pred += sum(any(iou(b, t) >= iou_threshold for t in trues) for b in preds)
        matched_true += sum(any(iou(b, t) >= iou_threshold for b in preds) for t in trues)
    n = len(peaks)
    return {
        "n_images": n,
        "pointing_game": hits / n if n else float("nan"),
        "iou_threshold": iou_threshold,
        "box_precision": matched_pred / n_pred if n_pred else float("nan"),
        "box_recall": matched_true / n_true if n_true else float("nan"),
    }


#: The box-size terciles of `localization_by_box_size`, smallest boxes first.
BOX_SIZE_TERCILES = ("small", "medium", "large")


def localization_by_box_size(
    peaks: list[tuple[float, float]],
    pred_boxes: list[list[list[float]]],
    true_boxes: list[list[list[float]]],
    iou_threshold: float = 0.3,
) -> list[dict[str, Any]]:
    """`localization_scores` in three groups of images by fracture size: a model that finds only the large,
    obvious fractures shows it here, where one pointing game over all of them hides it.

    An image's size is the longest side, in image pixels, of its smallest ground-truth box (by area): the
    fracture hardest to see. The images are split at `np.quantile` 1/3 and 2/3 of those sizes: small up to
    the first cut, medium up to the second, large above it (an image on a cut goes to the smaller group).
    Each group's dict has its `tercile` name, `size_px` [smallest, largest] (nan when empty) and the scores.
    """
    sizes = np.array([smallest_box_side(t) for t in true_boxes], dtype=np.float64)
    cuts = np.quantile(sizes, [1 / 3, 2 / 3]) if len(sizes) else np.array([np.nan, np.nan])
    which = np.searchsorted(cuts, sizes, side="left")  # 0 at or below the first cut, 1 to the second, 2 above
    out = []
    for k, name in enumerate(BOX_SIZE_TERCILES):
        ix = np.nonzero(which == k)[0]
        size_px = [float(sizes[ix].min()), float(sizes[ix].max())] if len(ix) else [float("nan")] * 2
        scores = localization_scores(
            [peaks[i] for i in ix], [pred_boxes[i] for i in ix], [true_boxes[i] for i in ix], iou_threshold
        )
        out.append({"tercile": name, "size_px": size_px, **scores})
    return out


def smallest_box_side(boxes: Sequence[Sequence[float]]) -> float:
    """The longest side of the smallest (by area) of `boxes` [x0, y0, x1, y1]."""
    x0, y0, x1, y1 = min(boxes, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]))[:4]
    return float(max(x1 - x0, y1 - y0))
