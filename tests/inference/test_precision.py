"""Choosing fp32 or int8 (`inference.precision`): the rules, and the per-machine speed measurement's cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from bonefrac.errors import BonefracError
from bonefrac.inference import precision
from bonefrac.inference.precision import MIN_SPEEDUP, choose

FP32, INT8 = Path("model.onnx"), Path("model.int8.onnx")
PASSED, FAILED = {"parity": {"passed": True}}, {"parity": {"passed": False}}


@pytest.fixture
def speedup(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The speed-up `measured_speedup` reports (settable), and no timing."""
    value = [2.0]
    monkeypatch.setattr(precision, "measured_speedup", lambda fp32, int8: value[0])
    return value


def test_fp32_is_fp32_whatever_exists(speedup: list[float]) -> None:
    assert choose("fp32", FP32, (INT8, PASSED))[:2] == (FP32, "fp32")


def test_auto_runs_int8_only_when_parity_passed_and_faster_here(speedup: list[float]) -> None:
    assert choose("auto", FP32, (INT8, PASSED))[:2] == (INT8, "int8")
    assert choose("auto", FP32, None)[:2] == (FP32, "fp32")
    path, chosen, why = choose("auto", FP32, (INT8, FAILED))
    assert (path, chosen) == (FP32, "fp32") and "parity" in why
    assert choose("auto", FP32, (INT8, {"parity": None}))[1] == "fp32"  # never measured
    speedup[0] = MIN_SPEEDUP - 0.01
    path, chosen, why = choose("auto", FP32, (INT8, PASSED))
    assert chosen == "fp32" and "not faster" in why


def test_int8_asked_for_runs_even_after_failed_gates_but_says_so(speedup: list[float]) -> None:
    path, chosen, why = choose("int8", FP32, (INT8, FAILED))
    assert (path, chosen) == (INT8, "int8") and "did not all pass" in why
    with pytest.raises(BonefracError, match="bonefrac quantize"):
        choose("int8", FP32, None)
    with pytest.raises(BonefracError, match="unknown precision"):
        choose("int4", FP32, None)


def test_the_speed_is_measured_once_per_machine_and_pair(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BONEFRAC_CACHE", str(tmp_path / "cache"))
    calls: list[tuple[Path, Path]] = []

    def timed(fp32: Path, int8: Path) -> float:
        calls.append((fp32, int8))
        return 1.7

    monkeypatch.setattr(precision, "_time_pair", timed)
    a, b, c = (tmp_path / n for n in ("a.onnx", "b.onnx", "c.onnx"))
    for p in (a, b, c):
        p.write_bytes(p.name.encode())
    assert precision.measured_speedup(a, b) == 1.7
    assert precision.measured_speedup(a, b) == 1.7
    assert len(calls) == 1  # the second answer came from the cache
    precision.measured_speedup(a, c)
    assert len(calls) == 2  # another file: timed again
    assert len(list((tmp_path / "cache" / "precision").glob("*.json"))) == 2


def test_timing_two_real_sessions(tmp_path: Path) -> None:
    """`_time_pair` runs both files for real: the same export against itself is ~1x."""
    from bonefrac.inference.detector import FractureDetector

    det = FractureDetector.load(precision="fp32")
    ratio = precision._time_pair(Path(det.backend.path), Path(det.backend.path))
    assert 0.5 < ratio < 2.0
