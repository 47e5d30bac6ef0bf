"""Shared by the server and browser tests: a tiny classifier with a full model card, a tiny detector, and
upload bodies made from the real fixture JPEGs (PNG, DICOM with patient data) or crafted to be hostile."""

from __future__ import annotations

import csv
import io
import struct
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from _models import make_checkpoint
from PIL import Image

from bonefrac import FractureDetector
from bonefrac.models.checkpoint import save_model
from bonefrac.models.registry import build_model
from bonefrac.spec import ModelSpec

FIXTURES = Path(__file__).parent / "fixtures"
IMAGES = FIXTURES / "images"
PATIENT_NAME = "Doe^Jane"
PATIENT_ID = "SECRET123"


def fixture_images(fractured: bool | None = None) -> list[Path]:
    """Fixture JPEGs, optionally only those labelled fractured (1) or not (0) in labels.csv."""
    with open(FIXTURES / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    keep = [r["filename"] for r in rows if fractured is None or r["fractured"] == str(int(fractured))]
    return [IMAGES / name for name in keep if (IMAGES / name).is_file()]


def make_test_model(path: Path) -> Path:
    """A 64-px seed CNN with a random (non-zero) head and the `info` a training run would leave,
    including a NaN metric: /api/model must survive what a real checkpoint may hold."""
    torch.manual_seed(0)
    spec = ModelSpec(
        arch="seed_cnn",
        image_size=64,
        operating_points={"default": 0.5, "high_sensitivity": 0.2, "high_specificity": 0.8},
    )
    model = build_model(spec, pretrained=False)
    torch.nn.init.normal_(model.head.fc.weight, std=0.5)  # a zero head would give p = 0.5 everywhere
    op_stats = {
        k: {"threshold": t, "sensitivity": 0.9 - t / 2, "specificity": 0.3 + t / 2}
        for k, t in spec.operating_points.items()
    }
    info = {
        "model_version": "test-seed_cnn-64",
        "trained_epochs": 3,
        "dataset": "/secret/machine/path/fracatlas",
        "n_train": 100,
        "n_val": 40,
        "config": {
            "arch": "seed_cnn",
            "epochs": 3,
            "out": "/secret/machine/path/run",
            "cache_dir": "/secret/cache",
            "dataset": "/secret/machine/path/fracatlas",
        },
        "validation": {"n": 40, "auc": 0.71, "auc_ci95": [0.6, float("nan")], "operating_points": op_stats},
    }
    save_model(model.eval(), spec, path, info=info)
    return path


def make_test_detector(path: Path) -> FractureDetector:
    """A random 128-px lite0_centernet (torch backend) with operating points set from its own scores on the
    first fixture image: its best detection at or above high_specificity (one fracture box), the next three
    between the points (suspicious boxes), the rest below high_sensitivity."""
    det = FractureDetector.load(make_checkpoint(path, arch="lite0_centernet", image_size=128), backend="torch")
    scores = [d[4] for d in det.predict(fixture_images()[0], heatmap=False).detections]
    assert len(scores) >= 5 and scores[0] > scores[1] > scores[3] > scores[4]
    high_sensitivity, high_specificity = (scores[3] + scores[4]) / 2, (scores[0] + scores[1]) / 2
    points = {"high_sensitivity": high_sensitivity, "high_specificity": high_specificity}
    det.spec = replace(det.spec, operating_points={"default": sum(points.values()) / 2, **points})
    return det


def png_bytes(jpeg: Path, mode: str = "L") -> bytes:
    buf = io.BytesIO()
    Image.open(jpeg).convert(mode).save(buf, format="PNG")
    return buf.getvalue()


def dicom_bytes(jpeg: Path | None, patient_name: str = PATIENT_NAME, patient_id: str = PATIENT_ID) -> bytes:
    """A 16-bit MONOCHROME2 DICOM of a fixture JPEG, with patient identifiers; no pixels when `jpeg` is None."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # digital X-ray image for presentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = patient_name, patient_id, "19700101"
    ds.Modality, ds.BodyPartExamined = "DX", "HAND"
    if jpeg is not None:
        pixels = (np.asarray(Image.open(jpeg).convert("L"), dtype=np.uint16) * 16).astype(np.uint16)  # 12 bits
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = pixels.tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A PNG whose IHDR (valid CRC) declares width x height: tiny on disk, absurd once decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
