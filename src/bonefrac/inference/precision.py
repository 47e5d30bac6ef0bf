"""fp32 or int8: which export `FractureDetector.load` runs.

"int8" runs the checkpoint's int8 export (`quantize`) and "fp32" its fp32 one. "auto" (the default) runs int8
only where both hold: its parity with fp32, measured on a validation split when it was made, passed every gate
(`evaluation.parity`), and it is measured faster on this machine. The speed depends on the CPU (int8 gains most
with AVX-512 VNNI; on an AVX2-only machine it may not pay), so it is timed here, once per machine and pair of
files, and the verdict kept in the cache: about a second, the first time. $BONEFRAC_PRECISION sets the default
for every command and `FractureDetector.load` (e.g. fp32 for a site that validated fp32 only).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from bonefrac.errors import BonefracError
from bonefrac.inference.backends import OnnxBackend
from bonefrac.inference.export import write_json
from bonefrac.paths import cache_dir

PRECISIONS = ("auto", "fp32", "int8")
#: int8 must be at least this much faster to be chosen by "auto": a smaller gain is within the noise of a
#: shared machine and not worth the (small) difference in outputs.
MIN_SPEEDUP = 1.05
_PROBE_BATCH = 2  # predict's batch size (`backends.DEFAULT_BATCH_SIZE`)
_PROBE_ROUNDS = 5


def default_precision() -> str:
    """$BONEFRAC_PRECISION, else "auto"."""
    return os.environ.get("BONEFRAC_PRECISION") or "auto"


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise BonefracError(f"unknown precision {precision!r}: choose {', '.join(PRECISIONS)}")


def choose(precision: str, fp32: Path, int8: tuple[Path, dict[str, Any]] | None) -> tuple[Path, str, str]:
    """(ONNX file, "fp32" or "int8", why) for the asked `precision`, given the fp32 export and the int8 one with
    its sidecar (None when the checkpoint has none). Raises a one-line `BonefracError` when int8 is asked for
    and there is none."""
    check_precision(precision)
    if precision == "fp32":
        return fp32, "fp32", "asked for"
    if int8 is None:
        if precision == "int8":
            raise BonefracError(
                "--precision int8: this model has no int8 export beside it (make one with `bonefrac quantize`)"
            )
        return fp32, "fp32", "no int8 export for this model"
    path, meta = int8
    parity = meta.get("parity") or {}
    if precision == "int8":
        return path, "int8", "asked for" + ("" if parity.get("passed") else " (its parity gates did not all pass)")
    if not parity.get("passed"):
        return fp32, "fp32", "the int8 export did not pass its parity gates"
    speedup = measured_speedup(fp32, path)
    if speedup < MIN_SPEEDUP:
        return fp32, "fp32", f"int8 is not faster on this machine ({speedup:.2f}x)"
    return path, "int8", f"parity passed; {speedup:.2f}x fp32's speed on this machine"


def measured_speedup(fp32: Path, int8: Path) -> float:
    """fp32's time per batch over int8's on this machine (one thread each, as predict runs them), from the
    cache when this machine has timed these two files before."""
    key = _machine_key(fp32, int8)
    cached = cache_dir() / "precision" / f"{key}.json"
    try:
        return float(json.loads(cached.read_text())["speedup"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    speedup = _time_pair(fp32, int8)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        write_json(cached, {"speedup": speedup, "cpu": _cpu_name(), "fp32": str(fp32), "int8": str(int8)})
    except OSError:
        pass  # a read-only cache: timed again next time
    return speedup


def _time_pair(fp32: Path, int8: Path) -> float:
    sessions = [OnnxBackend(path, threads=1).session for path in (fp32, int8)]  # as predict's workers run them
    size = int(sessions[0].get_inputs()[0].shape[-1])
    # A smooth image rather than zeros: some kernels take shortcuts on constant input.
    ramp = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    x = np.broadcast_to(ramp[None, None, None, :] * ramp[None, None, :, None], (_PROBE_BATCH, 1, size, size)).copy()
    times: list[list[float]] = [[], []]
    for s in sessions:
        s.run(None, {"image": x})  # first runs allocate
    for _ in range(_PROBE_ROUNDS):  # alternating, so that a neighbour's load falls on both
        for i, s in enumerate(sessions):
            t0 = time.perf_counter()
            s.run(None, {"image": x})
            times[i].append(time.perf_counter() - t0)
    return statistics.median(times[0]) / statistics.median(times[1])


def _machine_key(fp32: Path, int8: Path) -> str:
    import onnxruntime as ort

    parts = [_cpu_name(), _cpu_flags(), ort.__version__, *(_file_id(p) for p in (fp32, int8))]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def _file_id(path: Path) -> str:
    sidecar = Path(f"{path}.sha256")
    if sidecar.is_file():
        return sidecar.read_text().split()[0]
    st = path.stat()
    return f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"


def _cpu_name() -> str:
    return _cpuinfo_field("model name") or platform.processor() or platform.machine()


def _cpu_flags() -> str:
    """The instruction sets that decide int8's speed (a machine's other flags do not)."""
    flags = set(_cpuinfo_field("flags").split())
    return ",".join(sorted(f for f in flags if f.startswith(("avx", "amx")) or f in ("fma", "f16c")))


def _cpuinfo_field(name: str) -> str:
    for line in _cpuinfo().splitlines():
        if line.startswith(name):
            return line.split(":", 1)[1].strip()
    return ""


@functools.cache
def _cpuinfo() -> str:
    """/proc/cpuinfo, read once per process ("" where there is none)."""
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
