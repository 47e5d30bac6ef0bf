"""FractureDetector: the public API. Load a model, predict on files or images, with heatmaps and boxes.

det = FractureDetector.load()              # the bundled default model
pred = det.predict("wrist.dcm")            # Prediction(probability, fractured, heatmap, boxes, ...)
for p in det.predict_many(paths): ...      # batched, decoding in parallel, bad files as errors
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .checkpoint import load_model, resolve_checkpoint, verified_digest
from .errors import BonefracError
from .explain import boxes_from_heatmap, heatmap_peak, normalize_heatmap
from .io import XrayImage, read_image
from .runtime import (
    DEFAULT_BATCH_SIZE,
    Backend,
    OnnxBackend,
    onnxruntime_available,
    process_cores,
    read_cached_export,
)
from .spec import ModelSpec
from .transforms import Geometry, preprocess, upsample_maps

if TYPE_CHECKING:  # torch is imported only when the torch model is used: ONNX inference runs without it
    import torch

    from .models import FractureNet


#: Default cap on `predict_many` workers: each holds a batch in flight (decoded images and the model's
#: activations), so memory grows with them; beyond it, the workers' model runs get several threads each.
MAX_WORKERS = 8


def bundled_model_path() -> Path:
    return Path(__file__).parent / "weights" / "model.pt"  # (importlib.resources: 14 ms of start-up for this)


@dataclass
class Prediction:
    """One image's result. `heatmap` is (H, W) in [0, 1] on the image as read; `boxes` are
    [x0, y0, x1, y1, score] in that image's pixels (empty unless `fractured`); `peak` is the [x, y]
    pixel where the heatmap is highest. `heatmap` and `image` are filled when heatmaps are asked for."""

    path: str | None
    probability: float
    fractured: bool
    threshold: float
    operating_point: str
    operating_points: dict[str, bool]
    boxes: list[list[float]]
    model_version: str
    width: int
    height: int
    peak: list[float] = field(default_factory=list)
    candidate_boxes: list[list[float]] = field(default_factory=list, repr=False)
    heatmap: np.ndarray | None = field(default=None, repr=False)
    image: XrayImage | None = field(default=None, repr=False)
    warnings: list[str] = field(default_factory=list)

    def decided_at(self, operating_point: str, threshold: float) -> Prediction:
        """The same prediction decided at another threshold: fractured when probability >= threshold, and
        then the heatmap's candidate boxes are its boxes. The one decision rule of bonefrac."""
        fractured = bool(self.probability >= threshold)
        return replace(
            self,
            operating_point=operating_point,
            threshold=float(threshold),
            fractured=fractured,
            boxes=list(self.candidate_boxes) if fractured else [],
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the keys of `bonefrac predict --json` (no heatmap array)."""
        return {
            "path": self.path,
            "probability": round(self.probability, 6),
            "fractured": self.fractured,
            "threshold": round(self.threshold, 6),
            "operating_point": self.operating_point,
            "operating_points": self.operating_points,
            "boxes": [[round(v, 1) for v in b[:4]] + [b[4]] for b in self.boxes],
            "peak": [round(v, 1) for v in self.peak],
            "width": self.width,
            "height": self.height,
            "model_version": self.model_version,
            **({"warnings": self.warnings} if self.warnings else {}),
        }


@dataclass
class PredictionError:
    """A file that could not be predicted, reported in the stream instead of raised."""

    path: str
    error: str

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "error": self.error}


@dataclass
class _Prepared:
    path: str | None
    tensor: np.ndarray
    geometry: Geometry
    image: XrayImage | None
    warnings: list[str]


class FractureDetector:
    """A trained fracture classifier with its preprocessing and calibrated operating points."""

    def __init__(
        self,
        model: FractureNet | None,
        spec: ModelSpec,
        info: dict[str, Any] | None = None,
        backend: str | Backend = "auto",
        checkpoint: str | Path | None = None,
    ) -> None:
        """`model` may be None when `backend` is a ready backend and `checkpoint` says where the torch
        model is (it is then loaded on first use of `.model`)."""
        if model is None and checkpoint is None:
            raise ValueError("FractureDetector needs a model or the checkpoint it comes from")
        self._model = model.eval() if model is not None else None
        self._checkpoint = checkpoint
        self.spec = spec
        self.info = info or {}
        self.version = self.info.get("model_version") or f"{spec.arch}-{spec.image_size}px-{self.sha256[:12]}"
        if isinstance(backend, str):
            from .export import make_backend

            backend = make_backend(self.model, spec, self.sha256, backend, self.info)
        self.backend: Backend = backend

    @property
    def model(self) -> FractureNet:
        """The torch module, (N, 1, S, S) -> (N,) logits; loaded on first use when predicting via ONNX."""
        if self._model is None:
            self._model = load_model(self._checkpoint)[0]
        return self._model

    @property
    def sha256(self) -> str:
        return str(self.info.get("sha256", "unversioned"))

    @property
    def operating_points(self) -> dict[str, float]:
        return dict(self.spec.operating_points)

    @classmethod
    def load(cls, path: str | Path | None = None, backend: str = "auto") -> FractureDetector:
        """The bundled default model, or a training run folder / checkpoint file.

        With the onnx backend and a cached export of this checkpoint (same SHA-256), torch is not imported:
        start-up drops from ~2.3 s to ~0.5 s (bench/bench_predict.py)."""
        checkpoint = resolve_checkpoint(bundled_model_path() if path is None else path)
        if backend in ("auto", "onnx") and onnxruntime_available():
            cached = read_cached_export(verified_digest(checkpoint))
            if cached is not None:
                onnx_path, spec, info = cached
                return cls(None, spec, info, OnnxBackend(onnx_path), checkpoint=checkpoint)
        model, spec, info = load_model(checkpoint)
        return cls(model, spec, info, backend, checkpoint=checkpoint)

    def preprocess(self, image: XrayImage) -> torch.Tensor:
        """The one preprocessing: (1, S, S) float32 model input for an `XrayImage`."""
        import torch

        return torch.from_numpy(preprocess(image, self.spec)[0])

    # ------------------------------------------------------------------ single images
    def predict(
        self, source: str | Path | XrayImage, operating_point: str = "default", heatmap: bool = True
    ) -> Prediction:
        """Predict one file or `XrayImage`. Raises `BonefracError` for unreadable files."""
        item = self._prepare(source, full_image=heatmap)
        return self._run([item], operating_point, full_heatmaps=heatmap)[0]

    # ------------------------------------------------------------------ many files
    def predict_many(
        self,
        paths: Iterable[str | Path],
        batch_size: int = DEFAULT_BATCH_SIZE,
        workers: int | None = None,
        operating_point: str = "default",
        heatmaps: bool = False,
    ) -> Iterator[Prediction | PredictionError]:
        """Stream results in input order; unreadable files come out as `PredictionError`.

        Each of `workers` threads (default: one per core of this process, at most `MAX_WORKERS`) takes a batch
        through read -> preprocess -> model -> heatmap and boxes, so one worker decodes while another runs
        the model. Each model run gets cores // workers threads (one on a small machine): a run on several
        threads stalls at every layer whenever a decoding thread holds one of its cores (measured on 2
        cores: 97 -> 112 images/s).
        """
        self._check_operating_point(operating_point)
        workers = max(1, workers or min(process_cores(), MAX_WORKERS))
        backend = self.backend.for_workers(workers) if workers > 1 else self.backend
        # The onnxruntime session (~70 ms) is made while the workers read their first batches, not after.
        threading.Thread(target=_warm_quietly, args=(backend,), daemon=True).start()
        pool = ThreadPoolExecutor(workers)
        inflight: deque[Future[list[Prediction | PredictionError]]] = deque()
        try:
            for batch in _chunks(paths, batch_size, workers):
                inflight.append(pool.submit(self._predict_batch, batch, backend, operating_point, heatmaps))
                # Every worker busy and as many batches queued: memory stays bounded, and a worker that
                # finishes while the oldest batch is still running finds the next one waiting (with one
                # queued batch, workers sat idle ~1% of the time).
                if len(inflight) >= 2 * workers:
                    yield from inflight.popleft().result()
            while inflight:
                yield from inflight.popleft().result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _predict_batch(
        self, paths: list[str | Path], backend: Backend, operating_point: str, heatmaps: bool
    ) -> list[Prediction | PredictionError]:
        pending = [self._try_prepare(p, heatmaps) for p in paths]
        ready = [p for p in pending if isinstance(p, _Prepared)]
        results = iter(self._run(ready, operating_point, heatmaps, backend) if ready else [])
        return [next(results) if isinstance(p, _Prepared) else p for p in pending]

    def _try_prepare(self, path: str | Path, full_image: bool) -> _Prepared | PredictionError:
        try:
            return self._prepare(path, full_image)
        except BonefracError as e:
            return PredictionError(str(path), str(e))
        except Exception as e:  # never let one hostile file take the batch down
            return PredictionError(str(path), f"{Path(path).name}: unexpected error: {type(e).__name__}: {e}")

    # ------------------------------------------------------------------ internals
    def _prepare(self, source: str | Path | XrayImage, full_image: bool = False) -> _Prepared:
        """Read (a very large JPEG at reduced scale) and preprocess; with `full_image`, keep the whole
        image too, for overlays (a reduced read is then followed by a full one)."""
        if isinstance(source, XrayImage):
            image, path = source, source.path
        else:
            image, path = read_image(source, self.spec.image_size, self.spec.reduce_from), str(source)
        tensor, geometry = preprocess(image, self.spec)
        if full_image and image.meta.get("reduced_by", 1) > 1:  # a reduced read always comes from a file
            image = read_image(path)
        return _Prepared(path, tensor, geometry, image, list(image.meta.get("warnings", [])))

    def _check_operating_point(self, name: str) -> None:
        if name not in self.spec.operating_points:
            raise BonefracError(
                f"unknown operating point {name!r}; choose one of {', '.join(self.spec.operating_points)}"
            )

    def _run(
        self, items: list[_Prepared], operating_point: str, full_heatmaps: bool, backend: Backend | None = None
    ) -> list[Prediction]:
        self._check_operating_point(operating_point)
        x = np.stack([i.tensor for i in items])
        logits, cams = (backend or self.backend).run(x)
        probs = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
        threshold = self.spec.operating_points[operating_point]
        out = []
        upsampled = upsample_maps(cams, self.spec.image_size)
        for item, prob, up in zip(items, probs, upsampled, strict=True):
            g = item.geometry
            # Boxes from the heatmap at model resolution (cheap), scaled back to image pixels.
            content = normalize_heatmap(g.crop_content(up))
            px, py = heatmap_peak(content)
            undecided = Prediction(
                path=item.path,
                probability=float(prob),
                fractured=False,
                threshold=float("nan"),
                operating_point="",
                operating_points={k: bool(prob >= t) for k, t in self.spec.operating_points.items()},
                boxes=[],
                model_version=self.version,
                width=g.width,
                height=g.height,
                peak=g.content_box_to_image([px + 0.5, py + 0.5, px + 0.5, py + 0.5])[:2],  # pixel centre
                candidate_boxes=[g.content_box_to_image(b) for b in boxes_from_heatmap(content, float(prob))],
                heatmap=normalize_heatmap(g.content_to_image(content)) if full_heatmaps else None,
                image=item.image if full_heatmaps else None,
                warnings=item.warnings,
            )
            out.append(undecided.decided_at(operating_point, threshold))
            item.image = None  # release pixels early when streaming many files
        return out


def _warm_quietly(backend: Backend) -> None:
    try:
        backend.warm()
    except Exception:  # noqa: S110 (the first batch makes the session again and reports what went wrong there)
        pass


def _chunks(items: Iterable[str | Path], n: int, parts: int = 1) -> Iterator[list[str | Path]]:
    """Batches of `n`; the last `parts` batches' worth is split evenly, so that the run does not end on
    one worker finishing a whole batch while the others wait."""
    it, n = iter(items), max(1, n)
    ahead = list(islice(it, n * parts))
    while len(ahead) == n * parts:
        yield ahead[:n]
        ahead = ahead[n:] + list(islice(it, n))
    k = min(parts, len(ahead))
    for i in range(k):
        yield ahead[i * len(ahead) // k : (i + 1) * len(ahead) // k]
