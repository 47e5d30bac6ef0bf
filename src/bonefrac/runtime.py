"""Running an exported model without torch: the onnxruntime backend and the export cache.

`bonefrac predict` spends most of its start-up importing torch (1.2 s of 2.3 s, measured), and onnxruntime
does not need it. So each export is cached under its checkpoint's SHA-256 together with a JSON copy of the
checkpoint's `ModelSpec` and facts: the second and later runs verify the checkpoint's digest, find its
export, and predict without importing torch at all. (The first run per checkpoint loads it with torch and
exports it: `export.cached_onnx`.)
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .jsonable import jsonable
from .spec import ModelSpec

CACHE_FORMAT = "bonefrac-onnx-cache-v1"

#: Images per model run in `predict_many` (and so in predict, evaluate and the demo). Small batches win here:
#: each core runs its own single-threaded batch, and at 2 images the activations of both runs stay in the
#: shared cache. 800 FracAtlas files on 2 cores, medians of 6 interleaved rounds: the model alone 124 images/s
#: at 2 and 4, 110 at 6 and 8; `bonefrac predict` 103 at 2, 96-98 at 4-6, 93 at 8. (Another 5 rounds: batches of
#: 1-4 within 5% of each other, 2 the fastest.) Eager torch, 200 files: 8.8-10.2 s at 2, 10.9-11.1 s at 8.
DEFAULT_BATCH_SIZE = 2


class Backend(Protocol):
    name: str

    def run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, 1, S, S) float32 -> (logits (N,), class-activation maps (N, h, w))."""
        ...

    def for_workers(self, workers: int) -> Backend:
        """A backend for `workers` threads running batches at once, sharing the cores between them."""
        ...

    def warm(self) -> None:
        """Get ready to run now (e.g. from a background thread while the first files are read)."""
        ...


class OnnxBackend:
    name = "onnx"

    def __init__(self, onnx_path: str | Path, threads: int | None = None) -> None:
        """`threads`: onnxruntime's intra-op threads (None: all cores). The session is made on first use:
        `bonefrac predict` only ever runs the single-threaded sibling, and each session costs ~45 ms."""
        self.path = str(onnx_path)
        if not Path(self.path).is_file():
            raise FileNotFoundError(self.path)
        self.threads = threads
        self._session: Any = None
        self._siblings: dict[int, OnnxBackend] = {}
        self._lock = threading.Lock()

    @property
    def session(self) -> Any:
        with self._lock:
            if self._session is None:
                import onnxruntime as ort

                opts = ort.SessionOptions()
                opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
                if self.threads:
                    opts.intra_op_num_threads = self.threads
                self._session = ort.InferenceSession(self.path, opts, providers=["CPUExecutionProvider"])
        return self._session

    def for_workers(self, workers: int) -> OnnxBackend:
        """A session on the same export with cores // workers intra-op threads (one per core on a small
        machine), made once per thread count; onnxruntime runs are thread-safe."""
        threads = max(1, process_cores() // max(1, workers))
        if self.threads == threads:
            return self
        with self._lock:
            if threads not in self._siblings:
                self._siblings[threads] = OnnxBackend(self.path, threads=threads)
        return self._siblings[threads]

    def warm(self) -> None:
        self.session  # noqa: B018 (made on first access)

    def run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, cam = self.session.run(["logit", "cam"], {"image": np.ascontiguousarray(x, dtype=np.float32)})
        return logits, cam


def process_cores() -> int:
    """This process's share of the machine's cores: under torchrun, the node's ranks split them."""
    return max(1, (os.cpu_count() or 1) // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def onnx_cache_path(sha256: str) -> Path:
    from .data import default_cache_dir

    return default_cache_dir() / "onnx" / f"{sha256[:16]}.onnx"


def _meta_path(sha256: str) -> Path:
    return onnx_cache_path(sha256).with_suffix(".json")


def read_cached_export(sha256: str) -> tuple[Path, ModelSpec, dict[str, Any]] | None:
    """The cached export of the checkpoint with this digest: (ONNX file, spec, info), or None."""
    onnx_path, meta_path = onnx_cache_path(sha256), _meta_path(sha256)
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("format") != CACHE_FORMAT or meta.get("sha256") != sha256:
        return None
    if not onnx_path.is_file():
        return None
    return onnx_path, ModelSpec.from_dict(meta["spec"]), dict(meta.get("info") or {})


def write_cache_meta(sha256: str, spec: ModelSpec, info: dict[str, Any]) -> None:
    """Record the spec and facts beside an export (atomically; written after the ONNX file)."""
    path = _meta_path(sha256)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    meta = {"format": CACHE_FORMAT, "sha256": sha256, "spec": spec.to_dict(), "info": jsonable(info)}
    tmp.write_text(json.dumps(meta, indent=1))
    os.replace(tmp, path)
