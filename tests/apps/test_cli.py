"""The command line as a user runs it: subprocesses, exit codes, outputs."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from _models import FIXTURE_IMAGES, FIXTURES, make_checkpoint
from PIL import Image
from terminal import run_on_a_terminal


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bonefrac", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("m") / "model.pt")


def test_predict_json_one_object_per_input_and_exit_code(model: Path, tmp_path: Path) -> None:
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff" + bytes(range(256)) * 4)
    r = run(
        "predict",
        str(FIXTURE_IMAGES[0]),
        str(tmp_path / "bad.jpg"),
        "--model",
        str(model),
        "--json",
        "--backend",
        "torch",
    )
    assert r.returncode == 1, r.stderr
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(lines) == 2
    assert {"path", "probability", "fractured", "threshold", "boxes"} <= set(lines[0])
    assert set(lines[1]) == {"path", "error"} and "bad.jpg" in lines[1]["error"]
    assert "Traceback" not in r.stderr


def test_predict_folder_csv_overlays(model: Path, tmp_path: Path) -> None:
    folder = tmp_path / "in" / "nested"
    folder.mkdir(parents=True)
    for p in FIXTURE_IMAGES[:3]:
        (folder / p.name).write_bytes(p.read_bytes())
    Image.open(FIXTURE_IMAGES[3]).save(folder / "png_copy.png")
    (folder / "notes.txt").write_text("ignored: not an image extension")
    r = run(
        "predict",
        str(tmp_path / "in"),
        "--model",
        str(model),
        "--csv",
        str(tmp_path / "out.csv"),
        "--overlay-dir",
        str(tmp_path / "ov"),
        "--backend",
        "torch",
    )
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(open(tmp_path / "out.csv")))
    assert len(rows) == 4 and all(row["error"] == "" for row in rows)
    assert all(0 <= float(row["probability"]) <= 1 for row in rows)
    overlays = sorted((tmp_path / "ov").glob("*.png"))
    assert len(overlays) == 4
    assert Image.open(overlays[0]).mode == "RGB"
    assert "probability" in r.stdout  # the readable table header


def test_usage_errors_exit_2(model: Path) -> None:
    assert run("predict").returncode == 2
    assert run("predict", "x.jpg", "--backend", "tensorflow").returncode == 2
    assert run("frobnicate").returncode == 2
    bad = run("train", "data", "--out", "x", "--reduce-from", "1")  # a value argparse reads but training refuses
    assert bad.returncode == 1 and "at least 2" in bad.stderr and bad.stderr.count("\n") == 1


def test_user_errors_are_one_line(tmp_path: Path) -> None:
    r = run("predict", str(FIXTURE_IMAGES[0]), "--model", str(tmp_path / "nope.pt"))
    assert r.returncode == 1
    assert r.stderr.strip().count("\n") == 0 and r.stderr.startswith("bonefrac: error:")
    r = run("evaluate", str(tmp_path / "no-such-dataset"), "--out", str(tmp_path / "o"))
    assert r.returncode == 1 and "Traceback" not in r.stderr


def test_evaluate_writes_report(model: Path, tmp_path: Path) -> None:
    r = run(
        "evaluate",
        str(FIXTURES),
        "--out",
        str(tmp_path / "rep"),
        "--model",
        str(model),
        "--backend",
        "torch",
        "--no-progress",
    )
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "rep" / "metrics.json").read_text())
    assert m["n"] == len(FIXTURE_IMAGES) and m["n_positive"] > 0
    assert 0 <= m["auc"] <= 1 and m["auc_ci95"][0] <= m["auc"] <= m["auc_ci95"][1]
    assert set(m["operating_points"]) == {"default", "high_sensitivity", "high_specificity"}
    # thresholds come from the checkpoint, unchanged
    assert m["operating_points"]["high_specificity"]["threshold"] == 0.8
    for s in m["operating_points"].values():
        assert {"threshold", "sensitivity", "specificity", "ppv", "npv"} <= set(s)
    assert "hand" in m["per_region"] and {"n", "auc"} <= set(m["per_region"]["hand"])
    assert 0 <= m["localization"]["pointing_game"] <= 1
    for name in ("results.txt", "roc.png", "pr.png", "calibration.png", "confusion_default.png"):
        assert (tmp_path / "rep" / name).is_file(), name
    assert "AUC" in (tmp_path / "rep" / "results.txt").read_text()


@pytest.mark.numeric  # its parity check: torch against onnxruntime
def test_export_onnx(tmp_path: Path, tiny_lite0: Path) -> None:
    ckpt = tiny_lite0  # only read
    r = run("export", "--format", "onnx", "--out", str(tmp_path / "m.onnx"), "--model", str(ckpt))
    assert r.returncode == 0, r.stderr
    import onnx

    graph = onnx.load(str(tmp_path / "m.onnx")).graph
    assert [o.name for o in graph.output] == ["logit", "cam"]
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    diff = float(r.stdout.split("max |dp| = ")[1].split()[0])
    assert diff <= 1e-4  # probabilities in [0, 1]: float32 rounding of the two libraries, a hundredfold margin


def test_serve_is_parsed_by_the_server_and_predict_does_not_import_it() -> None:
    assert "bonefrac serve" in run("serve", "--help").stdout
    assert run("serve", "--port", "not-a-port").returncode == 2
    probe = "import sys, bonefrac.apps.cli as c; c.build_parser(); print('fastapi' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120).stdout
    assert out.strip() == "False"  # ~0.4 s of start-up saved on every predict


def test_predict_with_an_unwritable_cache_still_uses_onnx_and_says_so_in_one_line(model: Path, tmp_path: Path) -> None:
    import os

    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the cache folder would go")
    env = {**os.environ, "BONEFRAC_CACHE": str(blocked)}
    r = subprocess.run(
        [sys.executable, "-m", "bonefrac", "predict", str(FIXTURE_IMAGES[0]), "--model", str(model), "--json"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    warning = [line for line in r.stderr.splitlines() if "warning" in line]
    assert len(warning) == 1 and "ONNX cache" in warning[0] and "BONEFRAC_CACHE" in warning[0]
    assert 0.0 <= json.loads(r.stdout)["probability"] <= 1.0


def test_a_bad_operating_point_fails_before_any_image_is_read(model: Path, tmp_path: Path) -> None:
    r = run("predict", str(FIXTURES / "images"), "--model", str(model), "--operating-point", "lenient")
    assert r.returncode == 1 and r.stdout == ""  # no table header, no progress bar, no result line
    assert r.stderr.startswith("bonefrac: error: unknown operating point 'lenient'") and r.stderr.count("\n") == 1


def test_the_cli_leaves_warning_filters_as_it_found_them(model: Path) -> None:
    import warnings

    from bonefrac.apps.cli import main

    before = list(warnings.filters)
    assert main(["predict", str(FIXTURE_IMAGES[0]), "--model", str(model), "--backend", "torch"]) == 0
    assert warnings.filters == before


def test_on_a_terminal_the_progress_bar_never_splits_a_table_line(model: Path) -> None:
    """stdout and stderr on one terminal: every table line comes out whole, never with the bar inside it."""
    cmd = [sys.executable, "-m", "bonefrac", "predict", str(FIXTURES / "images"), "--model", str(model)]
    code, text = run_on_a_terminal([*cmd, "--backend", "torch"], columns=160)
    assert code == 0
    assert "predict:" in text  # the bar was drawn
    pieces = [p for line in text.replace("\r\n", "\n").split("\n") for p in line.split("\r")]
    rows = [p for p in pieces if ".jpg" in p]
    assert len(rows) == len(FIXTURE_IMAGES)
    for row in rows:  # path, probability, decision, boxes (then any warning): nothing of the bar inside
        columns = row.split("  warning: ")[0].split()
        assert "predict:" not in row and "img/s" not in row and columns[-1].isdigit(), row


def test_predict_threshold_decides_at_that_probability(model: Path, tmp_path: Path) -> None:
    """--threshold T: operating point "custom", fractured <=> probability >= T, boxes = detections >= T; the CSV
    carries every detection ("x0 y0 x1 y1 score;...", as a labels.csv), the same as --json."""
    images = str(FIXTURES / "images")
    base = run("predict", images, "--model", str(model), "--json", "--backend", "torch", "--no-progress")
    assert base.returncode == 0, base.stderr
    probabilities = sorted(json.loads(line)["probability"] for line in base.stdout.splitlines())
    t = (probabilities[4] + probabilities[5]) / 2  # 5 images below it, the rest at or above
    r = run("predict", images, "--model", str(model), "--json", "--backend", "torch", "--no-progress",
            "--threshold", str(t), "--csv", str(tmp_path / "out.csv"))  # fmt: skip
    assert r.returncode == 0, r.stderr
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    assert {d["operating_point"] for d in lines} == {"custom"} and {d["threshold"] for d in lines} == {round(t, 6)}
    assert sum(d["fractured"] for d in lines) == len(FIXTURE_IMAGES) - 5
    for d in lines:
        assert d["fractured"] == (d["probability"] >= t)
        assert d["boxes"] == [b for b in d["detections"] if b[4] >= t] and d["detections"]
    rows = {row["path"]: row for row in csv.DictReader(open(tmp_path / "out.csv"))}
    for d in lines:
        boxes = [[float(v) for v in box.split()] for box in rows[d["path"]]["detections"].split(";")]
        assert boxes == d["detections"] and rows[d["path"]]["fractured"] == str(int(d["fractured"]))


def test_predict_threshold_usage(model: Path) -> None:
    both = run("predict", str(FIXTURE_IMAGES[0]), "--threshold", "0.3", "--operating-point", "high_sensitivity")
    assert both.returncode == 2 and "not allowed with" in both.stderr
    r = run("predict", str(FIXTURE_IMAGES[0]), "--model", str(model), "--threshold", "1.5", "--backend", "torch")
    assert r.returncode == 1 and r.stdout == "" and r.stderr.count("\n") == 1
    assert r.stderr.startswith("bonefrac: error: threshold 1.5 is not a probability")


def test_calibrate_refits_calibration_and_points_and_keeps_the_weights(model: Path, tmp_path: Path) -> None:
    import torch

    from bonefrac.evaluation.calibration import IDENTITY, apply
    from bonefrac.inference.detector import FractureDetector
    from bonefrac.models.checkpoint import sha256_file

    out = tmp_path / "site.pt"
    r = run("calibrate", str(FIXTURES), "--model", str(model), "--out", str(out), "--backend", "torch",
            "--no-progress", "--allow-small")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "ECE" in r.stdout and "Brier" in r.stdout and "caution: only 7 fractured and 7 other" in r.stdout
    before, after = torch.load(model, weights_only=True), torch.load(out, weights_only=True)
    assert before["state_dict"].keys() == after["state_dict"].keys()
    assert all(torch.equal(after["state_dict"][k], v) for k, v in before["state_dict"].items())
    assert (tmp_path / "site.pt.sha256").read_text().split()[0] == sha256_file(out)
    record = after["info"]["calibration"]
    assert after["info"]["model_version"] == before["info"]["model_version"]  # the old info is kept
    assert (record["n_images"], record["n_fractured"], record["subset"]) == (len(FIXTURE_IMAGES), 7, "all")
    assert record["fitted_on"] == FIXTURES.name and record["previous_calibration"] == IDENTITY  # no path
    assert record["previous_sha256"] == sha256_file(model) and len(record["fitted_at"]) == 10
    assert {"ece_before", "ece_after", "brier_before", "brier_after"} <= set(record)
    assert record["brier_after"] <= record["brier_before"]  # the fit minimises log-loss; Brier follows here
    calibration, points = after["spec"]["calibration"], after["spec"]["operating_points"]
    assert calibration != IDENTITY and calibration["scale"] > 0
    assert points["high_sensitivity"] < points["default"] < points["high_specificity"]
    # The new checkpoint loads and predicts with the new calibration on the same raw logits.
    old, new = (FractureDetector.load(m, backend="torch") for m in (model, out))
    a, b = old.predict(FIXTURE_IMAGES[0], heatmap=False), new.predict(FIXTURE_IMAGES[0], heatmap=False)
    assert a.logit == pytest.approx(b.logit, rel=1e-6, abs=1e-9)  # same weights, same kernels: a few eps at most
    assert b.probability == pytest.approx(float(apply(calibration, [a.logit])[0]), abs=1e-9)
    assert new.sha256 == sha256_file(out)  # not the source's digest carried over in the info


def test_calibrate_on_a_split_subset_and_what_it_refuses(
    model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    from bonefrac.apps.cli import main  # in this process: the same parser and edge as the console script

    rows = list(csv.DictReader(open(FIXTURES / "labels.csv")))
    val = [r["filename"] for r in rows[:9]]
    n_fractured = sum(r["fractured"] == "1" for r in rows[:9])
    assert 0 < n_fractured < 9
    split = tmp_path / "split.json"
    split.write_text(json.dumps({r["filename"]: "val" if r["filename"] in val else "train" for r in rows}))
    common = ["--model", str(model), "--backend", "torch", "--no-progress", "--workers", "1", "--allow-small"]
    out = tmp_path / "m2.pt"
    assert main(["calibrate", str(FIXTURES), "--out", str(out), "--split", str(split), *common]) == 0
    record = torch.load(out, weights_only=True)["info"]["calibration"]
    assert (record["n_images"], record["n_fractured"], record["subset"]) == (9, n_fractured, "val")
    assert record["split_file"] == split.name
    # One class only: refused in one line, before the model runs, nothing written.
    not_fractured = [r["filename"] for r in rows if r["fractured"] == "0"]
    split.write_text(json.dumps({r["filename"]: "val" if r["filename"] in not_fractured else "train" for r in rows}))
    capsys.readouterr()
    assert main(["calibrate", str(FIXTURES), "--out", str(tmp_path / "x.pt"), "--split", str(split), *common]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "both classes (0 fractured, 7 not)" in err
    assert not (tmp_path / "x.pt").exists()
    # Writing over the model itself is refused: the original stays as it was.
    assert main(["calibrate", str(FIXTURES), "--out", str(model), *common]) == 1
    err = capsys.readouterr().err
    assert "is the model itself" in err and err.count("\n") == 1
