"""`make test`'s second pass (`-m numeric` under ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2
MKL_ENABLE_INSTRUCTIONS=AVX2) really runs on AVX2 kernels: without this check a misspelt variable would make the
pass a silent copy of the first."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = [
    pytest.mark.numeric,
    pytest.mark.skipif(
        os.environ.get("ATEN_CPU_CAPABILITY", "").lower() != "avx2", reason="runs in make test's AVX2 pass only"
    ),
]

#: A convolution (oneDNN) and a matrix product (MKL), each library saying which instruction set it dispatched to.
_CONV_AND_GEMM = """
import torch
with torch.no_grad():
    torch.nn.Conv2d(16, 16, 3)(torch.randn(2, 16, 16, 16))
    torch.randn(64, 64) @ torch.randn(64, 64)
"""


def test_the_avx2_pass_runs_avx2_kernels() -> None:
    import torch

    assert torch.backends.cpu.get_cpu_capability() == "AVX2"  # ATen's own vectorised kernels
    env = {**os.environ, "ONEDNN_VERBOSE": "1", "MKL_VERBOSE": "1"}
    r = subprocess.run([sys.executable, "-c", _CONV_AND_GEMM], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    isa = [line for line in r.stdout.splitlines() if "isa:" in line]  # onednn_verbose,...,cpu,isa:Intel AVX2
    assert isa and all(line.rstrip().endswith("AVX2") for line in isa), isa
    convolutions = [line for line in r.stdout.splitlines() if ",convolution," in line]
    assert convolutions and not any("avx512" in line for line in convolutions), convolutions
    mkl = [line for line in r.stdout.splitlines() if line.startswith("MKL_VERBOSE oneMKL")]
    # MKL names the instruction set it enabled: "... (Intel(R) AVX2) enabled processors" (not AVX-512 or AMX)
    assert not mkl or all("AVX-512" not in line and "AMX" not in line for line in mkl), mkl
