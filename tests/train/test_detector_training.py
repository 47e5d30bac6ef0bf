"""Training the detector: CenterNet targets with known answers, crops whose boxes sit on the pixels they name,
the loss learning one batch, and `bonefrac train --arch lite0_centernet` end to end (then resumed)."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _models import FIXTURES
from torch import nn

from bonefrac.models.centernet import STRIDE, detection_loss, target_counts
from bonefrac.models.checkpoint import load_model
from bonefrac.models.registry import kind_of
from bonefrac.train.data import DecodeCache, Record
from bonefrac.train.detector import MAX_BOXES, CropSampler, centernet_targets, gaussian_radius


# ---------------------------------------------------------------- targets
def test_gaussian_radius_is_centernets() -> None:
    # CenterNet's reference gaussian_radius (src/lib/utils/image.py, with its (b + sqrt) / 2 roots) for a 4 x 4
    # box; the radius grows in proportion to the box, and height and width play the same part.
    assert gaussian_radius(4, 4) == pytest.approx(1.0932802, abs=1e-6)
    assert gaussian_radius(8, 6) == pytest.approx(2 * gaussian_radius(4, 3))
    assert gaussian_radius(2, 5) == pytest.approx(gaussian_radius(5, 2))
    assert 0 < gaussian_radius(1, 1) < gaussian_radius(3, 3) < gaussian_radius(10, 10)


def test_targets_of_a_known_box() -> None:
    # Centre (57, 67) px = (7.125, 8.375) cells: cell (7, 8), offset (0.125, 0.375); size 32 x 48 px = 4 x 6 cells.
    t = centernet_targets(np.array([[41.0, 43.0, 73.0, 91.0]], np.float32), 128)
    heatmap = t["heatmap"][0]
    assert t["heatmap"].shape == (1, 128 // STRIDE, 128 // STRIDE)
    assert heatmap[8, 7] == 1.0 and (heatmap == 1.0).sum() == 1  # the peak, at the centre's cell only
    assert heatmap.max() == 1.0 and heatmap.min() == 0.0
    radius = int(gaussian_radius(6, 4))
    assert radius >= 1 and heatmap[8, 7 + radius] > 0 and heatmap[8, 7 + radius + 1] == 0  # a Gaussian of that radius
    assert heatmap[8, 6] == heatmap[8, 8] and heatmap[7, 7] == heatmap[9, 7] < 1  # symmetric about the centre
    assert t["index"][0] == 8 * 16 + 7 and t["mask"].tolist() == [1.0] + [0.0] * (MAX_BOXES - 1)
    np.testing.assert_allclose(t["log_size"][0], [math.log(4), math.log(6)], rtol=1e-6)
    np.testing.assert_allclose(t["offset"][0], [0.125, 0.375], rtol=1e-6)


def test_boxes_outside_the_input_are_ignored_and_at_most_max_boxes_are_kept() -> None:
    outside = np.array([[-30, 10, -2, 30], [120, 130, 140, 150], [200, 10, 220, 30]], np.float32)
    t = centernet_targets(outside, 128)
    assert t["mask"].sum() == 0 and t["heatmap"].max() == 0
    # A box whose centre is inside counts even when its edges are not.
    assert centernet_targets(np.array([[-8, 0, 16, 16]], np.float32), 128)["mask"].sum() == 1
    many = np.array([[x, 8, x + 8, 16] for x in range(0, 120, 10)], np.float32)  # 12 boxes
    t = centernet_targets(many, 128)
    assert t["mask"].sum() == MAX_BOXES and (t["heatmap"] == 1).sum() == MAX_BOXES  # the first eight
    assert t["index"][MAX_BOXES - 1] == 1 * 16 + int((70 + 4) / STRIDE)


# ---------------------------------------------------------------- crops
SIZE, CROP = 128, 64
BOX = [70.0, 30.0, 90.0, 44.0]  # where the bright rectangle is painted, x0 y0 x1 y1 on the cached grid


@pytest.fixture()
def sampler(tmp_path: Path) -> CropSampler:
    """A decode cache holding one synthetic image: dark, with a bright rectangle exactly at BOX (a square
    image of the cache's size, so image pixels are cache pixels)."""
    image = tmp_path / "synthetic.png"
    image.write_bytes(b"not decoded: the cache entry below stands for it")
    cache = DecodeCache(tmp_path / "cache", SIZE)
    cache.dir.mkdir(parents=True)
    pixels = np.full((SIZE, SIZE), 20, np.uint8)
    x0, y0, x1, y1 = map(int, BOX)
    pixels[y0:y1, x0:x1] = 250
    target = cache.path_for(str(image))
    target.with_suffix(".hw").write_text(f"{SIZE} {SIZE}")
    np.save(target, pixels)
    assert cache.geometry(str(image)).scale == 1 and cache.geometry(str(image)).pad_x == 0
    record = Record(str(image), 1, boxes=[BOX])
    # No intensity augmentation: the painted values stay recognisable.
    return CropSampler(cache, [record], crop=CROP, p_box=1.0, gamma=(1.0, 1.0), contrast=0.0, brightness=0.0)


def _bright(x: np.ndarray) -> np.ndarray:
    return x > (20 + 250) / 2 / 255


def test_a_crop_of_a_fractured_image_holds_its_box_where_the_box_is_drawn(sampler: CropSampler) -> None:
    sampler.scale, sampler.flip_p = (1.0, 1.0), 0.0  # no zoom: box pixels exact
    for seed in range(20):
        x, boxes = sampler.sample(0, np.random.default_rng(seed))
        assert x.shape == (CROP, CROP) and x.dtype == np.float32
        [(bx0, by0, bx1, by1)] = boxes
        assert 0 <= (bx0 + bx1) / 2 < CROP and 0 <= (by0 + by1) / 2 < CROP  # p_box=1: its centre is in the crop
        assert (bx1 - bx0, by1 - by0) == (20, 14)
        ys, xs = np.nonzero(_bright(x))
        # The bright pixels are exactly the box, clipped to the crop.
        assert (xs.min(), xs.max() + 1) == (max(bx0, 0), min(bx1, CROP))
        assert (ys.min(), ys.max() + 1) == (max(by0, 0), min(by1, CROP))


def _region(shape: tuple[int, ...], box: tuple[float, ...], grow: int) -> np.ndarray:
    """The whole pixels of `box` grown (or shrunk) by `grow` on every side, as a mask."""
    low, high = (math.floor, math.ceil) if grow >= 0 else (math.ceil, math.floor)
    x0, y0 = (max(0, low(v) - grow) for v in box[:2])
    mask = np.zeros(shape, bool)
    mask[y0 : high(box[3]) + grow, x0 : high(box[2]) + grow] = True
    return mask


def test_zoom_and_flip_move_the_box_with_the_pixels(sampler: CropSampler) -> None:
    sampler.scale, sampler.flip_p = (0.8, 1.25), 1.0
    for seed in range(20):
        x, boxes = sampler.sample(0, np.random.default_rng(seed))
        [(bx0, by0, bx1, by1)] = boxes
        inside = _region(x.shape, (bx0, by0, bx1, by1), -1)  # the box less a pixel: bilinear blurs its edge
        near = _region(x.shape, (bx0, by0, bx1, by1), 2)
        assert inside.any() and _bright(x[inside]).all() and not _bright(x[~near]).any(), seed
    # Flipped: the box is mirrored about the crop's vertical centre line.
    sampler.scale = (1.0, 1.0)
    flipped_x, flipped = sampler.sample(0, np.random.default_rng(3))
    sampler.flip_p = 0.0
    plain_x, plain = sampler.sample(0, np.random.default_rng(3))  # same draws up to the flip
    np.testing.assert_array_equal(flipped_x, plain_x[:, ::-1])
    np.testing.assert_allclose(flipped[0], [CROP - plain[0][2], plain[0][1], CROP - plain[0][0], plain[0][3]])


def test_crops_are_reproducible_by_seed(sampler: CropSampler) -> None:
    x1, t1 = sampler.batch([0, 0, 0], [5, 6, 7])
    x2, t2 = sampler.batch([0, 0, 0], [5, 6, 7])
    assert x1.shape == (3, 1, CROP, CROP) and t1["heatmap"].shape == (3, 1, CROP // STRIDE, CROP // STRIDE)
    assert torch.equal(x1, x2) and all(torch.equal(t1[k], t2[k]) for k in t1)
    x3, _ = sampler.batch([0], [8])
    assert not torch.equal(x1[2], x3[0])  # another seed, another crop
    assert (t1["mask"].sum(1) == 1).all()  # every crop of this image has its box


def test_a_normal_image_gives_empty_targets(sampler: CropSampler) -> None:
    sampler.records = [Record(sampler.records[0].path, 0)]
    x, targets = sampler.batch([0, 0], [1, 2])
    assert targets["mask"].sum() == 0 and targets["heatmap"].max() == 0
    assert sampler.epoch_pool() == [0]  # only images with boxes are repeated


# ---------------------------------------------------------------- the loss
class TinyDetector(nn.Module):
    """The detector's five outputs from a few convolutions at stride 8 (the loss, not the backbone, is tested)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 16, 3, 2, 1)
        )
        self.heads = nn.Conv2d(16, 6, 1)
        nn.init.constant_(self.heads.bias, 0.0)
        with torch.no_grad():
            self.heads.bias[0] = -2.19  # CenterNet's prior, as the real head

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.heads(torch.relu(self.body(x)))
        cam = out[:, 5:6]
        return out[:, :1], out[:, 1:3], out[:, 3:5], cam.mean((1, 2, 3)), cam


def test_detection_loss_learns_one_batch(sampler: CropSampler) -> None:
    torch.manual_seed(0)
    x, targets = sampler.batch([0, 0, 0, 0], [1, 2, 3, 4])
    model = TinyDetector()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss, parts = detection_loss(model(x), targets)
        assert torch.isfinite(loss) and set(parts) == {"heatmap", "size", "offset", "global"}
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_halves_with_the_global_counts_add_up_to_the_whole_batch(sampler: CropSampler) -> None:
    """The torchrun contract: each rank divides its sums by the global batch's counts, so the ranks' losses
    add up to exactly one process's loss (the crops here hold 1 and 0 boxes: per-half counts would not)."""
    torch.manual_seed(0)
    sampler.records.append(Record(sampler.records[0].path, 0))  # a crop without boxes
    x, targets = sampler.batch([0, 1, 0, 1], [1, 2, 3, 4])
    outputs = TinyDetector()(x)
    whole, parts = detection_loss(outputs, targets)
    counts = target_counts(targets)
    assert counts[1:] == (2, 4)
    halves = [
        detection_loss(tuple(o[rows] for o in outputs), {k: v[rows] for k, v in targets.items()}, counts=counts)
        for rows in (slice(0, 4, 2), slice(1, 4, 2))  # as `distributed.shard` cuts them
    ]
    assert (halves[0][0] + halves[1][0]).item() == pytest.approx(whole.item(), rel=1e-6)
    for k in parts:
        assert halves[0][1][k] + halves[1][1][k] == pytest.approx(parts[k], rel=1e-6, abs=1e-9), k


def test_a_perfect_prediction_costs_almost_nothing() -> None:
    box = np.array([[8, 8, 56, 56]], np.float32)  # 6 x 6 cells: a Gaussian of radius 1 around cell (4, 4)
    t = {k: torch.from_numpy(v)[None] for k, v in centernet_targets(box, 64).items()}
    heat = torch.where(t["heatmap"] == 1, 20.0, -20.0)  # the centre certain, elsewhere nothing
    size = torch.zeros(1, 2, 8, 8)
    offset = torch.zeros(1, 2, 8, 8)
    flat = int(t["index"][0, 0])
    size.view(1, 2, -1)[0, :, flat] = t["log_size"][0, 0]
    offset.view(1, 2, -1)[0, :, flat] = t["offset"][0, 0]
    loss, parts = detection_loss((heat, size, offset, torch.tensor([20.0]), heat), t)
    assert parts["size"] == 0 and parts["offset"] == 0 and loss.item() < 1e-3
    # The penalty reduction: a confident score next to the centre costs little, far from it a lot.
    near = heat.clone()
    cy, cx = divmod(flat, 8)
    near[0, 0, cy, cx + 1] = 0.0
    far = heat.clone()
    far[0, 0, 7, 7] = 0.0
    assert (
        detection_loss((near, size, offset, torch.tensor([20.0]), heat), t)[1]["heatmap"]
        < (detection_loss((far, size, offset, torch.tensor([20.0]), heat), t)[1]["heatmap"])
    )


# ---------------------------------------------------------------- end to end
TRAIN_ARGS = [
    "--arch",
    "lite0_centernet",
    "--image-size",
    "96",
    "--crop-size",
    "64",
    "--batch-size",
    "4",
    "--max-train-images",
    "6",
    "--val-fraction",
    "0.34",  # both classes in validation on 14 images
    "--no-progress",
]


def bonefrac_train(out: Path, cache: Path, *extra: str) -> str:
    cmd = [sys.executable, "-m", "bonefrac", "train", str(FIXTURES), "--out", str(out), "--cache-dir", str(cache)]
    r = subprocess.run([*cmd, *TRAIN_ARGS, *extra], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*JPEG file is truncated")
def test_train_a_detector_then_resume(tmp_path: Path) -> None:
    run, cache = tmp_path / "run", tmp_path / "cache"
    bonefrac_train(run, cache, "--epochs", "1")
    model, spec, info = load_model(run / "model.pt")
    assert kind_of(spec.arch) == "detector" and spec.arch == "lite0_centernet" and spec.image_size == 96
    v = info["validation"]
    assert 0 <= v["pointing_game"] <= 1 and 0 <= v["auc"] <= 1 and v["n"] == info["n_val"]
    ops = spec.operating_points
    assert ops["high_sensitivity"] < ops["default"] < ops["high_specificity"]
    # Calibrated on the validation logits; the operating points and the figures are on calibrated probabilities.
    fit = info["calibration"]
    assert fit["n_images"] == v["n"] and fit["subset"] == "val", fit
    # Five validation images after two steps may rank either way (the kernels decide): a fit gives a positive
    # scale; a refused one (a decreasing fit) keeps the identity and says why. Either is recorded as it happened.
    if fit["error"] is None:
        assert spec.calibration["scale"] > 0 and spec.calibration != {"scale": 1.0, "bias": 0.0}
    else:
        assert spec.calibration == {"scale": 1.0, "bias": 0.0} and fit["error"].strip()
    assert v["calibration"] == {k: fit[k] for k in ("ece_before", "ece_after", "brier_before", "brier_after")}
    assert all(0 <= x <= 1 for x in v["calibration"].values())
    assert v["operating_points"]["default"]["threshold"] == ops["default"]
    # The out-of-distribution statistics: fitted on the training images, thresholded on the validation ones.
    assert spec.ood is not None and len(spec.ood["precision"]) == 152 and spec.ood["threshold"] is not None
    assert info["ood"]["n_fit"] == info["n_train"] and info["ood"]["n_threshold"] == info["n_val"]
    with torch.no_grad():  # the saved weights are the detector's, in its checkpoint format
        heatmap, size, offset, global_logit, _ = model.eval()(torch.zeros(1, 1, 96, 96))
    assert heatmap.shape == (1, 1, 12, 12) and size.shape == offset.shape == (1, 2, 12, 12)
    history = list(csv.DictReader(open(run / "history.csv")))
    assert [h["epoch"] for h in history] == ["1"] and history[0]["val_pointing"] != "nan"

    out = bonefrac_train(run, cache, "--epochs", "2", "--resume")
    assert "resuming after epoch 1" in out
    assert [h["epoch"] for h in csv.DictReader(open(run / "history.csv"))] == ["1", "2"]
    assert len(json.loads((run / "run.json").read_text())["invocations"]) == 2


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*JPEG file is truncated")
def test_the_v3_recipe_mines_hard_negatives_and_resumes_with_them(tmp_path: Path) -> None:
    """Every recipe option on: the first epoch mines the model's peaks on normal training images, last.pt keeps
    them, and a resumed run restores them (the crops it centres on) before its next epoch."""
    run, cache = tmp_path / "run", tmp_path / "cache"
    recipe = ["--zoom-min", "0.5", "--zoom-max", "3", "--p-edge", "0.3", "--region-balance", "--small-box-factor",
              "2", "--photometric", "0.25", "--hard-negative-every", "2", "--p-hard-negative", "0.7"]  # fmt: skip
    out = bonefrac_train(run, cache, "--epochs", "1", *recipe)
    assert "epoch 1: hard negatives:" in out
    mined = torch.load(run / "last.pt", map_location="cpu", weights_only=True)["hard_negatives"]
    assert mined and all(len(p[0]) == 2 for p in mined.values())
    out = bonefrac_train(run, cache, "--epochs", "2", "--resume", *recipe)
    assert "resuming after epoch 1" in out and "epoch 2: hard negatives:" not in out  # every 2: mined at 1, 3, ...
    again = torch.load(run / "last.pt", map_location="cpu", weights_only=True)["hard_negatives"]
    assert again == mined  # restored, not re-mined
