from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from bonefrac.metrics import (
    MIN_PER_CLASS,
    auc,
    auc_ci,
    choose_operating_points,
    discrimination,
    localization_scores,
    operating_point_stats,
)


def _scores(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.2).astype(int)
    p = np.clip(rng.normal(0.3 + 0.3 * y, 0.15), 0, 1).round(2)  # rounded: ties exercise the tie handling
    return y, p


def test_auc_matches_sklearn_and_ci_brackets_it() -> None:
    y, p = _scores()
    assert auc(y, p) == pytest.approx(roc_auc_score(y, p))
    lo, hi = auc_ci(y, p, n_boot=500)
    assert lo < auc(y, p) < hi
    assert 0.02 < hi - lo < 0.2


def test_bootstrap_auc_counts_ties_as_half() -> None:
    """auc_ci's own Mann-Whitney computation, where every resample's AUC is known by hand, and on tied scores."""
    y = np.array([1] * 5 + [0] * 7)
    assert auc_ci(y, np.full(12, 0.4), n_boot=200) == [0.5, 0.5]  # all tied: every pair counts a half
    separable = np.where(y == 1, 0.9, 0.1)
    assert auc_ci(y, separable, n_boot=200) == [1.0, 1.0]
    assert auc_ci(y, 1 - separable, n_boot=200) == [0.0, 0.0]
    # 7% of the pairs tied: counting them as 0 or 1 would move the bootstrap's middle by 0.03
    y, p = _scores(400, seed=5)
    p = p.round(1)
    middle = np.mean(auc_ci(y, p, n_boot=2000, alpha=0.98))  # the 49th and 51st percentiles
    assert middle == pytest.approx(roc_auc_score(y, p), abs=0.01)


def test_single_class_gives_nan_not_an_exception() -> None:
    assert np.isnan(auc(np.zeros(5), np.linspace(0, 1, 5)))
    assert all(np.isnan(auc_ci(np.zeros(5), np.linspace(0, 1, 5))))


def test_operating_points_meet_their_targets_on_the_data_they_were_chosen_on() -> None:
    y, p = _scores(1000, seed=1)
    points = choose_operating_points(y, p)
    assert points["high_sensitivity"] <= points["default"] <= points["high_specificity"]
    assert operating_point_stats(y, p, points["high_sensitivity"])["sensitivity"] >= 0.90
    assert operating_point_stats(y, p, points["high_specificity"])["specificity"] >= 0.90
    for t in points.values():  # never on a score: rounding noise cannot flip the image that decides it
        assert np.abs(p - t).min() >= 0.004  # (scores here are multiples of 0.01)
        nudged = [operating_point_stats(y, p + e, t)["sensitivity"] for e in (-1e-6, 0.0, 1e-6)]
        assert len(set(nudged)) == 1


def test_operating_point_stats_counts() -> None:
    y = np.array([1, 1, 0, 0, 0])
    p = np.array([0.9, 0.2, 0.8, 0.1, 0.1])
    s = operating_point_stats(y, p, 0.5)
    assert (s["tp"], s["fn"], s["fp"], s["tn"]) == (1, 1, 1, 2)
    assert s["sensitivity"] == 0.5 and s["specificity"] == pytest.approx(2 / 3)
    assert s["ppv"] == 0.5 and s["npv"] == pytest.approx(2 / 3)


def test_localization_scores() -> None:
    truth = [[[10, 10, 20, 20]], [[50, 50, 60, 60]]]
    peaks = [(15, 15), (0, 0)]
    preds = [[[11, 11, 21, 21, 0.9]], []]
    s = localization_scores(peaks, preds, truth)
    assert s["pointing_game"] == 0.5
    assert s["box_precision"] == 1.0 and s["box_recall"] == 0.5


def test_named_points_never_cross_the_default() -> None:
    """Where Youden's point is already more specific than 90%, high_specificity is not made less specific."""
    y = np.array([0] * 50 + [1] * 10)
    p = np.concatenate([np.linspace(0, 0.5, 50), np.linspace(0.55, 1.0, 10)])  # perfectly separable
    points = choose_operating_points(y, p)
    assert points["high_sensitivity"] <= points["default"] <= points["high_specificity"]
    for name in ("high_sensitivity", "high_specificity"):
        s = operating_point_stats(y, p, points[name])
        assert s["sensitivity"] >= 0.9 and s["specificity"] >= 0.9


def test_discrimination_is_the_one_summary() -> None:
    """Counts, AUC, CI and every operating point's statistics, each equal to its own function's answer."""
    y, p = _scores(300, seed=2)
    points = {"default": 0.45, "high_sensitivity": 0.3}
    d = discrimination(y, p, points)
    assert (d["n"], d["n_positive"]) == (300, int(y.sum()))
    assert d["auc"] == pytest.approx(roc_auc_score(y, p)) and d["auc_ci95"] == auc_ci(y, p)
    assert d["operating_points"] == {k: operating_point_stats(y, p, t) for k, t in points.items()}
    assert d["caveat"] is None  # ~60 fractures and ~240 without


@pytest.mark.parametrize(
    ("n_pos", "n_neg", "expected"),
    [
        (MIN_PER_CLASS, MIN_PER_CLASS, None),
        (MIN_PER_CLASS - 1, 50, "too few fractures (n=9) for a stable AUC; 95% CI "),
        (3, 4, "too few fractures (n=3) and images without a fracture (n=4) for a stable AUC; 95% CI "),
        (1, 50, "too few fractures (n=1) for a stable AUC; no CI with under 2 of a class"),
        (0, 50, "no fractured images: AUC undefined"),
        (20, 0, "no images without a fracture: AUC undefined"),
    ],
)
def test_small_groups_carry_a_caveat_with_their_ci(n_pos: int, n_neg: int, expected: str | None) -> None:
    """A group with fewer than MIN_PER_CLASS images of a class is never a bare "AUC 1.000"."""
    y = np.array([1] * n_pos + [0] * n_neg)
    p = np.concatenate([np.linspace(0.6, 1.0, n_pos), np.linspace(0.0, 0.5, n_neg)])  # perfectly separated
    d = discrimination(y, p, {"default": 0.55})
    if expected is None:
        assert d["caveat"] is None
    else:
        assert d["caveat"].startswith(expected), d["caveat"]
    if expected and expected.endswith("95% CI "):  # the CI in the caveat is the one reported beside it
        lo, hi = d["auc_ci95"]
        assert d["caveat"].endswith(f"{lo:.2f}-{hi:.2f}") and d["auc"] == 1.0
