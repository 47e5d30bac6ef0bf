"""The registry and the model kinds: names without torch, every architecture built as its kind says, each
kind's graph giving its named outputs, and no kind's decoding needing torch."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from bonefrac.models.kinds.base import Kind
from bonefrac.models.registry import ARCHS, KINDS, build_model, get_kind, kind_of
from bonefrac.spec import ModelSpec


def test_names_kinds_and_decoding_import_no_torch() -> None:
    """`bonefrac train --arch` checks a name, and onnxruntime predictions decode, without importing torch."""
    code = (
        "import sys\n"
        "from bonefrac.models import registry\n"
        "from bonefrac.train.config import ARCHS\n"
        "from bonefrac.inference.decode import predictions\n"
        "kinds = [registry.get_kind(k) for k in registry.KINDS]\n"
        "assert set(ARCHS) == set(registry.ARCHS), ARCHS\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_every_kind_is_registered_under_its_name() -> None:
    assert {kind_of(arch) for arch in ARCHS} == set(KINDS)
    for name in KINDS:
        kind = get_kind(name)
        assert isinstance(kind, Kind) and kind.name == name and kind.outputs
        assert set(kind.parity_as_probability) | set(kind.parity_as_is) <= set(kind.outputs)


def test_unknown_arch_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="unknown arch 'resnet9000'; choose one of efficientnet_lite0"):
        kind_of("resnet9000")


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_each_arch_builds_a_model_of_its_kind_whose_graph_gives_the_kinds_outputs(arch: str) -> None:
    """The model says its kind (the torch backend and the export find the graph through it), and the kind's
    export module returns one finite tensor per named output, batch first."""
    torch.manual_seed(0)
    spec = ModelSpec(arch=arch, image_size=64)
    model = build_model(spec, pretrained=False).eval()
    assert model.kind == kind_of(arch)
    kind = get_kind(model.kind)
    with torch.no_grad():
        values = kind.export_module(model, spec.image_size).eval()(torch.randn(2, 1, 64, 64))
    assert len(values) == len(kind.outputs)
    for name, v in zip(kind.outputs, values, strict=True):
        assert v.shape[0] == 2 and torch.isfinite(v).all(), name


def test_the_detector_and_the_classifier_share_no_import_cycle() -> None:
    """centernet builds on the backbone module, not on the classifier (the old models <-> centernet cycle)."""
    code = "import sys, bonefrac.models.centernet; print('bonefrac.models.classifier' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
