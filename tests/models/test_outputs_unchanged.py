"""Behaviour unchanged: the bundled detector and two seeded classifiers give the probabilities, detections and
heatmaps recorded in `reference_outputs.npz`, on the bundled examples, through both backends.

The reference was written before the model kinds took over decoding and the graphs (issue 23 point 2):
`FractureDetector.load(...).predict(path, heatmap=True)` for each model, backend and example; the heatmaps are
kept as every 32nd pixel of each axis plus their mean and maximum (the file stays small). The classifiers are
`_models.make_checkpoint`'s seeded random `seed_cnn` (64 px) and `efficientnet_lite0` (96 px).

Tolerances: the same float32 graphs on another CPU (AVX2 or AVX-512) sum in another order, which moves a
logit by about 1e-6 of its size; 1e-4 relative leaves a hundredfold margin and still catches any change of
method (a different upsampling, threshold or calibration moves these values by 1e-2 or more). Maps normalised
to [0, 1] and the absolute cell probabilities get the same 1e-4 as an absolute floor near zero; coordinates
1e-4 of the image's side.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bonefrac import FractureDetector
from bonefrac.paths import EXAMPLES_DIR

REFERENCE = np.load(Path(__file__).with_name("reference_outputs.npz"))
EXAMPLES = sorted(EXAMPLES_DIR.glob("*.jpg"))
RTOL = 1e-4
CLASSIFIERS = {"seed_cnn": 64, "efficientnet_lite0": 96}

pytestmark = pytest.mark.numeric  # recorded figures: make test checks them again on AVX2 kernels


@pytest.fixture(scope="module")
def checkpoints(tiny_classifier: Path, tiny_lite0: Path) -> dict[str, Path | None]:
    # the session's make_checkpoint(arch=..., image_size=...) with its default seed, as the reference was written
    return {"bundled": None, "seed_cnn": tiny_classifier, "efficientnet_lite0": tiny_lite0}


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["onnx", "torch"])
@pytest.mark.parametrize("model", ["bundled", *CLASSIFIERS])
def test_predictions_match_the_recorded_ones(checkpoints: dict[str, Path | None], model: str, backend: str) -> None:
    det = FractureDetector.load(checkpoints[model], backend=backend)
    assert len(EXAMPLES) == 4
    for path in EXAMPLES:
        pred = det.predict(path, heatmap=True)
        ref = {
            k.rsplit("/", 1)[1]: REFERENCE[k]
            for k in REFERENCE.files
            if k.startswith(f"{model}/{backend}/{path.name}/")
        }
        side = max(pred.width, pred.height)
        where = f"{model} {backend} {path.name}"
        np.testing.assert_allclose(pred.probability, ref["probability"], rtol=RTOL, atol=1e-7, err_msg=where)
        np.testing.assert_allclose(pred.logit, ref["logit"], rtol=RTOL, atol=RTOL, err_msg=where)
        detections = np.asarray(pred.detections, np.float64).reshape(-1, 5)
        assert detections.shape == ref["detections"].shape, where
        np.testing.assert_allclose(detections[:, :4], ref["detections"][:, :4], rtol=RTOL, atol=RTOL * side)
        np.testing.assert_allclose(detections[:, 4], ref["detections"][:, 4], rtol=RTOL, atol=1e-7, err_msg=where)
        np.testing.assert_allclose(pred.peak, ref["peak"], rtol=RTOL, atol=RTOL * side, err_msg=where)
        heat = pred.heatmap
        assert heat is not None and heat.shape == tuple(ref["heatmap_shape"]), where
        np.testing.assert_allclose(heat[::32, ::32], ref["heatmap"], rtol=RTOL, atol=RTOL, err_msg=where)
        np.testing.assert_allclose(heat.astype(np.float64).mean(), ref["heatmap_mean"], rtol=RTOL, err_msg=where)
        np.testing.assert_allclose(heat.max(), ref["heatmap_max"], rtol=RTOL, err_msg=where)
