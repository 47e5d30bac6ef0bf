"""The classifiers: 1-channel input, one fracture logit per image, and a class-activation map.

Every classifier exposes `forward_features(x) -> (N, C, h, w)` and `forward_head(features) -> (N,)` (the timm
convention), so class-activation heatmaps come from public methods, not hooks. `ModelSpec` holds every
hyper-parameter that changes what the model computes; it is saved inside each checkpoint, and
`registry.build_model(spec)` rebuilds the network from it alone (the builders below are named in the registry).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bonefrac.models.efficientnet import FEATURES, EfficientNetLite0
from bonefrac.spec import ModelSpec


class ClassifierHead(nn.Module):
    """Global average pool -> dropout -> linear. Linear after pooling, so applying it at each location
    gives a class-activation map whose mean is exactly the logit."""

    def __init__(self, in_features: int, drop_rate: float) -> None:
        super().__init__()
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(in_features, 1)
        # Zero init: the first logits are 0 (p = 0.5) instead of a random head's large loss under pos_weight.
        nn.init.zeros_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        pooled = features.mean(dim=(2, 3))
        return self.fc(self.drop(pooled)).squeeze(1)


class FractureNet(nn.Module):
    """Shared public surface: forward = forward_head(forward_features(x)); a subclass sets `head`."""

    head: nn.Module
    #: The model's kind in `registry.KINDS` (what the torch backend and the export build their graph with).
    kind = "classifier"

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)

    def forward(self, x: torch.Tensor, return_cam: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Logits (N,); with `return_cam`, also the class-activation map (N, h, w). Both in one call so that
        training with box supervision goes through DistributedDataParallel's forward."""
        features = self.forward_features(x)
        logits = self.forward_head(features)
        if not return_cam:
            return logits
        return logits, self.class_activation_map(features)

    def class_activation_map(self, features: torch.Tensor) -> torch.Tensor:
        """(N, C, h, w) features -> (N, h, w) per-location logits, via the model's own `forward_head`.

        The head is global-average-pool then linear, so the head applied at every location gives a map whose
        mean is exactly the image logit (CAM, Zhou et al. 2016): no hooks, no gradients, and the same
        computation runs in torch and inside the ONNX graph."""
        n, c, h, w = features.shape
        cells = features.permute(0, 2, 3, 1).reshape(n * h * w, c, 1, 1)
        return self.forward_head(cells).reshape(n, h, w)


class LogitAndCam(nn.Module):
    """The inference graph (the torch backend runs it, `export` writes it as ONNX): logits (N,) and the
    class-activation maps upsampled onto the (size, size) model input, bicubic.

    Bicubic, not bilinear: a bilinear surface peaks exactly on a feature-grid point, a bicubic one between
    points, towards the warmer neighbours. Torch's kernel puts the bundled model's peak inside the validation
    fracture boxes on 0.474 of images, Pillow's on 0.456. The upsampling is torch's own `interpolate`, applied
    as two small matrix products (`bicubic_weights`): onnxruntime's cubic Resize costs more than the rest of the
    post-processing together (bench/README.md)."""

    def __init__(self, model: FractureNet, size: int) -> None:
        super().__init__()
        self.model = model
        with torch.no_grad():
            h, w = model.forward_features(torch.zeros(1, 1, size, size)).shape[-2:]
        self.register_buffer("rows", bicubic_weights(h, size), persistent=False)
        self.register_buffer("cols", bicubic_weights(w, size), persistent=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, cam = self.model(x, return_cam=True)
        return logits, self.rows @ cam @ self.cols.T


def bicubic_weights(n_in: int, n_out: int) -> torch.Tensor:
    """(n_out, n_in) matrix M with M @ v == interpolate(v, n_out, "bicubic", align_corners=False) for any
    v: torch's resampling of each basis vector, so that resampling becomes one product."""
    basis = torch.eye(n_in).reshape(n_in, 1, n_in, 1)  # each basis vector as an (n_in x 1) image
    return F.interpolate(basis, size=(n_out, 1), mode="bicubic", align_corners=False).reshape(n_in, n_out).T


class Lite0Classifier(EfficientNetLite0, FractureNet):
    """EfficientNet-Lite0 with the classifier head (`head`; the backbone's layers keep their ImageNet names)."""

    def __init__(self, drop_rate: float = 0.2, drop_path_rate: float = 0.1) -> None:
        super().__init__(drop_rate, drop_path_rate)
        self.head = ClassifierHead(FEATURES, drop_rate)


# ---------------------------------------------------------------- the seed CNN
class SeedCNN(FractureNet):
    """The plain CNN the project started from (the Keras "Bone-fracture-detection" repo): stacked
    conv + max-pool blocks and a fully connected head. Kept as the baseline every model is compared to."""

    def __init__(self, drop_rate: float = 0.5, drop_path_rate: float = 0.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 1
        for cout in (32, 64, 128, 128, 256):
            layers += [
                nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.head = ClassifierHead(256, drop_rate)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


# ---------------------------------------------------------------- box supervision of the heatmap
def box_targets(cam: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The share of each heatmap cell covered by boxes (N, h*w), and which images have any box (N,)."""
    target = F.adaptive_avg_pool2d(masks, cam.shape[-2:]).flatten(1)
    return target, target.sum(1) > 1e-6


def localization_loss(cam: torch.Tensor, masks: torch.Tensor, n_boxed: int | None = None) -> torch.Tensor:
    """Cross-entropy between the heatmap's spatial softmax and the share of each cell covered by boxes.

    It shapes only *where* the heatmap is high, relative to the rest of the image, so it does not fight
    the image-level logit (the heatmap's mean). Images without boxes (negatives) contribute nothing. The
    mean is over the boxed images here, or over `n_boxed` images: under DDP the global batch's count, so
    that the ranks' losses add up to the loss one process computes on the whole batch.
    """
    target, keep = box_targets(cam, masks)
    if not keep.any():
        return cam.sum() * 0.0  # keeps every parameter in the graph (DistributedDataParallel needs that)
    target = target[keep] / target[keep].sum(1, keepdim=True)
    per_image = -(target * F.log_softmax(cam[keep].flatten(1), dim=1)).sum(1)
    return per_image.mean() if n_boxed is None else per_image.sum() / n_boxed


# ---------------------------------------------------------------- the builders `registry.ARCHS` names
def lite0_pretrained(spec: ModelSpec, pretrained: bool = True) -> FractureNet:
    """EfficientNet-Lite0 from the ImageNet weights (`pretrained=False`: the weights come from a checkpoint)."""
    model = Lite0Classifier(spec.drop_rate, spec.drop_path_rate)
    if pretrained:
        model.load_imagenet()
    return model


def lite0_scratch(spec: ModelSpec, pretrained: bool = True) -> FractureNet:
    """EfficientNet-Lite0 from random weights."""
    return Lite0Classifier(spec.drop_rate, spec.drop_path_rate)


def seed_cnn(spec: ModelSpec, pretrained: bool = True) -> FractureNet:
    """The seed CNN (no pretrained weights; no stochastic depth)."""
    return SeedCNN(spec.drop_rate)
