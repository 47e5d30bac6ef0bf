"""`bonefrac predict` exit codes when inputs fail (README: 0 all predicted; 1 some inputs failed, the rest
still reported), on every backend: the process must exit 1, not abort (issue 22: SIGABRT, exit 134, when no
input reached the onnxruntime session that a background thread was still making as the interpreter exited).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from _models import FIXTURE_IMAGES

BACKENDS = ["onnx", "torch", "auto"]


def predict(*args: str) -> subprocess.CompletedProcess[str]:
    """The bundled model, as a user runs it (the session's BONEFRAC_CACHE: the first run exports)."""
    return subprocess.run(
        [sys.executable, "-m", "bonefrac", "predict", *args, "--no-progress"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def refused_input(kind: str, folder: Path) -> tuple[Path, str]:
    """(a file bonefrac cannot predict, the words its error line says)."""
    if kind == "missing":
        return folder / "missing.jpg", "no such file"
    if kind == "pdf":
        (folder / "report.pdf").write_bytes(b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\n%%EOF\n")
        return folder / "report.pdf", "not a recognised image"
    (folder / "empty.jpg").write_bytes(b"")
    return folder / "empty.jpg", "empty file"


@pytest.mark.parametrize("as_json", [False, True], ids=["table", "json"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["missing", "pdf", "empty"])
def test_only_failed_inputs_exit_1_with_the_error_line(kind: str, backend: str, as_json: bool, tmp_path: Path) -> None:
    path, words = refused_input(kind, tmp_path)
    r = predict(str(path), "--backend", backend, *(["--json"] if as_json else []))
    assert r.returncode == 1, f"exit {r.returncode}: {r.stderr}"
    assert "terminate called" not in r.stderr and "Traceback" not in r.stderr
    assert "0 of 1 images predicted, 1 failed" in r.stderr
    if as_json:
        (line,) = [json.loads(s) for s in r.stdout.splitlines()]
        assert line["path"] == str(path) and words in line["error"]
    else:
        (line,) = [s for s in r.stdout.splitlines() if "ERROR" in s]
        assert line.startswith(str(path)) and words in line


@pytest.mark.parametrize("as_json", [False, True], ids=["table", "json"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_good_image_and_a_missing_one_report_both_and_exit_1(backend: str, as_json: bool, tmp_path: Path) -> None:
    good, missing = FIXTURE_IMAGES[0], tmp_path / "missing.jpg"
    r = predict(str(good), str(missing), "--backend", backend, *(["--json"] if as_json else []))
    assert r.returncode == 1, f"exit {r.returncode}: {r.stderr}"
    assert "1 of 2 images predicted, 1 failed" in r.stderr and "Traceback" not in r.stderr
    if as_json:
        first, second = [json.loads(s) for s in r.stdout.splitlines()]
        assert first["path"] == str(good) and 0.0 <= first["probability"] <= 1.0
        assert second["path"] == str(missing) and "no such file" in second["error"]
    else:
        rows = [s for s in r.stdout.splitlines() if s.startswith(str(good)) or s.startswith(str(missing))]
        assert len(rows) == 2 and "ERROR" not in rows[0] and "ERROR  " in rows[1] and "no such file" in rows[1]


def test_a_closed_pipe_ends_predict_quietly(tmp_path: Path) -> None:
    """`bonefrac predict DIR | head -1`: lines are flushed one by one, so the reader may leave mid-run; the
    command stops without a traceback (BrokenPipeError is handled at the CLI edge)."""
    for i in range(12):
        (tmp_path / f"{i:02d}.jpg").write_bytes(FIXTURE_IMAGES[i % len(FIXTURE_IMAGES)].read_bytes())
    proc = subprocess.Popen(
        [sys.executable, "-m", "bonefrac", "predict", str(tmp_path), "--no-progress", "--backend", "torch"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stdout.readline()  # the table's header: the run is under way
    proc.stdout.close()  # as `head -1` does
    _, err = proc.communicate(timeout=300)
    assert "Traceback" not in err and "BrokenPipeError" not in err
    assert proc.returncode == 1
