from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from bonefrac.errors import DatasetError
from bonefrac.evaluation.metrics import (
    HIGH_SENSITIVITY_TARGET,
    HIGH_SPECIFICITY_TARGET,
    MIN_PER_CLASS,
    auc,
    auc_ci,
    choose_operating_points,
    discrimination,
    localization_by_box_size,
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
    assert points["high_sensitivity"] < points["default"] < points["high_specificity"]
    hs = operating_point_stats(y, p, points["high_sensitivity"])
    hsp = operating_point_stats(y, p, points["high_specificity"])
    assert hs["sensitivity"] >= HIGH_SENSITIVITY_TARGET and hsp["specificity"] >= HIGH_SPECIFICITY_TARGET
    # the highest / lowest such: one score further, the target is missed
    assert operating_point_stats(y, p, _next_score(p, points["high_sensitivity"]))["sensitivity"] < 0.90
    assert operating_point_stats(y, p, _previous_score(p, points["high_specificity"]))["specificity"] < 0.95
    # the default is Youden's point here (it falls between the two)
    j = {t: _youden(y, p, t) for t in np.unique(p)}
    assert _youden(y, p, points["default"]) == max(j.values())
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


def test_localization_by_box_size_splits_at_the_terciles_of_the_smallest_box() -> None:
    # Six images whose smallest boxes have long sides 10..60 px: the cuts (np.quantile 1/3, 2/3: 26.7, 43.3)
    # put two in each tercile. Image 1's smallest box is its second (20 x 10), not its first (200 x 200).
    truth = [
        [[0, 0, 10, 5]],
        [[100, 100, 300, 300], [0, 0, 20, 10]],
        [[0, 0, 30, 30]],
        [[0, 0, 5, 40]],
        [[0, 0, 50, 50]],
        [[0, 0, 60, 10]],
    ]
    peaks = [(5, 2), (500, 500), (40, 40), (50, 50), (25, 25), (30, 5)]
    preds = [[[0, 0, 10, 5, 0.9]], [], [[0, 0, 30, 30, 0.8]], [], [[1, 1, 50, 50, 0.7]], [[0, 0, 60, 10, 0.6]]]
    small, medium, large = localization_by_box_size(peaks, preds, truth)
    assert [t["tercile"] for t in (small, medium, large)] == ["small", "medium", "large"]
    assert [t["n_images"] for t in (small, medium, large)] == [2, 2, 2]
    assert (small["size_px"], medium["size_px"], large["size_px"]) == ([10, 20], [30, 40], [50, 60])
    # small: one peak of two in a box, one GT box of three found; medium: no peak, one box of two; large: all.
    assert (small["pointing_game"], small["box_recall"]) == (0.5, pytest.approx(1 / 3))
    assert (medium["pointing_game"], medium["box_recall"]) == (0.0, 0.5)
    assert (large["pointing_game"], large["box_recall"]) == (1.0, 1.0) and large["iou_threshold"] == 0.3
    # The groups together are the whole: the same rules as localization_scores.
    whole = localization_scores(peaks, preds, truth)
    assert whole["pointing_game"] == pytest.approx(
        sum(t["pointing_game"] * t["n_images"] for t in (small, medium, large)) / 6
    )
    # An image on a cut goes to the smaller group: equal sizes all land in "small", the others stay empty.
    same = localization_by_box_size(peaks[:3], preds[:3], [[[0, 0, 10, 10]]] * 3)
    assert [t["n_images"] for t in same] == [3, 0, 0] and np.isnan(same[2]["pointing_game"])
    assert np.isnan(same[1]["size_px"]).all()


def test_a_model_better_than_both_targets_gets_its_named_points_at_the_ends_of_the_range() -> None:
    """Perfectly separable: every threshold between the classes meets both targets. high_sensitivity takes the
    lowest of them, high_specificity the highest, and both hold both targets."""
    y = np.array([0] * 50 + [1] * 10)
    p = np.concatenate([np.linspace(0, 0.5, 50), np.linspace(0.55, 1.0, 10)])
    points = choose_operating_points(y, p)
    assert points["high_sensitivity"] < points["default"] < points["high_specificity"]
    for name in ("high_sensitivity", "high_specificity"):
        s = operating_point_stats(y, p, points[name])
        assert s["sensitivity"] >= HIGH_SENSITIVITY_TARGET and s["specificity"] >= HIGH_SPECIFICITY_TARGET
    assert operating_point_stats(y, p, points["default"])["sensitivity"] == 1.0
    # the lowest threshold with 95% specificity (48 of 50 below), the highest with 90% sensitivity (9 of 10 above)
    assert points["high_sensitivity"] == pytest.approx((p[47] + p[48]) / 2)
    assert points["high_specificity"] == pytest.approx((p[50] + p[51]) / 2)


@pytest.mark.parametrize("n", [2, 3, 4, 5, 8, 20, 60])
@pytest.mark.parametrize("seed", range(6))
def test_operating_points_are_distinct_and_ordered_on_any_data(n: int, seed: int) -> None:
    """Random labels and scores, tiny groups, ties, no signal: three distinct ordered thresholds, none on a
    score, each named one meeting its target wherever some threshold does."""
    rng = np.random.default_rng(seed)
    y = np.array([0, 1] + list(rng.integers(0, 2, n - 2)))
    p = rng.random(n).round(int(rng.integers(1, 3)))  # rounded: ties
    points = choose_operating_points(y, p)
    if len(np.unique(p)) < 2 or (len(np.unique(p)) == 2 and p.max() == 1.0):
        return  # fewer than three thresholds: the next test
    assert 0 <= points["high_sensitivity"] < points["default"] < points["high_specificity"] < 1
    assert all(t not in set(p) or t == 0 for t in points.values())  # (0: all admitted, whatever the rounding)
    assert operating_point_stats(y, p, points["high_sensitivity"])["sensitivity"] >= HIGH_SENSITIVITY_TARGET
    hsp = operating_point_stats(y, p, points["high_specificity"])
    if p.max() < 1:  # (no threshold <= 1 leaves out an image scoring 1.0: then the most specific there is)
        assert hsp["specificity"] >= HIGH_SPECIFICITY_TARGET
    else:
        assert hsp["specificity"] == operating_point_stats(y, p, 1.0)["specificity"]


def test_operating_points_on_degenerate_scores() -> None:
    """Fewer than three thresholds to choose from: the spec's defaults (distinct, ordered). Two distinct scores:
    below both, between, above both. One class: an error, not a guess."""
    defaults = {"default": 0.5, "high_sensitivity": 0.3, "high_specificity": 0.7}
    y = np.array([0, 1, 0, 1])
    assert choose_operating_points(y, np.full(4, 0.4)) == defaults  # a model that has learnt nothing
    assert choose_operating_points(y, np.full(4, 1.0)) == defaults  # saturated
    assert choose_operating_points(y, np.array([0.2, 1.0, 0.2, 1.0])) == defaults  # nothing above 1.0
    two = choose_operating_points(y, np.array([0.2, 0.6, 0.2, 0.6]))
    assert two == {"high_sensitivity": 0.1, "default": pytest.approx(0.4), "high_specificity": 0.8}
    # all fractured images score 0: specificity 95% only above everything, sensitivity 90% only below
    y = np.array([1, 1, 0, 0, 0])
    points = choose_operating_points(y, np.array([0.0, 0.0, 0.3, 0.5, 0.9]))
    assert points == {"high_sensitivity": 0.0, "default": 0.7, "high_specificity": pytest.approx(0.95)}
    with pytest.raises(DatasetError, match="both classes"):
        choose_operating_points(np.zeros(5), np.linspace(0.1, 0.9, 5))
    with pytest.raises(DatasetError, match="both classes"):
        choose_operating_points(np.array([]), np.array([]))


def _youden(y: np.ndarray, p: np.ndarray, t: float) -> float:
    s = operating_point_stats(y, p, t)
    return round(s["sensitivity"] + s["specificity"] - 1, 12)


def _next_score(p: np.ndarray, t: float) -> float:
    """A threshold just above the lowest score at or above `t` (it leaves that score out)."""
    return float(np.nextafter(p[p >= t].min(), 2))


def _previous_score(p: np.ndarray, t: float) -> float:
    """A threshold at the highest score below `t` (it admits that score)."""
    return float(p[p < t].max())


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


@pytest.mark.parametrize(("k", "n"), [(0, 10), (10, 10), (99, 114), (1, 3), (57, 653)])
def test_wilson_ci_inverts_the_score_test(k: int, n: int) -> None:
    """Each end of the Wilson interval is the p0 at which the score statistic |k/n - p0| / sqrt(p0 (1 - p0) / n)
    equals z = 1.95996 (0 and 1 exactly at 0/n and n/n); the textbook value 0/10 -> 0.2775 as a spot check."""
    from scipy.stats import norm

    from bonefrac.evaluation.metrics import wilson_ci

    lo, hi = wilson_ci(k, n)
    z = norm.ppf(0.975)
    assert 0 <= lo <= k / n <= hi <= 1
    for end in (lo, hi):
        if 0 < end < 1:  # the quadratic's root: rounding error ~1e-15 on a statistic of order 2
            assert abs(k / n - end) / np.sqrt(end * (1 - end) / n) == pytest.approx(z, rel=1e-9)
    assert (lo == 0.0) == (k == 0) and (hi == 1.0) == (k == n)
    assert wilson_ci(0, 10)[1] == pytest.approx(0.2775, abs=5e-5) and np.isnan(wilson_ci(0, 0)).all()


def test_operating_point_stats_carry_wilson_cis() -> None:
    from bonefrac.evaluation.metrics import wilson_ci

    y, p = _scores()
    s = operating_point_stats(y, p, 0.45)
    assert s["sensitivity_ci95"] == wilson_ci(s["tp"], s["tp"] + s["fn"])
    assert s["specificity_ci95"] == wilson_ci(s["tn"], s["tn"] + s["fp"])
    assert s["ppv_ci95"] == wilson_ci(s["tp"], s["tp"] + s["fp"])
    assert s["npv_ci95"] == wilson_ci(s["tn"], s["tn"] + s["fn"])


@pytest.mark.parametrize(
    ("auc_value", "ci", "says"),
    [
        (0.51, [0.40, 0.61], "AUC 0.51, 95% CI 0.40-0.61 includes 0.5: no evidence that the model discriminates"),
        (0.94, [0.91, 0.97], "AUC 0.94, 95% CI 0.91-0.97 excludes 0.5: the model discriminates"),
        (0.20, [0.10, 0.35], "lies below 0.5"),
        (1.00, [float("nan"), float("nan")], "no CI"),
    ],
)
def test_auc_verdict_is_plain(auc_value: float, ci: list[float], says: str) -> None:
    from bonefrac.evaluation.metrics import auc_verdict

    assert says in auc_verdict({"auc": auc_value, "auc_ci95": ci})
