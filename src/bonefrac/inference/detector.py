"""FractureDetector: the public API. Load a model, predict on files or images, with heatmaps and boxes.

det = FractureDetector.load()              # the bundled default model
pred = det.predict("wrist.dcm")            # Prediction(probability, fractured, heatmap, boxes, ...)
for p in det.predict_many(paths): ...      # batched, decoding in parallel, bad files as errors
for image, p in det.predict_many(paths, with_images=True): ...   # each with the image it was made from

Data flow: file -> `preprocess.read_for_model` -> `preprocess.preprocess` -> backend (named outputs) ->
`decode.predictions`. Nothing else turns model outputs into results.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, overload

import numpy as np
from PIL import Image

from bonefrac.errors import BonefracError
from bonefrac.inference.backends import DEFAULT_BATCH_SIZE, Backend, OnnxBackend, onnxruntime_available, process_cores
from bonefrac.inference.decode import DISPLAY_SIDE, HeatmapOption, display_shape, predictions
from bonefrac.io.modality import check_radiograph
from bonefrac.io.read import XrayImage
from bonefrac.models.checkpoint import bundled_model_path, load_model, resolve_checkpoint, verified_digest
from bonefrac.models.registry import kind_of
from bonefrac.preprocess import Geometry, float_image, preprocess, read_for_model
from bonefrac.results import Prediction, PredictionError
from bonefrac.spec import ModelSpec

if TYPE_CHECKING:  # torch is imported only when the torch model is used: ONNX inference runs without it
    import torch

__all__ = ["FractureDetector", "Prediction", "PredictionError"]

#: Default cap on `predict_many` workers: each holds a batch in flight (decoded images and the model's
#: activations), so memory grows with them; beyond it, the workers' model runs get several threads each.
MAX_WORKERS = 8
BACKENDS = ("auto", "onnx", "torch")

Result = Prediction | PredictionError
#: `predict_many(..., with_images=True)`: each result with the image it was made from (None for a file that
#: could not be read), at display size (`display_image`).
ImageResult = tuple[XrayImage | None, Result]


@dataclass
class _Prepared:
    path: str | None
    tensor: np.ndarray
    geometry: Geometry
    warnings: list[str]
    image: XrayImage | None = None  # kept (at display size) only for `predict_many(..., with_images=True)`


class FractureDetector:
    """A trained fracture model (a detector, or a classifier with a heatmap) with its preprocessing,
    calibration, operating points and inference backend.

    Build one with `FractureDetector.load`; the constructor only stores what it is given."""

    def __init__(
        self,
        spec: ModelSpec,
        backend: Backend,
        info: dict[str, Any] | None = None,
        checkpoint: str | Path | None = None,
        model: torch.nn.Module | None = None,
    ) -> None:
        """`model` may be None when `checkpoint` says where the torch model is (loaded on first use)."""
        self.spec = spec
        self.backend = backend
        self.info = info or {}
        self.checkpoint = checkpoint
        self._model = model
        #: "fp32" or "int8" (`load`'s `precision`), and why it was chosen
        self.precision, self.precision_reason = "fp32", "the torch model" if backend.name == "torch" else "given"

    @classmethod
    def load(
        cls, path: str | Path | None = None, backend: str = "auto", precision: str | None = None
    ) -> FractureDetector:
        """The bundled default model, or a training run folder / checkpoint file.

        `backend`: "onnx" (onnxruntime), "torch", or "auto" (onnx when onnxruntime imports). The ONNX export
        comes from beside the checkpoint when it ships there (the bundled model's `model.onnx`: no torch
        needed), else from the per-checkpoint cache, else it is made now with torch and cached; with a shipped
        or cached export, torch is not imported at all (a fast start).

        `precision`: "fp32", "int8" (the checkpoint's `model.int8.onnx`, made by `bonefrac quantize`; onnx only)
        or "auto": int8 where its parity passed and it is measured faster on this machine (`precision`); None:
        $BONEFRAC_PRECISION, else "auto"."""
        from bonefrac.inference.precision import check_precision, default_precision

        precision = precision or default_precision()
        if backend not in BACKENDS:
            raise BonefracError(f"unknown backend {backend!r}: choose {', '.join(BACKENDS)}")
        check_precision(precision)
        checkpoint = resolve_checkpoint(bundled_model_path() if path is None else path)
        use_onnx = backend != "torch" and onnxruntime_available()
        if backend == "onnx" and not use_onnx:
            raise BonefracError("backend onnx: onnxruntime is not installed (pip install onnxruntime)")
        if precision == "int8" and not use_onnx:
            raise BonefracError("--precision int8 runs on onnxruntime: use --backend onnx (or auto) with it installed")
        if use_onnx:
            from bonefrac.inference.export import read_cached_export, read_shipped_export

            digest = verified_digest(checkpoint)
            found = read_shipped_export(checkpoint, digest) or read_cached_export(digest)
            if found is not None:
                onnx_path, spec, info = found
                return cls._onnx(spec, onnx_path, info, checkpoint, precision, digest)
        model, spec, info = load_model(checkpoint)
        if use_onnx:
            from bonefrac.inference.export import cached_export

            onnx_path = cached_export(model, spec, info)
            return cls._onnx(spec, onnx_path, info, checkpoint, precision, str(info["sha256"]), model)
        from bonefrac.inference.backends import TorchBackend

        return cls(spec, TorchBackend(model, spec.image_size), info, checkpoint, model)

    @classmethod
    def _onnx(
        cls,
        spec: ModelSpec,
        fp32: Path,
        info: dict[str, Any],
        checkpoint: Path,
        precision: str,
        digest: str,
        model: torch.nn.Module | None = None,
    ) -> FractureDetector:
        """On onnxruntime, with the fp32 export or the int8 one as `precision` chooses."""
        from bonefrac.inference.precision import choose
        from bonefrac.inference.quantize import read_int8

        int8 = read_int8(checkpoint, digest) if precision != "fp32" else None
        path, chosen, why = choose(precision, fp32, int8)
        det = cls(spec, OnnxBackend(path), info, checkpoint, model)
        det.precision, det.precision_reason = chosen, why
        return det

    @property
    def model(self) -> torch.nn.Module:
        """The torch module (`FractureNet` or `CenterNetLite0`); loaded on first use when predicting via ONNX."""
        if self._model is None:
            if self.checkpoint is None:
                raise BonefracError("this detector has no checkpoint to load its torch model from")
            self._model = load_model(self.checkpoint)[0]
        return self._model

    @property
    def sha256(self) -> str:
        return str(self.info.get("sha256", "unversioned"))

    @property
    def version(self) -> str:
        return str(self.info.get("model_version") or f"{self.spec.arch}-{self.spec.image_size}px-{self.sha256[:12]}")

    @property
    def operating_points(self) -> dict[str, float]:
        return dict(self.spec.operating_points)

    @property
    def kind(self) -> str:
        """What the model is: "detector" (boxes from a CenterNet head) or "classifier" (a heatmap's hot regions)."""
        return kind_of(self.spec.arch)

    def facts(self) -> dict[str, Any]:
        """The model card facts as plain JSON (what `/api/model` and `metrics.json` show)."""
        from bonefrac.models.metadata import model_facts

        facts = model_facts(self.spec, self.info, self.version, self.sha256)
        return {**facts, "backend": self.backend.name, "precision": self.precision}

    def preprocess(self, image: XrayImage) -> torch.Tensor:
        """The one preprocessing: (1, S, S) float32 model input for an `XrayImage`."""
        import torch

        return torch.from_numpy(preprocess(image, self.spec)[0])

    def check_operating_point(self, name: str) -> None:
        """Raise a one-line `BonefracError` unless `name` is one of the model's operating points."""
        if name not in self.spec.operating_points:
            raise BonefracError(
                f"unknown operating point {name!r}; choose one of {', '.join(self.spec.operating_points)}"
            )

    def decision(self, operating_point: str, threshold: float | None) -> tuple[str, float]:
        """(operating point, threshold) to decide at: a named point's, or "custom" with a threshold given by
        hand (0 < threshold < 1). Raises a one-line `BonefracError` for anything else."""
        if threshold is None:
            self.check_operating_point(operating_point)
            return operating_point, self.spec.operating_points[operating_point]
        if not 0.0 < float(threshold) < 1.0:
            raise BonefracError(f"threshold {threshold} is not a probability strictly between 0 and 1")
        return "custom", float(threshold)

    # ------------------------------------------------------------------ single images
    def predict(
        self,
        source: str | Path | XrayImage,
        operating_point: str = "default",
        heatmap: HeatmapOption = True,
        any_modality: bool = False,
        threshold: float | None = None,
    ) -> Prediction:
        """Predict one file or `XrayImage`. Raises `BonefracError` for unreadable files, and
        `NotARadiographError` for images that are not projection radiographs (`modality.check_radiograph`)
        unless `any_modality`.

        `heatmap`: True for a heatmap at display resolution (long side at most `postprocess.DISPLAY_SIDE`),
        "full" for one at the image's full resolution, False for none. `threshold`: decide at this probability
        (operating point "custom") instead of at `operating_point`'s."""
        decision = self.decision(operating_point, threshold)
        return self._run([self._prepare(source, any_modality)], self.backend, decision, heatmap)[0]

    # ------------------------------------------------------------------ many files
    @overload
    def predict_many(
        self,
        paths: Iterable[str | Path],
        batch_size: int = ...,
        workers: int | None = ...,
        operating_point: str = ...,
        heatmap: HeatmapOption = ...,
        any_modality: bool = ...,
        threshold: float | None = ...,
        with_images: Literal[False] = ...,
    ) -> Iterator[Result]: ...

    @overload
    def predict_many(
        self,
        paths: Iterable[str | Path],
        batch_size: int = ...,
        workers: int | None = ...,
        operating_point: str = ...,
        heatmap: HeatmapOption = ...,
        any_modality: bool = ...,
        threshold: float | None = ...,
        *,
        with_images: Literal[True],
    ) -> Iterator[ImageResult]: ...

    def predict_many(
        self,
        paths: Iterable[str | Path],
        batch_size: int = DEFAULT_BATCH_SIZE,
        workers: int | None = None,
        operating_point: str = "default",
        heatmap: HeatmapOption = False,
        any_modality: bool = False,
        threshold: float | None = None,
        with_images: bool = False,
    ) -> Iterator[Result] | Iterator[ImageResult]:
        """Stream results in input order; unreadable files (and, unless `any_modality`, images that are not
        projection radiographs) come out as `PredictionError`.

        Each of `workers` threads (default: one per core of this process, at most `MAX_WORKERS`) takes a batch
        through read -> preprocess -> model -> heatmap and boxes, so one worker decodes while another runs
        the model. Each model run gets cores // workers threads: a run on several threads stalls at every
        layer whenever a decoding thread holds one of its cores (bench/README.md). `threshold` as in `predict`.

        `with_images`: yield (image, result) pairs instead, the image as decoded for the model, shrunk to
        display size (`display_image`), so that overlays and DICOM outputs draw on it without decoding the
        file again; None for a file that could not be read. Only the batches in flight hold images.
        """
        results = self._stream(paths, batch_size, workers, self.decision(operating_point, threshold), heatmap,
                               any_modality, with_images)  # fmt: skip
        return results if with_images else (res for _, res in results)

    def _stream(
        self,
        paths: Iterable[str | Path],
        batch_size: int,
        workers: int | None,
        decision: tuple[str, float],
        heatmap: HeatmapOption,
        any_modality: bool,
        with_images: bool,
    ) -> Iterator[ImageResult]:
        workers = max(1, workers or min(process_cores(), MAX_WORKERS))
        backend = self.backend.for_workers(workers) if workers > 1 else self.backend
        # The onnxruntime session is made while the workers read their first batches, not after. Joined
        # below: when no input reaches the model, an interpreter exiting while the thread is still making
        # the session aborts (SIGABRT, "terminate called without an active exception").
        warm_up = threading.Thread(target=_warm_quietly, args=(backend,))
        warm_up.start()
        pool = ThreadPoolExecutor(workers)
        inflight: deque[Future[list[ImageResult]]] = deque()
        args = (backend, decision, heatmap, any_modality, with_images)
        try:
            for batch in _chunks(paths, batch_size, workers):
                inflight.append(pool.submit(self._predict_batch, batch, *args))
                # Every worker busy and as many batches queued: memory stays bounded, and a worker that
                # finishes while the oldest batch is still running finds the next one waiting.
                if len(inflight) >= 2 * workers:
                    yield from inflight.popleft().result()
            while inflight:
                yield from inflight.popleft().result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            warm_up.join()

    def _predict_batch(
        self,
        paths: list[str | Path],
        backend: Backend,
        decision: tuple[str, float],
        heatmap: HeatmapOption,
        any_modality: bool,
        with_images: bool,
    ) -> list[ImageResult]:
        pending = [self._try_prepare(p, any_modality, with_images) for p in paths]
        ready = [p for p in pending if isinstance(p, _Prepared)]
        results = iter(self._run(ready, backend, decision, heatmap) if ready else [])
        return [(p.image, next(results)) if isinstance(p, _Prepared) else (None, p) for p in pending]

    def _try_prepare(
        self, path: str | Path, any_modality: bool, keep_image: bool = False
    ) -> _Prepared | PredictionError:
        try:
            return self._prepare(path, any_modality, keep_image)
        except BonefracError as e:
            return PredictionError(str(path), str(e))
        except Exception as e:  # never let one hostile file take the batch down
            return PredictionError(str(path), f"{Path(path).name}: unexpected error: {type(e).__name__}: {e}")

    # ------------------------------------------------------------------ internals
    def _prepare(
        self, source: str | Path | XrayImage, any_modality: bool = False, keep_image: bool = False
    ) -> _Prepared:
        image = source if isinstance(source, XrayImage) else read_for_model(source, self.spec)
        notes = check_radiograph(image, allow_any=any_modality)  # the one rule: only what the model is for
        tensor, geometry = preprocess(image, self.spec)
        path = image.path if isinstance(source, XrayImage) else str(source)
        kept = display_image(image) if keep_image else None
        return _Prepared(path, tensor, geometry, [*image.meta.get("warnings", []), *notes], kept)

    def _run(
        self, items: list[_Prepared], backend: Backend, decision: tuple[str, float], heatmap: HeatmapOption
    ) -> list[Prediction]:
        operating_point, threshold = decision
        return predictions(
            backend.run(np.stack([i.tensor for i in items])),
            [i.geometry for i in items],
            [i.path for i in items],
            [i.warnings for i in items],
            self.spec,
            operating_point,
            self.version,
            heatmap,
            threshold,
        )


def display_image(image: XrayImage, side: int = DISPLAY_SIDE) -> XrayImage:
    """`image` with its pixels shrunk (antialiased) to the display size of the full image (long side at most
    `side`, `decode.display_shape`): all that an overlay draws, in bounded memory while results wait for
    their outputs. An image already no larger is returned as it is. `meta` (full size, warnings) is kept."""
    full = (int(image.meta.get("height", image.height)), int(image.meta.get("width", image.width)))
    shape = display_shape(*full, side=side)
    if image.height * image.width <= shape[0] * shape[1]:
        return image
    pixels = np.asarray(float_image(image.pixels).resize(shape[::-1], Image.BILINEAR, reducing_gap=2.0))
    return XrayImage(pixels, {**image.meta, "display": True}, image.path)


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
