"""The two inference backends behind one `run(x) -> {output name: array}` call: onnxruntime and eager torch.

Named outputs (the ONNX export's output names): the model kind's `outputs` (`models.kinds`), e.g. a
classifier's "logit" and "cam", a detector's "heatmap", "size", "offset" and "global".

onnxruntime runs these CNNs several times faster than eager torch on CPU (bench/README.md), so it is the
default; torch is imported only by `TorchBackend`, which keeps `bonefrac predict` on a cached export free of
it. Choosing and building a backend for a checkpoint is `FractureDetector.load`'s job.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from bonefrac.models.registry import get_kind

if TYPE_CHECKING:
    import torch

#: Images per model run in `predict_many` (and so in predict, evaluate and the demo): each core runs its own
#: single-threaded batch, and small batches keep both runs' activations in the shared cache (bench/README.md).
DEFAULT_BATCH_SIZE = 2


class Backend(Protocol):
    name: str

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """(N, 1, S, S) float32 -> the named outputs (module docstring)."""
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
        `bonefrac predict` only ever runs the single-threaded sibling."""
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
                # ENABLE_ALL: EXTENDED makes the session faster but runs the model much slower.
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

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        session = self.session
        names = [o.name for o in session.get_outputs()]
        values = session.run(names, {"image": np.ascontiguousarray(x, dtype=np.float32)})
        return dict(zip(names, values, strict=True))


class TorchBackend:
    name = "torch"

    def __init__(self, model: torch.nn.Module, size: int) -> None:
        """`model`: a built model of any kind (`models.registry`); `size`: the side of its square input
        (`ModelSpec.image_size`)."""
        self.graph = inference_graph(model, size).eval()
        self.outputs = get_kind(model.kind).outputs
        # torch already spreads one call over every core; concurrent calls would only oversubscribe them.
        self._lock = threading.Lock()

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        import torch

        with self._lock, torch.inference_mode():
            values = self.graph(torch.from_numpy(x))
        return {name: v.numpy() for name, v in zip(self.outputs, values, strict=True)}

    def for_workers(self, workers: int) -> TorchBackend:
        return self  # calls are serialised instead (see __init__)

    def warm(self) -> None:
        pass  # the module is ready once built


def inference_graph(model: torch.nn.Module, size: int) -> torch.nn.Module:
    """The module the torch backend runs and `export` writes as ONNX: its outputs are its kind's `outputs`."""
    return get_kind(model.kind).export_module(model, size)


def process_cores() -> int:
    """This process's share of the machine's cores: under torchrun, the node's ranks split them."""
    return max(1, (os.cpu_count() or 1) // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True
