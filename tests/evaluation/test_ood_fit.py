"""`bonefrac calibrate`'s OOD fit (`evaluation.ood_fit`): which statistics it fits from what it is given."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from _models import FIXTURE_IMAGES

from bonefrac.models.ood import FEATURES, OodGaussian

pytest.importorskip("sklearn")
pytestmark = pytest.mark.filterwarnings("ignore:.*JPEG file is truncated")


def test_cross_fitted_scores_are_those_of_held_out_images() -> None:
    from bonefrac.evaluation.ood_fit import cross_fitted_scores

    rng = np.random.default_rng(0)
    x, fresh = rng.normal(size=(600, FEATURES)), rng.normal(size=(4000, FEATURES))
    g = OodGaussian.fit(x)
    # Images held out of a fit lie further from its Gaussian than the fit images: a 0.99 quantile of in-sample
    # scores sits lower and flags more new images than the one of cross-fitted scores, which flags about 1%
    # (binomial on 4000 images: +-0.3% at 2 sigma; the half-size fits make it a little conservative).
    cross, in_sample = np.quantile(cross_fitted_scores(x), 0.99), np.quantile(g.score(x), 0.99)
    assert cross > in_sample
    assert (g.score(fresh) > cross).mean() < 0.02


@pytest.fixture(scope="module")
def detector(tiny_detector: Path):  # noqa: ANN201 (a FractureDetector; its import needs the model stack)
    from bonefrac.inference.detector import FractureDetector

    return FractureDetector.load(tiny_detector, backend="torch")


def test_a_model_without_statistics_gets_a_gaussian_on_the_training_images(detector) -> None:  # noqa: ANN001
    from bonefrac.evaluation.ood_fit import fit_ood

    stats, record = fit_ood(detector, FIXTURE_IMAGES[:5], None, train_paths=FIXTURE_IMAGES[5:])
    assert stats is not None and record["n_fit"] == len(FIXTURE_IMAGES) - 5 and record["n_threshold"] == 5
    assert "training images" in record["method"] and stats["threshold"] == record["threshold"]
    # The threshold is the 0.99 quantile of the 5 calibration images' scores: at most one of them above it.
    assert record["flagged_here"] <= 1 / 5


def test_few_images_move_only_the_threshold_and_none_without_statistics(detector) -> None:  # noqa: ANN001
    from bonefrac.evaluation.ood_fit import features_of, fit_ood

    stats, record = fit_ood(detector, FIXTURE_IMAGES, None)
    assert stats is None and record["method"].startswith("none")
    feats = features_of(detector, FIXTURE_IMAGES[:8])
    assert feats is not None and feats.shape == (8, FEATURES)
    current = OodGaussian.fit(feats).to_dict()
    stats, record = fit_ood(detector, FIXTURE_IMAGES, current)
    assert record["method"].startswith("threshold only") and stats["location"] == current["location"]
    g = OodGaussian.from_dict(stats)
    scores = g.score(features_of(detector, FIXTURE_IMAGES))
    assert stats["threshold"] == pytest.approx(float(np.quantile(scores, 0.99)), rel=1e-6)


def test_enough_images_refit_the_gaussian(detector, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    from bonefrac.evaluation import ood_fit

    monkeypatch.setattr(ood_fit, "MIN_REFIT", 10)  # the fixture's 14 images count as a site's set
    current = OodGaussian.fit(np.random.default_rng(0).normal(size=(20, FEATURES))).to_dict()
    stats, record = ood_fit.fit_ood(detector, FIXTURE_IMAGES, current)
    assert record["method"].startswith("Gaussian refitted") and record["n_fit"] == len(FIXTURE_IMAGES)
    assert stats["location"] != current["location"]
