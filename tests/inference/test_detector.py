from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from _models import FIXTURE_IMAGES, copy_checkpoint, make_checkpoint
from PIL import Image

from bonefrac import BonefracError, FractureDetector, ImageReadError, Prediction, PredictionError, read_image


@pytest.fixture(scope="module")
def det(tmp_path_factory: pytest.TempPathFactory) -> FractureDetector:
    return FractureDetector.load(make_checkpoint(tmp_path_factory.mktemp("m") / "model.pt"), backend="torch")


def test_predict_fields(det: FractureDetector) -> None:
    pred = det.predict(FIXTURE_IMAGES[0])
    image = read_image(FIXTURE_IMAGES[0])
    assert 0.0 <= pred.probability <= 1.0
    assert pred.fractured == (pred.probability >= pred.threshold)
    assert pred.threshold == det.operating_points["default"]
    assert set(pred.operating_points) == {"default", "high_sensitivity", "high_specificity"}
    assert pred.heatmap is not None and pred.heatmap.shape == image.pixels.shape  # small: display size is full
    assert 0.0 <= pred.heatmap.min() and pred.heatmap.max() <= 1.0
    assert pred.model_version == "test-seed_cnn-64"
    y, x = np.unravel_index(np.argmax(pred.heatmap), pred.heatmap.shape)
    assert abs(pred.peak[0] - x) <= 0.06 * image.width and abs(pred.peak[1] - y) <= 0.06 * image.height
    for x0, y0, x1, y1, score in pred.boxes:
        assert 0 <= x0 < x1 <= image.width and 0 <= y0 < y1 <= image.height and 0 < score <= 1


def test_preprocess_shape(det: FractureDetector) -> None:
    t = det.preprocess(read_image(FIXTURE_IMAGES[0]))
    assert tuple(t.shape) == (1, 64, 64) and t.dtype.is_floating_point


def test_operating_point_changes_the_decision_not_the_probability(det: FractureDetector) -> None:
    a = det.predict(FIXTURE_IMAGES[1], operating_point="high_sensitivity")
    b = det.predict(FIXTURE_IMAGES[1], operating_point="high_specificity")
    assert a.probability == b.probability
    assert (a.threshold, b.threshold) == (0.2, 0.8)


def test_heatmap_follows_exif_orientation(det: FractureDetector, tmp_path: Path) -> None:
    im = Image.open(FIXTURE_IMAGES[0]).convert("L")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    im.save(tmp_path / "rot.jpg", exif=exif, quality=95)
    pred = det.predict(tmp_path / "rot.jpg")
    assert pred.heatmap.shape == (im.width, im.height)
    assert (pred.width, pred.height) == (im.height, im.width)


def test_predict_many_streams_in_order_with_errors(det: FractureDetector, tmp_path: Path) -> None:
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.png").write_text("hello")
    paths = [
        FIXTURE_IMAGES[0],
        tmp_path / "empty.jpg",
        *FIXTURE_IMAGES[1:5],
        tmp_path / "text.png",
        tmp_path / "gone",
    ]
    results = list(det.predict_many(paths, batch_size=3, workers=2))
    assert [str(r.path) for r in results] == [str(p) for p in paths]
    kinds = [type(r) for r in results]
    assert kinds == [Prediction, PredictionError, *[Prediction] * 4, PredictionError, PredictionError]
    assert "empty" in results[1].error
    single = det.predict(FIXTURE_IMAGES[2])
    # a batch of 3 against 1: other GEMM blocking, logits ~1e-6 of their size apart; a probability in [0, 1] moves
    # by at most a quarter of that (the sigmoid's slope), so an absolute bound
    assert results[3].probability == pytest.approx(single.probability, abs=1e-6)


def test_predict_many_reads_its_input_lazily(det: FractureDetector) -> None:
    """A folder of 100k files streams: only a few batches are taken from the input ahead of the results."""
    taken = 0

    def paths() -> Iterator[Path]:
        nonlocal taken
        for i in range(200):
            taken += 1
            yield FIXTURE_IMAGES[i % len(FIXTURE_IMAGES)]

    stream = det.predict_many(paths(), batch_size=2, workers=2)
    first = next(stream)
    assert isinstance(first, Prediction)
    assert taken <= 2 * 2 * 2 + 2  # 2 x workers batches in flight, plus the batch being gathered
    ahead = []
    for i, _ in enumerate(stream, start=2):
        ahead.append(taken - i)
        if i == 40:
            break
    assert max(ahead) <= 2 * 2 * 2 + 2
    stream.close()


def test_batched_equals_single(det: FractureDetector) -> None:
    many = [r.probability for r in det.predict_many(FIXTURE_IMAGES, batch_size=5)]
    one = [det.predict(p, heatmap=False).probability for p in FIXTURE_IMAGES]
    np.testing.assert_allclose(many, one, rtol=0, atol=1e-5)  # probabilities in [0, 1]: as above, with margin


def test_unreadable_file_raises_for_single_predict(det: FractureDetector, tmp_path: Path) -> None:
    (tmp_path / "x.dcm").write_bytes(b"\0" * 10)
    with pytest.raises(ImageReadError):
        det.predict(tmp_path / "x.dcm")


@pytest.mark.numeric  # torch and onnxruntime kernels: make test runs it again with torch on AVX2
def test_onnx_backend_matches_torch(tiny_lite0: Path) -> None:
    import os

    t = FractureDetector.load(tiny_lite0, backend="torch")
    o = FractureDetector.load(tiny_lite0, backend="onnx")  # the session's export, in the session's cache
    assert o.backend.name == "onnx" and Path(o.backend.path).is_relative_to(os.environ["BONEFRAC_CACHE"])
    for img in FIXTURE_IMAGES[:4]:
        a, b = t.predict(img), o.predict(img)
        # Two libraries' float32 kernels: logits ~1e-6 of their size apart (the graph is the same). Probabilities
        # and the [0, 1] heatmap are bounded, so absolute bounds a hundredfold above that rounding; a different
        # graph (preprocessing, upsampling, calibration) moves them by 1e-2 or more.
        assert a.logit == pytest.approx(b.logit, rel=1e-4, abs=1e-6)
        assert abs(a.probability - b.probability) <= 1e-4
        assert np.abs(a.heatmap - b.heatmap).max() < 1e-3


def test_truncated_jpeg_is_predicted_with_its_warning_in_the_stream(det: FractureDetector) -> None:
    truncated = FIXTURE_IMAGES[0].parent / "IMG0004228.jpg"  # jpeg_truncated=1 in labels.csv
    results = list(det.predict_many([truncated, FIXTURE_IMAGES[0]], workers=2))
    assert isinstance(results[0], Prediction)
    assert any("truncated" in w for w in results[0].warnings)
    assert "warnings" in results[0].to_dict() and not results[1].warnings


def test_decided_at_is_the_detectors_rule(det: FractureDetector) -> None:
    pred = det.predict(FIXTURE_IMAGES[3], heatmap=False)
    assert pred.detections  # the heatmap always has a hottest region
    for name, t in det.operating_points.items():
        direct = det.predict(FIXTURE_IMAGES[3], operating_point=name, heatmap=False)
        redecided = pred.decided_at(name, t)
        assert redecided.to_dict() == direct.to_dict()
        assert redecided.boxes == (pred.detections if redecided.fractured else [])


_LOAD_AND_PREDICT = """
import json, sys
from bonefrac import FractureDetector
det = FractureDetector.load(sys.argv[1], backend="auto")
p = det.predict(sys.argv[2])
print(json.dumps({"torch": "torch" in sys.modules, "backend": det.backend.name, "p": p.probability,
                  "heatmap": list(p.heatmap.shape), "boxes": p.boxes, "version": det.version}))
"""


@pytest.mark.slow  # two fresh interpreters, one of them exporting to ONNX
def test_cached_export_predicts_without_importing_torch(tmp_path: Path, tiny_lite0: Path) -> None:
    """The first load exports with torch; later loads of the same checkpoint find the export and the spec
    in the cache and never import torch (the start-up cost of `bonefrac predict`), with the same results."""
    import json
    import os
    import subprocess
    import sys

    path = tiny_lite0  # only read; the export is made again in this test's own, empty cache
    env = {**os.environ, "BONEFRAC_CACHE": str(tmp_path / "cache")}
    cmd = [sys.executable, "-c", _LOAD_AND_PREDICT, str(path), str(FIXTURE_IMAGES[0])]
    first, second = (json.loads(subprocess.run(cmd, env=env, capture_output=True, check=True).stdout) for _ in "12")
    assert first.pop("torch") is True and second.pop("torch") is False
    assert first == second and second["backend"] == "onnx" and second["version"] == "test-efficientnet_lite0-96"


@pytest.mark.slow  # exports to ONNX twice
@pytest.mark.numeric  # torch against onnxruntime
def test_cached_export_keeps_the_torch_model_at_hand_and_the_digest_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_lite0: Path
) -> None:
    from bonefrac.errors import ModelLoadError
    from bonefrac.inference.backends import TorchBackend
    from bonefrac.inference.export import onnx_cache_path

    monkeypatch.setenv("BONEFRAC_CACHE", str(tmp_path / "cache"))
    path = copy_checkpoint(tiny_lite0, tmp_path)  # changed below
    FractureDetector.load(path)  # exports
    det = FractureDetector.load(path)
    assert det._model is None  # not loaded: the cached export was enough
    x = det.preprocess(read_image(FIXTURE_IMAGES[1]))[None].numpy()
    # .model loads it now; the two libraries' kernels agree to ~1e-6 of the logit (see test_onnx_backend_matches_torch)
    torch_logit = TorchBackend(det.model, det.spec.image_size).run(x)["logit"][0]
    assert torch_logit == pytest.approx(det.backend.run(x)["logit"][0], rel=1e-4, abs=1e-6)
    # A stale or foreign cache entry is ignored and rewritten, never trusted.
    meta = onnx_cache_path(det.sha256).with_suffix(".json")
    meta.write_text(meta.read_text().replace(det.sha256, "0" * 64))
    assert FractureDetector.load(path)._model is not None
    assert FractureDetector.load(path)._model is None
    # A checkpoint changed after its export no longer matches its .sha256 sidecar: refused, cache or not.
    with open(path, "r+b") as f:
        f.seek(-100, 2)
        f.write(b"\x00" * 8)
    with pytest.raises(ModelLoadError, match="SHA-256"):
        FractureDetector.load(path)


def test_workers_share_the_cores_and_agree(monkeypatch: pytest.MonkeyPatch, tiny_lite0: Path) -> None:
    import os

    det = FractureDetector.load(tiny_lite0)  # the session's export
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    eight, sixteen = det.backend.for_workers(8), det.backend.for_workers(16)
    assert (eight.threads, sixteen.threads) == (2, 1) and det.backend.for_workers(8) is eight
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun with 4 ranks on this node: 4 cores each
    assert det.backend.for_workers(2).threads == 2 and det.backend.for_workers(4).threads == 1
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    x = np.stack([det.preprocess(read_image(p)).numpy() for p in FIXTURE_IMAGES[:3]])
    for other in (eight, sixteen):  # other thread counts split the sums otherwise: ~1e-6 of the logit
        np.testing.assert_allclose(other.run(x)["logit"], det.backend.run(x)["logit"], rtol=1e-5, atol=1e-6)
    serial = [r.probability for r in det.predict_many(FIXTURE_IMAGES, workers=1)]
    parallel = [r.probability for r in det.predict_many(FIXTURE_IMAGES, batch_size=3, workers=4)]
    np.testing.assert_allclose(serial, parallel, rtol=0, atol=1e-5)  # probabilities in [0, 1]


def test_the_onnx_session_is_made_ahead_and_a_broken_one_reported_by_the_batch(
    tmp_path: Path, tiny_lite0: Path
) -> None:
    from bonefrac.inference.backends import OnnxBackend
    from bonefrac.inference.detector import _warm_quietly

    det = FractureDetector.load(tiny_lite0)  # the session's export; its session is this detector's own
    backend = det.backend
    assert isinstance(backend, OnnxBackend) and backend._session is None  # made on first use only
    backend.warm()
    session = backend._session
    assert session is not None
    backend.warm()
    assert backend._session is session  # once
    # An export that cannot be loaded: the background warm-up stays silent, the batch raises the error.
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    _warm_quietly(OnnxBackend(broken))
    bad = FractureDetector(det.spec, OnnxBackend(broken), det.info, checkpoint=tmp_path / "model.pt")
    with pytest.raises(Exception, match="(?i)protobuf|invalid|load"):
        list(bad.predict_many(FIXTURE_IMAGES[:2], workers=1))


def test_the_constructor_only_stores_and_load_builds_the_backend(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bonefrac.inference.backends import TorchBackend
    from bonefrac.models.registry import build_model
    from bonefrac.spec import ModelSpec

    monkeypatch.setenv("BONEFRAC_CACHE", str(tmp_path / "cache"))
    spec = ModelSpec(arch="seed_cnn", image_size=64)
    backend = TorchBackend(build_model(spec, pretrained=False), spec.image_size)
    det = FractureDetector(spec, backend)
    assert det.backend is backend and det.info == {} and not (tmp_path / "cache").exists()  # no export made
    assert det.version == "seed_cnn-64px-unversioned"
    with pytest.raises(BonefracError, match="unknown backend"):
        FractureDetector.load(make_checkpoint(tmp_path / "model.pt"), backend="tensorrt")


def test_onnx_export_carries_the_model_metadata_and_the_cache_key_changes_with_the_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    import onnx

    from bonefrac.inference import export

    monkeypatch.setenv("BONEFRAC_CACHE", str(tmp_path / "cache"))
    # mean and std differ from the defaults and from each other: the metadata must carry this model's
    det = FractureDetector.load(make_checkpoint(tmp_path / "model.pt", mean=0.4, std=0.3), backend="onnx")
    props = {p.key: p.value for p in onnx.load(det.backend.path).metadata_props}
    assert props["image_size"] == "64" and float(props["mean"]) == 0.4 and float(props["std"]) == 0.3
    assert json.loads(props["operating_points"]) == {"default": 0.5, "high_sensitivity": 0.2, "high_specificity": 0.8}
    assert props["model_version"] == "test-seed_cnn-64" and props["checkpoint_sha256"] == det.sha256
    assert props["bonefrac_version"] and "min-max" in props["preprocessing"] and "sigmoid" in props["outputs"]
    key = export.cache_key(det.sha256)
    monkeypatch.setattr(export, "__version__", "999.0")
    assert export.cache_key(det.sha256) != key  # an upgrade never runs a stale graph
    monkeypatch.setattr(export, "EXPORT_SETTINGS", export.EXPORT_SETTINGS + ";other")
    monkeypatch.setattr(export, "__version__", __import__("bonefrac").__version__)
    assert export.cache_key(det.sha256) != key


def test_the_modality_rule_guards_every_prediction(det: FractureDetector) -> None:
    from pydicom.data import get_testdata_file

    from bonefrac.errors import NotARadiographError

    ct = get_testdata_file("CT_small.dcm")
    with pytest.raises(NotARadiographError, match="CT_small.dcm: modality CT"):
        det.predict(ct)
    refused, ok = det.predict_many([ct, FIXTURE_IMAGES[0]])
    assert isinstance(refused, PredictionError) and "modality CT" in refused.error and isinstance(ok, Prediction)
    anyway = det.predict(ct, any_modality=True)  # the researcher's override: a prediction, with the warning
    assert 0 <= anyway.probability <= 1 and any("modality CT" in w for w in anyway.warnings)


def test_predict_many_with_images_hands_over_the_decoded_image_at_display_size(
    det: FractureDetector, tmp_path: Path
) -> None:
    """(image, result) pairs: the same results as without images; each image the one the model read, shrunk
    to the display size of the full image (`display_image`); None for a file that could not be read."""
    from bonefrac.inference.decode import display_shape
    from bonefrac.inference.detector import display_image
    from bonefrac.preprocess import read_for_model

    (tmp_path / "empty.jpg").write_bytes(b"")
    paths = [FIXTURE_IMAGES[0], tmp_path / "empty.jpg", FIXTURE_IMAGES[1]]
    pairs = list(det.predict_many(paths, workers=2, with_images=True))
    plain = list(det.predict_many(paths, workers=2))
    assert [res.to_dict() for _, res in pairs] == [res.to_dict() for res in plain]
    (first, a), (none, error), (_, _) = pairs
    assert none is None and isinstance(error, PredictionError)
    assert isinstance(a, Prediction) and first is not None and first.path == str(FIXTURE_IMAGES[0])
    assert np.array_equal(first.pixels, read_for_model(FIXTURE_IMAGES[0], det.spec).pixels)  # no larger: as read
    # A large image is shrunk to the display size of its full size, whatever scale it was decoded at.
    big = read_image(FIXTURE_IMAGES[0])
    big.pixels = np.asarray(Image.fromarray(big.pixels).resize((big.width * 5, big.height * 5)))
    big.meta |= {"height": big.height, "width": big.width}
    shown = display_image(big, side=1000)
    assert shown.pixels.shape == display_shape(big.height, big.width, side=1000) and shown.meta["width"] == big.width
