"""The architectures and the model kinds, by name; importing this module imports no torch.

An architecture names its kind and its builder (`"module:function"`, imported only to build), so checking a
name (`bonefrac train --arch`, `ModelSpec.kind`) costs nothing. A kind (`kinds/`) owns everything that differs
between a classifier and a detector: output names, inference graph, decoding, loss, training step. Adding a
kind is one module under `kinds/` and one line in `KINDS`; adding an architecture, one line in `ARCHS`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from torch import nn

    from bonefrac.models.kinds.base import Kind
    from bonefrac.spec import ModelSpec


class Arch(NamedTuple):
    kind: str
    #: "module:function", called as function(spec, pretrained) -> the torch module.
    builder: str


ARCHS: dict[str, Arch] = {
    "efficientnet_lite0": Arch("classifier", "bonefrac.models.classifier:lite0_pretrained"),
    "efficientnet_lite0_scratch": Arch("classifier", "bonefrac.models.classifier:lite0_scratch"),
    "seed_cnn": Arch("classifier", "bonefrac.models.classifier:seed_cnn"),
    "lite0_centernet": Arch("detector", "bonefrac.models.centernet:build_detector"),
    "lite0_centernet_s4": Arch("detector", "bonefrac.models.centernet:build_detector"),
}

#: Kind name -> "module:attribute" of its `Kind` instance.
KINDS: dict[str, str] = {
    "classifier": "bonefrac.models.kinds.classifier:CLASSIFIER",
    "detector": "bonefrac.models.kinds.detector:DETECTOR",
}


def _resolve(path: str) -> Any:
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def kind_of(arch: str) -> str:
    """The kind name of an architecture ("classifier", "detector"); ValueError for an unknown one."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
    return ARCHS[arch].kind


def get_kind(name: str) -> Kind:
    """The `Kind` called `name` (a key of `KINDS`)."""
    return _resolve(KINDS[name])


def kind_for(spec: ModelSpec) -> Kind:
    """The kind of `spec`'s architecture."""
    return get_kind(kind_of(spec.arch))


def build_model(spec: ModelSpec, pretrained: bool = True) -> nn.Module:
    """Build the network for `spec`. `pretrained=False` skips ImageNet loading (weights come from a checkpoint)."""
    kind_of(spec.arch)  # refuses an unknown name
    return _resolve(ARCHS[spec.arch].builder)(spec, pretrained)
