"""Checkpoints: {format, spec, state_dict, info} saved atomically, loaded with weights_only=True.

The ModelSpec inside is all that is needed to rebuild the model and its preprocessing; `info` carries
the training facts (data, split, validation metrics) shown by `bonefrac evaluate` and `/api/model`.
A `<file>.sha256` beside a checkpoint is checked on load when present (always for the bundled model).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bonefrac.errors import ModelLoadError
from bonefrac.paths import WEIGHTS_DIR
from bonefrac.spec import ModelSpec

if TYPE_CHECKING:  # torch is imported when a checkpoint is read or written, not to check its digest
    import torch

FORMAT = "bonefrac-checkpoint-v1"


def bundled_model_path() -> Path:
    """The default model shipped inside the package."""
    return WEIGHTS_DIR / "model.pt"


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_save(obj: Any, path: str | Path) -> None:
    """torch.save to a temporary file, fsync, then rename: a kill never leaves a half-written checkpoint."""
    import torch

    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_model(model: torch.nn.Module, spec: ModelSpec, path: str | Path, info: dict[str, Any] | None = None) -> str:
    """Write a model checkpoint plus its `.sha256` sidecar; returns the digest."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_save({"format": FORMAT, "spec": spec.to_dict(), "state_dict": state, "info": info or {}}, path)
    digest = sha256_file(path)
    Path(f"{path}.sha256").write_text(f"{digest}  {Path(path).name}\n")
    return digest


def resolve_checkpoint(path: str | Path) -> Path:
    """A run directory (model.pt inside) or a checkpoint file."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.pt"
    if not path.is_file():
        raise ModelLoadError(f"{path}: no model checkpoint there (expected a .pt file or a training run folder)")
    return path


def verified_digest(path: str | Path) -> str:
    """The checkpoint's SHA-256, checked against its `.sha256` sidecar when there is one."""
    path = resolve_checkpoint(path)
    actual = sha256_file(path)
    sidecar = Path(f"{path}.sha256")
    if sidecar.is_file():
        expected = sidecar.read_text().split()[0]
        if actual != expected:
            raise ModelLoadError(f"{path.name}: SHA-256 mismatch (expected {expected[:12]}..., got {actual[:12]}...)")
    return actual


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load and validate a checkpoint dict (weights_only: no code from the file is ever run). Raises
    `ModelLoadError` when torch is not installed (the core install predicts from ONNX exports only)."""
    path = resolve_checkpoint(path)
    try:
        import torch
    except ImportError:
        raise ModelLoadError(
            f"{path.name}: reading a torch checkpoint needs torch: pip install 'bonefrac[train]' "
            "(without it, bonefrac predicts with the bundled model or a checkpoint's shipped model.onnx)"
        ) from None
    digest = verified_digest(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ModelLoadError(f"{path.name}: not a loadable checkpoint ({type(e).__name__})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ModelLoadError(f"{path.name}: not a bonefrac checkpoint")
    ckpt["path"], ckpt["sha256"] = str(path), digest
    return ckpt


def load_model(path: str | Path) -> tuple[torch.nn.Module, ModelSpec, dict[str, Any]]:
    """Rebuild the model from the spec inside the checkpoint, in eval mode."""
    from bonefrac.models.registry import build_model

    ckpt = load_checkpoint(path)
    spec = ModelSpec.from_dict(ckpt["spec"])
    model = build_model(spec, pretrained=False)
    try:
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as e:
        raise ModelLoadError(f"{Path(ckpt['path']).name}: weights do not fit arch {spec.arch}: {e}") from None
    model.eval()
    info = dict(ckpt.get("info") or {})
    info.setdefault("sha256", ckpt["sha256"])
    return model, spec, info
