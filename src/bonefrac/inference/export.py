"""ONNX export: the graph, its metadata, its per-checkpoint cache, and the torch/onnxruntime parity check.

The exported graph takes a float32 batch (N, 1, S, S), preprocessed as `transforms.preprocess` does, and
returns the backends' named outputs, the model kind's `outputs` (`models.kinds`: a classifier's `logit` and
`cam`, a detector's `heatmap`, `size`, `offset` and `global`). The file stands on its own: its `metadata_props`
carry the input size, normalisation, calibration, operating points and versions, so another runtime needs
nothing from bonefrac.

`bonefrac predict` spends most of its start-up importing torch, which onnxruntime does not need. So each
export is cached under a key made of the checkpoint's SHA-256, the bonefrac version and the export settings
(an upgrade never runs a stale graph), with a JSON copy of the spec and facts beside it: later runs find it
and predict without importing torch. torch is imported only to export.

A checkpoint may also carry its export beside it: `model.onnx` next to `model.pt`, with its `.sha256` and a
`.json` sidecar (the spec and facts, the checkpoint's digest and the export settings). The bundled model
ships so, which lets an install without torch predict with it (`read_shipped_export`). A variant of the same
checkpoint (`model.int8.onnx`, say) sits beside it the same way, named by `variant`.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bonefrac._version import __version__
from bonefrac.models.metadata import jsonable
from bonefrac.models.registry import kind_for
from bonefrac.paths import EXAMPLES_DIR, cache_dir
from bonefrac.spec import ModelSpec

if TYPE_CHECKING:
    import torch

ONNX_OPSET = 17
#: Everything about the export besides the checkpoint that changes the file: part of the cache key.
EXPORT_SETTINGS = (
    f"opset={ONNX_OPSET};inputs=image;outputs=logit,cam (input grid, bicubic by matmul) | "
    "heatmap,size,offset,global,ood_features (detector);batch=dynamic;exporter=torchscript;metadata=calibration"
)
CACHE_FORMAT = "bonefrac-onnx-cache-v3"
SHIPPED_FORMAT = "bonefrac-shipped-onnx-v1"
PREPROCESSING = (
    "greyscale radiograph, bone bright; per-image min-max to [0, 1]; long side resized to image_size "
    "(antialiased bilinear; images of reduce_from x image_size or more box-reduced by 2, 4 or 8 first); "
    "zero padding to a centred square; values rounded to multiples of 1/255; then (x - mean) / std"
)
CALIBRATED = "probability = sigmoid(scale * z + bias), (scale, bias) = the calibration property"


def export_onnx(model: torch.nn.Module, spec: ModelSpec, path: str | Path, info: dict[str, Any] | None = None) -> Path:
    """Write the model's inference graph (`backends.inference_graph`) as ONNX: dynamic batch, the named
    outputs, metadata_props; atomically."""
    import onnx
    import torch

    from bonefrac.inference.backends import inference_graph

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    dummy = torch.zeros(1, 1, spec.image_size, spec.image_size)
    graph_module = inference_graph(model, spec.image_size).eval()
    names = list(kind_for(spec).outputs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter is deprecated but needs no onnxscript
        torch.onnx.export(
            graph_module,
            (dummy,),
            str(tmp),
            input_names=["image"],
            output_names=names,
            dynamic_axes={name: {0: "batch"} for name in ["image", *names]},
            opset_version=ONNX_OPSET,
            dynamo=False,
        )
    graph = onnx.load(str(tmp))
    onnx.helper.set_model_props(graph, onnx_metadata(spec, info or {}))
    onnx.save(graph, str(tmp))
    os.replace(tmp, path)
    return path


def onnx_metadata(spec: ModelSpec, info: dict[str, Any]) -> dict[str, str]:
    """The `metadata_props` of an export: what any runtime needs to prepare inputs and read outputs."""
    return {
        "bonefrac_version": __version__,
        "model_version": str(info.get("model_version") or ""),
        "checkpoint_sha256": str(info.get("sha256") or ""),
        "arch": spec.arch,
        "image_size": str(spec.image_size),
        "mean": repr(spec.mean),
        "std": repr(spec.std),
        "reduce_from": str(spec.reduce_from),
        "operating_points": json.dumps(spec.operating_points),
        "calibration": json.dumps(spec.calibration),
        "spec": json.dumps(spec.to_dict()),
        "preprocessing": PREPROCESSING,
        "outputs": kind_for(spec).outputs_doc.format(calibrated=CALIBRATED),
    }


# ---------------------------------------------------------------- the cache
def cache_key(sha256: str, precision: str = "fp32") -> str:
    """The cache entry of a checkpoint's export: its digest, this bonefrac, the export settings and the
    precision (only fp32 is made on the fly: int8 needs calibration images, `bonefrac quantize`)."""
    key = f"{sha256}|bonefrac {__version__}|{EXPORT_SETTINGS}|precision={precision}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def onnx_cache_path(sha256: str) -> Path:
    return cache_dir() / "onnx" / f"{cache_key(sha256)}.onnx"


def read_cached_export(sha256: str) -> tuple[Path, ModelSpec, dict[str, Any]] | None:
    """The cached export of the checkpoint with this digest: (ONNX file, spec, info), or None."""
    onnx_path = onnx_cache_path(sha256)
    try:
        meta = json.loads(onnx_path.with_suffix(".json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("format") != CACHE_FORMAT or meta.get("sha256") != sha256:
        return None
    if not onnx_path.is_file():
        return None
    return onnx_path, ModelSpec.from_dict(meta["spec"]), dict(meta.get("info") or {})


def cached_export(model: torch.nn.Module, spec: ModelSpec, info: dict[str, Any]) -> Path:
    """The export of this checkpoint (`info["sha256"]`) in the cache, made now if missing, with the spec and
    facts beside it. A cache that cannot be written gets a one-run export in a temporary folder."""
    sha256 = str(info["sha256"])
    path = onnx_cache_path(sha256)
    try:
        if not path.is_file():
            export_onnx(model, spec, path, info)
        meta_path = path.with_suffix(".json")
        tmp = meta_path.with_name(f".{meta_path.name}.{os.getpid()}.tmp")
        meta = {"format": CACHE_FORMAT, "sha256": sha256, "spec": spec.to_dict(), "info": jsonable(info)}
        tmp.write_text(json.dumps(meta))
        os.replace(tmp, meta_path)  # after the ONNX file: a meta file always has its export
    except OSError as e:  # a read-only home must not stop predictions: export for this run only
        tmp_dir = Path(tempfile.mkdtemp(prefix="bonefrac-onnx-"))
        warnings.warn(
            f"cannot write the ONNX cache in {path.parent} ({e.strerror or e}); exported to {tmp_dir} for this "
            "run only (set BONEFRAC_CACHE to a writable folder)",
            stacklevel=2,
        )
        return export_onnx(model, spec, tmp_dir / path.name, info)
    return path


# ---------------------------------------------------------------- an export shipped beside its checkpoint
def shipped_export_path(checkpoint: str | Path, variant: str = "") -> Path:
    """Where a checkpoint's own export lives: `model.onnx` beside `model.pt` (`model.<variant>.onnx`)."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(f"{checkpoint.stem}{f'.{variant}' if variant else ''}.onnx")


def read_shipped_export(
    checkpoint: str | Path, sha256: str, variant: str = "", settings: str = EXPORT_SETTINGS
) -> tuple[Path, ModelSpec, dict[str, Any]] | None:
    """The export shipped beside the checkpoint with this digest: (ONNX file, spec, info), or None
    (`read_shipped_sidecar`)."""
    found = read_shipped_sidecar(checkpoint, sha256, variant, settings)
    if found is None:
        return None
    onnx_path, meta = found
    return onnx_path, ModelSpec.from_dict(meta["spec"]), dict(meta.get("info") or {})


def read_shipped_sidecar(
    checkpoint: str | Path, sha256: str, variant: str = "", settings: str = EXPORT_SETTINGS
) -> tuple[Path, dict[str, Any]] | None:
    """The export shipped beside the checkpoint with this digest and its parsed `.json` sidecar, or None when
    there is none, or it was made from another checkpoint or by other export `settings` (a stale file is never
    run; a variant names its own, e.g. `quantize.INT8_SETTINGS`). Raises `ModelLoadError` when the ONNX file
    does not match its `.sha256`."""
    from bonefrac.models.checkpoint import verified_digest

    onnx_path = shipped_export_path(checkpoint, variant)
    try:
        meta = json.loads(Path(f"{onnx_path}.json").read_text())
    except (OSError, ValueError):
        return None
    fresh = (
        isinstance(meta, dict)
        and meta.get("format") == SHIPPED_FORMAT
        and meta.get("checkpoint_sha256") == sha256
        and meta.get("export_settings") == settings
    )
    if not fresh or not onnx_path.is_file() or not Path(f"{onnx_path}.sha256").is_file():
        return None
    verified_digest(onnx_path)
    return onnx_path, meta


def ship_export(checkpoint: str | Path, variant: str = "") -> Path:
    """Export the checkpoint beside itself (`shipped_export_path`) with its `.sha256` and `.json` sidecars.
    The sidecars are written after the ONNX file, so a reader never pairs new metadata with an old graph."""
    from bonefrac.models.checkpoint import load_model

    model, spec, info = load_model(checkpoint)
    path = export_onnx(model, spec, shipped_export_path(checkpoint, variant), info)
    write_shipped_sidecars(path, EXPORT_SETTINGS, spec.to_dict(), info)
    return path


def write_shipped_sidecars(path: Path, settings: str, spec: dict[str, Any], info: dict[str, Any], **extra: Any) -> None:
    """The `.sha256` and `.json` sidecars of an export shipped beside its checkpoint (`read_shipped_export` reads
    them): its digest; the checkpoint's digest, the export `settings`, the spec and facts, and `extra`."""
    from bonefrac.models.checkpoint import sha256_file

    Path(f"{path}.sha256").write_text(f"{sha256_file(path)}  {path.name}\n")
    meta = {"format": SHIPPED_FORMAT, "checkpoint_sha256": str(info["sha256"]), "export_settings": settings,
            "bonefrac_version": __version__, "spec": spec, "info": jsonable(info), **extra}  # fmt: skip
    write_json(Path(f"{path}.json"), meta)


def write_json(path: Path, obj: Any) -> None:
    """`obj` as indented JSON, atomically (a reader never sees half a file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


# ---------------------------------------------------------------- `bonefrac export`
@dataclass(frozen=True)
class ExportReport:
    path: Path
    spec: ModelSpec
    parity_images: int
    #: the largest difference between torch and onnxruntime over the outputs (`parity`).
    max_probability_difference: float


def export_model(checkpoint: str | Path | None, out: str | Path, check_on: list[Path] | None = None) -> ExportReport:
    """Export a checkpoint (None: the bundled model) to `out` and check onnxruntime against torch on
    `check_on` (default: the bundled example radiographs)."""
    from bonefrac.io.read import read_image
    from bonefrac.models.checkpoint import bundled_model_path, load_model
    from bonefrac.preprocess import preprocess

    model, spec, info = load_model(checkpoint or bundled_model_path())
    path = export_onnx(model, spec, out, info)
    files = check_on if check_on is not None else sorted(EXAMPLES_DIR.glob("*.jpg"))
    diff = float("nan")
    if files:
        x = np.stack([preprocess(read_image(p), spec)[0] for p in files])
        diff = parity(model, path, x, spec)
    return ExportReport(path, spec, len(files), diff)


def parity(model: torch.nn.Module, onnx_path: str | Path, x: np.ndarray, spec: ModelSpec | None = None) -> float:
    """The largest difference between eager torch and onnxruntime on a batch, over every output: those of
    the kind's `parity_as_probability` (the image's logit, a detector's cells) as (calibrated) probabilities, its
    `parity_as_is` (a detector's box size and offset, in cells) as they are. A classifier's map is checked through
    its mean, the logit."""
    from bonefrac.inference.backends import OnnxBackend, TorchBackend
    from bonefrac.models.kinds.base import probabilities
    from bonefrac.models.registry import get_kind

    calibration = spec.calibration if spec is not None else None
    torch_out, onnx_out = TorchBackend(model, x.shape[-1]).run(x), OnnxBackend(onnx_path).run(x)
    if set(torch_out) != set(onnx_out):
        raise ValueError(f"the export's outputs {sorted(onnx_out)} are not the model's {sorted(torch_out)}")
    kind = get_kind(model.kind)
    diffs = []
    for name in kind.parity_as_probability:
        p_torch, p_onnx = probabilities(torch_out[name], calibration), probabilities(onnx_out[name], calibration)
        diffs.append(float(np.abs(p_torch - p_onnx).max()))
    diffs += [float(np.abs(torch_out[n] - onnx_out[n]).max()) for n in kind.parity_as_is]
    return max(diffs)
