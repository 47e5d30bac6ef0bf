from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from _models import make_checkpoint

from bonefrac.errors import ModelLoadError
from bonefrac.models.checkpoint import load_model, sha256_file


def test_roundtrip_rebuilds_model_from_spec_alone(tmp_path: Path) -> None:
    path = make_checkpoint(tmp_path / "m.pt", image_size=80)
    model, spec, info = load_model(path)
    assert spec.arch == "seed_cnn" and spec.image_size == 80
    assert spec.operating_points["high_specificity"] == 0.8
    assert info["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest() == sha256_file(path)
    # the rebuilt network holds exactly the tensors in the file, read here without bonefrac
    saved = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    loaded = model.state_dict()
    assert loaded.keys() == saved.keys() and all(torch.equal(loaded[k], saved[k]) for k in saved)
    assert saved["head.fc.weight"].abs().sum() > 0  # make_checkpoint's non-zero head, not a fresh model's
    # inference mode: seed_cnn's dropout (0.5) is off, so the same input gives the same logits
    assert not model.training
    x = torch.randn(4, 1, 80, 80)
    assert torch.equal(model(x), model(x))


def test_run_folder_is_resolved(tmp_path: Path) -> None:
    make_checkpoint(tmp_path / "model.pt")
    _, spec, _ = load_model(tmp_path)
    assert spec.arch == "seed_cnn"


def test_tampered_checkpoint_fails_sha256(tmp_path: Path) -> None:
    path = make_checkpoint(tmp_path / "m.pt")
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match="SHA-256 mismatch"):
        load_model(path)


def test_non_checkpoints_are_refused(tmp_path: Path) -> None:
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelLoadError):
        load_model(tmp_path / "junk.pt")
    torch.save({"hello": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ModelLoadError, match="not a bonefrac checkpoint"):
        load_model(tmp_path / "other.pt")
    with pytest.raises(ModelLoadError, match="no model checkpoint"):
        load_model(tmp_path / "missing")


def test_pickled_code_is_never_executed(tmp_path: Path) -> None:
    """weights_only loading: a checkpoint carrying arbitrary objects is refused, not run."""

    class Evil:
        def __reduce__(self):  # noqa: ANN204
            return (print, ("pwned",))

    torch.save({"format": "bonefrac-checkpoint-v1", "spec": {}, "state_dict": {}, "x": Evil()}, tmp_path / "e.pt")
    with pytest.raises(ModelLoadError):
        load_model(tmp_path / "e.pt")
