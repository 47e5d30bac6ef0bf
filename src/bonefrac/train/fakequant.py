"""Quantization-aware fine-tuning (`bonefrac train --fake-quant`): train through the int8 export's rounding.

`bonefrac quantize` (`inference.quantize`) runs the model's convolutions in int8. Quantized after training,
the rounding moved the bundled detector's decisions on a few percent of its validation images, past the parity
gates (`evaluation.parity`). A short fine-tune of the trained model with that rounding simulated in the forward
pass (straight-through gradients) moves its weights to where the rounding matters less; what is saved is the
fp32 model, in the usual format, which `bonefrac quantize` then quantizes for real.

Simulated as onnxruntime quantizes (QDQ): each quantized convolution's weight per output channel, symmetric
int8 (scale max |w| / 127), which commutes with folding the BatchNorm after it (a per-channel scale) so the
unfolded weight is rounded here; its input per tensor, asymmetric uint8. onnxruntime fixes each input's range
from calibration images; here each batch's own range is used: no state to keep in step between the model, its
EMA copy and the ranks, and noise of the same size.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from torch import nn

from bonefrac.inference.quantize import QUANTIZED_MODULES


def quantized_convs(model: nn.Module) -> list[str]:
    """The names of the convolutions the int8 export quantizes (`inference.quantize.QUANTIZED_MODULES`)."""
    return [
        name for name, m in model.named_modules() if isinstance(m, nn.Conv2d) and name.startswith(QUANTIZED_MODULES)
    ]


def enable(model: nn.Module) -> int:
    """Round every quantized convolution's weight and input in its forward pass from now on (the model's
    parameters and state_dict are unchanged); returns how many convolutions."""
    names = set(quantized_convs(model))
    for name, m in model.named_modules():
        if name in names:
            m.forward = types.MethodType(_fake_quant_forward, m)  # copied with the module (the EMA's deepcopy)
    return len(names)


def fake_quant_weight(w: torch.Tensor) -> torch.Tensor:
    scale = w.detach().abs().amax(dim=(1, 2, 3)).clamp_min(1e-8) / 127
    zero = torch.zeros(w.shape[0], dtype=torch.int32, device=w.device)
    return torch.fake_quantize_per_channel_affine(w, scale.float(), zero, 0, -127, 127)


def fake_quant_activation(x: torch.Tensor) -> torch.Tensor:
    lo, hi = x.detach().amin().clamp_max(0), x.detach().amax().clamp_min(0)
    scale = ((hi - lo) / 255).clamp_min(1e-8)
    zero = torch.round(-lo / scale).clamp(0, 255).to(torch.int32)
    return torch.fake_quantize_per_tensor_affine(x, scale.float(), zero, 0, 255)


def _fake_quant_forward(self: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    return F.conv2d(
        fake_quant_activation(x),
        fake_quant_weight(self.weight),
        self.bias,
        self.stride,
        self.padding,
        self.dilation,
        self.groups,
    )
