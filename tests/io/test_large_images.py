"""Large radiographs are read for the model at reduced scale (libjpeg DCT scaling for JPEGs, a box
average for pixels already in memory): the same model input either way, full-size heatmaps and boxes."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pytest
from _models import FIXTURE_IMAGES, make_checkpoint
from PIL import Image

from bonefrac import FractureDetector, read_image
from bonefrac.preprocess import letterbox, letterbox_image, normalize, preprocess, read_for_model, reduction_factor
from bonefrac.spec import ModelSpec
from bonefrac.train.data import DecodeCache

FOR_64 = partial(reduction_factor, size=64)  # how a 64 px model reads its files


def big_jpeg(path: Path, scale: int = 4, orientation: int = 1) -> Path:
    """A real fixture radiograph enlarged `scale` times (373 x 454 -> 1492 x 1816 at 4)."""
    im = Image.open(FIXTURE_IMAGES[3]).convert("L")
    im = im.resize((im.width * scale, im.height * scale), Image.BICUBIC)
    exif = Image.Exif()
    if orientation != 1:
        exif[0x0112] = orientation
    im.save(path, quality=92, exif=exif)
    return path


@pytest.fixture(scope="module")
def det(tmp_path_factory: pytest.TempPathFactory) -> FractureDetector:
    return FractureDetector.load(make_checkpoint(tmp_path_factory.mktemp("m") / "model.pt"), backend="torch")


def test_reduction_factor_keeps_at_least_twice_the_input_size() -> None:
    assert reduction_factor(454, 373, 256) == 1 and reduction_factor(1000, 800, 256) == 1
    assert reduction_factor(1024, 830, 256) == 2 and reduction_factor(2047, 1600, 256) == 2  # FracAtlas' largest
    assert reduction_factor(2880, 2304, 256) == 4 and reduction_factor(4096, 3000, 256) == 8
    assert reduction_factor(1816, 1492, 64) == 8 and reduction_factor(600, 400, 64) == 4
    # models from before ModelSpec.reduce_from: only images of 8x the input or more
    assert reduction_factor(1024, 830, 256, 8) == 1 and reduction_factor(2047, 1600, 256, 8) == 1
    assert reduction_factor(2880, 2304, 256, 8) == 4 and reduction_factor(4096, 3000, 256, 8) == 8


def test_the_reduction_rule_travels_with_the_model() -> None:
    legacy = ModelSpec.from_dict({"arch": "efficientnet_lite0", "image_size": 64})  # a checkpoint without it
    assert legacy.reduce_from == 8
    # a rule that is neither the default nor the legacy one survives the checkpoint's round trip
    assert ModelSpec.from_dict(ModelSpec(image_size=64, reduce_from=2).to_dict()).reduce_from == 2
    path = FIXTURE_IMAGES[0]  # 454 px: 7x a 64 px input
    assert read_for_model(path, legacy).meta.get("reduced_by", 1) == 1
    assert read_for_model(path, ModelSpec(image_size=64)).meta["reduced_by"] == 2
    whole = normalize(letterbox(read_image(path).pixels, 64, reduce_from=8)[0][None], legacy)
    assert np.abs(preprocess(read_for_model(path, legacy), legacy)[0] - whole).max() < 1e-6


def test_reduced_read_keeps_the_full_size_in_meta(tmp_path: Path) -> None:
    path = big_jpeg(tmp_path / "big.jpg")
    whole, reduced = read_image(path), read_image(path, FOR_64)
    assert whole.pixels.shape == (1816, 1492) and "reduced_by" not in whole.meta
    assert reduced.meta["reduced_by"] == 8 and reduced.pixels.shape == (227, 187)
    assert (reduced.meta["height"], reduced.meta["width"]) == (1816, 1492)
    # libjpeg's 1/8 scale is the 8 x 8 block mean: the same picture as averaging the whole image
    boxed = np.asarray(Image.fromarray(whole.pixels, mode="F").reduce(8))
    assert np.abs(boxed - reduced.pixels).mean() < 2 / 255
    rotated = read_image(big_jpeg(tmp_path / "rot.jpg", orientation=6), FOR_64)
    assert rotated.pixels.shape == (187, 227) and (rotated.meta["height"], rotated.meta["width"]) == (1492, 1816)


def test_path_and_image_give_the_same_prediction_on_the_full_image(det: FractureDetector, tmp_path: Path) -> None:
    path = big_jpeg(tmp_path / "big.jpg")
    by_path = det.predict(path)
    by_image = det.predict(read_image(path))
    assert abs(by_path.probability - by_image.probability) < 0.01
    assert by_path.heatmap.shape == (1600, 1315)  # display size: the long side at most DISPLAY_SIDE
    assert (by_path.width, by_path.height) == (1492, 1816)
    for x0, y0, x1, y1, _ in by_path.detections:
        assert 0 <= x0 < x1 <= 1492 and 0 <= y0 < y1 <= 1816
    reduced = det.predict(read_image(path, FOR_64), heatmap="full")  # a reduced read handed in
    assert reduced.probability == pytest.approx(by_path.probability, abs=1e-6)
    assert reduced.heatmap.shape == (1816, 1492)  # the full resolution, because it was asked for
    streamed = next(iter(det.predict_many([path])))
    assert streamed.probability == pytest.approx(by_path.probability, abs=1e-6) and streamed.heatmap is None


def test_small_images_are_untouched_and_the_cache_uses_the_same_reduced_read(tmp_path: Path) -> None:
    small = read_image(FIXTURE_IMAGES[0], partial(reduction_factor, size=256))
    assert "reduced_by" not in small.meta
    assert np.abs(letterbox_image(small, 256)[0] - letterbox(read_image(FIXTURE_IMAGES[0]).pixels, 256)[0]).max() < 1e-6
    path = str(big_jpeg(tmp_path / "big.jpg"))
    cache = DecodeCache(tmp_path / "cache", size=64)
    assert cache.build([path], workers=1, progress=False) == {}
    expected = np.round(letterbox_image(read_image(path, FOR_64), 64)[0] * 255).astype(np.uint8)
    assert np.array_equal(cache.load(path), expected)
    assert (cache.geometry(path).height, cache.geometry(path).width) == (1816, 1492)


def test_a_truncated_large_jpeg_is_read_reduced_with_its_warning(tmp_path: Path) -> None:
    from bonefrac.io.image import ImageReadWarning

    data = big_jpeg(tmp_path / "big.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: int(len(data) * 0.8)])
    with pytest.warns(ImageReadWarning, match="truncated"):
        image = read_image(tmp_path / "cut.jpg", FOR_64)
    assert image.meta["reduced_by"] == 8 and image.meta["truncated"] and image.pixels.shape == (227, 187)
    assert 0.05 < image.meta["truncated_missing_fraction"] < 0.5
