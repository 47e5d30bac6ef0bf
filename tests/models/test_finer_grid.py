"""The detector on the stride-4 level (issue 24 point 3, `lite0_centernet_s4`): adopting a stride-8 model keeps its
heatmap and box sizes; the targets, the decoding (torch and ONNX) and the training step follow the finer grid."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _models import FIXTURE_IMAGES, make_checkpoint

from bonefrac import FractureDetector
from bonefrac.models.centernet import detection_loss, logits_and_peaks
from bonefrac.models.checkpoint import load_model, save_model
from bonefrac.models.grid import stride_for, stride_of
from bonefrac.models.registry import build_model
from bonefrac.spec import ModelSpec
from bonefrac.train.detector import centernet_targets

SIZE = 96


def _pair(tmp_path: Path) -> tuple[torch.nn.Module, torch.nn.Module]:
    coarse, _, _ = load_model(make_checkpoint(tmp_path / "s8.pt", arch="lite0_centernet", image_size=SIZE))
    fine = build_model(ModelSpec(arch="lite0_centernet_s4", image_size=SIZE), pretrained=False)
    fine.adopt(coarse)
    return coarse.eval(), fine.eval()


def test_the_grid_of_each_arch() -> None:
    assert stride_of("lite0_centernet") == 8 and stride_of("lite0_centernet_s4") == 4
    assert stride_for(416, 52) == 8 and stride_for(416, 104) == 4


def test_adopting_a_stride8_model_keeps_its_heatmap_and_box_sizes(tmp_path: Path) -> None:
    coarse, fine = _pair(tmp_path)
    x = torch.randn(2, 1, SIZE, SIZE)
    with torch.no_grad():
        h8, s8, _, g8, _ = coarse(x)
        h4, s4, _, g4, _ = fine(x)
    assert h4.shape[-1] == 2 * h8.shape[-1] == SIZE // 4
    up = lambda t: F.interpolate(t, scale_factor=2, mode="nearest")  # noqa: E731
    torch.testing.assert_close(h4, up(h8), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(s4, up(s8) + math.log(2), rtol=1e-4, atol=1e-4)  # the same size in 4 px cells
    torch.testing.assert_close(g4, g8)
    # the same image logit; the peak in the same 8 px cell
    a, b = logits_and_peaks(coarse, x), logits_and_peaks(fine, x)
    torch.testing.assert_close(a[:, 0], b[:, 0], rtol=1e-4, atol=1e-4)
    assert (b[:, 1:] - a[:, 1:]).abs().max() <= 2


def test_adopt_refuses_another_design(tmp_path: Path) -> None:
    fine = build_model(ModelSpec(arch="lite0_centernet_s4", image_size=SIZE), pretrained=False)
    other = build_model(ModelSpec(arch="efficientnet_lite0", image_size=SIZE), pretrained=False)
    with pytest.raises((ValueError, AttributeError, RuntimeError)):
        fine.adopt(other)


def test_targets_on_the_finer_grid() -> None:
    box = np.array([[40.0, 20.0, 56.0, 44.0]], np.float32)
    t8, t4 = centernet_targets(box, 64), centernet_targets(box, 64, stride=4)
    assert t8["heatmap"].shape == (1, 8, 8) and t4["heatmap"].shape == (1, 16, 16)
    assert t4["index"][0] == 8 * 16 + 12  # centre (48, 32) in 4 px cells
    np.testing.assert_allclose(t4["log_size"][0], np.log([4.0, 6.0]), rtol=1e-6)
    np.testing.assert_allclose(t4["log_size"][0] - t8["log_size"][0], math.log(2), rtol=1e-6)


def test_a_training_step_reaches_the_finer_level(tmp_path: Path) -> None:
    _, fine = _pair(tmp_path)
    fine.train()
    box = np.array([[30.0, 30.0, 50.0, 46.0]], np.float32)
    targets = {
        k: torch.from_numpy(v)[None].repeat(2, *[1] * v.ndim) for k, v in centernet_targets(box, SIZE, stride=4).items()
    }
    loss, _ = detection_loss(fine(torch.randn(2, 1, SIZE, SIZE)), targets)
    loss.backward()
    assert fine.lat4.weight.grad is not None and fine.refine4[1].weight.grad.abs().sum() > 0  # the gate opens


def test_a_stride4_checkpoint_decodes_on_its_grid_alike_in_torch_and_onnx(tmp_path: Path) -> None:
    coarse, fine = _pair(tmp_path)
    spec = ModelSpec(arch="lite0_centernet_s4", image_size=SIZE, operating_points={"default": 0.5})
    path = tmp_path / "s4.pt"
    save_model(fine, spec, path, info={"model_version": "test-s4"})
    coarse_det = FractureDetector.load(tmp_path / "s8.pt", backend="torch")
    torch_det = FractureDetector.load(path, backend="torch")
    onnx_det = FractureDetector.load(path, backend="onnx")
    for image in FIXTURE_IMAGES[:2]:
        a, b, c = coarse_det.predict(image), torch_det.predict(image), onnx_det.predict(image)
        assert b.probability == pytest.approx(a.probability, rel=1e-3, abs=1e-4)  # same function (adopted)
        assert b.probability == pytest.approx(c.probability, rel=1e-3, abs=1e-4)
        assert b.detections and np.allclose(np.array(b.detections), np.array(c.detections), rtol=1e-3, atol=0.5)
        scale = max(b.width, b.height) / SIZE  # input pixels -> image pixels
        assert abs(a.peak[0] - b.peak[0]) <= 8 * scale and abs(a.peak[1] - b.peak[1]) <= 8 * scale
        wa = np.array([d[2] - d[0] for d in a.detections])
        wb = np.array([d[2] - d[0] for d in b.detections])
        assert np.median(wb) == pytest.approx(np.median(wa), rel=0.35)  # boxes of the same size, in image pixels
        assert b.heatmap is not None and b.heatmap.shape == a.heatmap.shape
