"""Mixed precision for training: which autocast dtype `--precision` means on a device, and the loss scaler.

"auto" is fp32 on a CPU: bf16 autocast pays only on CPUs with AVX512-BF16 (bench/bench_train_detector.py
measures it); on one without it ran ~12x slower. On a GPU, bf16 where the GPU supports it (Ampere and later:
no loss scaling needed, fp32's range), else fp16 with a GradScaler. The weights, the optimiser and the EMA
stay fp32; only a step's forward pass and loss run under autocast (the losses cast to fp32 themselves).
"""

from __future__ import annotations

from contextlib import AbstractContextManager

import torch

from bonefrac.train.config import ConfigError

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_dtype(precision: str, dev: torch.device) -> torch.dtype | None:
    """The autocast dtype (None: plain fp32) of `precision` (one of `train_config.PRECISIONS`) on `dev`;
    `ConfigError` for what cannot run there (a CUDA device torch cannot see, fp16 on a CPU)."""
    if dev.type == "cuda" and not torch.cuda.is_available():
        built = "" if torch.backends.cuda.is_built() else f" (torch {torch.__version__} is built without CUDA)"
        raise ConfigError(f"--device cuda: torch sees no CUDA GPU{built}")
    if precision == "auto":
        precision = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if dev.type == "cuda" else "fp32"
    if precision == "fp16" and dev.type != "cuda":
        raise ConfigError("--precision fp16: needs a GPU (--device cuda); on a CPU use fp32 or bf16")
    return DTYPES[precision]


class MixedPrecision:
    """A run's arithmetic: `autocast()` around a step's forward pass and loss, `step(loss, opt)` for the
    backward pass and the optimiser step (through the fp16 loss scaler; a pass-through otherwise)."""

    def __init__(self, precision: str, dev: torch.device) -> None:
        self.device = dev
        self.dtype = autocast_dtype(precision, dev)
        # fp16 overflows without loss scaling; bf16 has fp32's range. The scale is saved in last.pt.
        self.scaler = torch.amp.GradScaler(dev.type, enabled=self.dtype == torch.float16)
        if dev.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed input sizes (crops, whole images): tuned kernels pay

    def autocast(self) -> AbstractContextManager[None]:
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None)

    def step(self, loss: torch.Tensor, opt: torch.optim.Optimizer) -> None:
        opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(opt)
        self.scaler.update()
