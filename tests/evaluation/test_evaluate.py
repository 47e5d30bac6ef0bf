"""`bonefrac evaluate`: the model's own images are counted and never flatter silently; splits match by
path; small groups carry a caveat; plots leave matplotlib's backend alone; the terminal output stays whole."""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from _models import FIXTURES, make_checkpoint
from terminal import run_on_a_terminal

from bonefrac.datasets import content_digest, load_dataset
from bonefrac.errors import DatasetError
from bonefrac.evaluation.evaluate import evaluate, select_records
from bonefrac.evaluation.metrics import auc
from bonefrac.models.checkpoint import atomic_save, sha256_file

ROOT = Path(__file__).resolve().parents[2]
IMAGES = FIXTURES / "images"
TRAIN = ["IMG0000505.jpg", "IMG0001089.jpg", "IMG0001271.jpg", "IMG0001763.jpg"]
VALIDATION = ["IMG0001910.jpg", "IMG0002385.jpg"]


def with_digests(path: Path, train: list[str], validation: list[str]) -> Path:
    """A tiny checkpoint whose info lists these fixture images as its training and validation images."""
    make_checkpoint(path)
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    ckpt["info"]["image_digests"] = {
        "train": [content_digest(IMAGES / n) for n in train],
        "validation": [content_digest(IMAGES / n) for n in validation],
    }
    atomic_save(ckpt, path)
    Path(f"{path}.sha256").write_text(f"{sha256_file(path)}  {path.name}\n")
    return path


@pytest.fixture(scope="module")
def seen_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return with_digests(tmp_path_factory.mktemp("m") / "model.pt", TRAIN, VALIDATION)


@pytest.fixture(scope="module")
def report(seen_model: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("rep")
    return evaluate(FIXTURES, out, model=seen_model, backend="torch", workers=1, progress=False), out


def test_overlap_is_counted_by_content_and_the_unseen_images_come_first(report: tuple[dict, Path]) -> None:
    m, out = report
    # IMG0002615 is a byte-for-byte copy of IMG0001763 (a training image): seen, whatever its name.
    assert m["overlap"] == {"train": 5, "validation": 2, "unseen": 7}
    assert list(m)[:2] == ["overlap", "by_overlap"] and list(m["by_overlap"]) == ["unseen", "validation", "train"]
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    unseen = [r for r in rows if r["seen_by_model"] == "unseen"]
    assert {r["path"].split("/")[-1] for r in rows if r["seen_by_model"] == "train"} == {*TRAIN, "IMG0002615.jpg"}
    y = np.array([int(r["label"]) for r in unseen])
    p = np.array([float(r["probability"]) for r in unseen])
    assert m["by_overlap"]["unseen"]["n"] == 7 and m["by_overlap"]["unseen"]["auc"] == pytest.approx(auc(y, p))
    assert json.loads((out / "metrics.json").read_text())["overlap"] == m["overlap"]
    text = (out / "results.txt").read_text()
    assert "seen by the model: 5 trained on, 2 validated on, 7 unseen" in text
    assert text.index("UNSEEN IMAGES") < text.index("ALL 14 IMAGES (7 of them seen by the model: optimistic)")
    assert "5 of these images trained the model" in text


def test_small_groups_get_a_caveat_not_a_bare_auc(report: tuple[dict, Path]) -> None:
    m, out = report
    hip = m["per_region"]["hip"]  # one fractured hip, one not
    assert (hip["n"], hip["n_positive"]) == (2, 1)
    assert hip["caveat"].startswith("too few fractures (n=1) and images without a fracture (n=1)")
    assert m["by_overlap"]["unseen"]["caveat"].startswith("too few fractures (n=4)")
    text = (out / "results.txt").read_text()
    hip_line = next(line for line in text.splitlines() if line.strip().startswith("hip "))
    assert "too few fractures (n=1)" in hip_line
    assert "caveat: too few fractures (n=7) and images without a fracture (n=7)" in text  # all 14 images


def test_a_model_without_digests_says_the_overlap_is_unknown(tmp_path: Path) -> None:
    model = make_checkpoint(tmp_path / "model.pt")
    m = evaluate(FIXTURES, tmp_path / "rep", model=model, backend="torch", workers=1, progress=False)
    assert m["overlap"] is None and m["by_overlap"] is None
    text = (tmp_path / "rep" / "results.txt").read_text()
    assert "seen by the model: unknown" in text and "UNSEEN" not in text


def test_bundled_model_knows_its_training_images() -> None:
    """The fixtures are FracAtlas images: 12 trained the bundled model and 2 validated it (its split.json)."""
    from bonefrac.inference.detector import FractureDetector

    det = FractureDetector.load(backend="torch")
    split = json.loads((ROOT / "src/bonefrac/weights/split.json").read_text())
    groups = {"train": "train", "val": "validation"}
    expected = {"train": 0, "validation": 0, "unseen": 0}
    for r in load_dataset(FIXTURES):
        expected[groups[split[r.key]]] += 1
    assert expected == {"train": 12, "validation": 2, "unseen": 0}
    digests = det.info["image_digests"]
    for r in load_dataset(FIXTURES):
        assert content_digest(r.path) in digests[groups[split[r.key]]], r.key


def test_split_matches_a_csv_of_absolute_paths(tmp_path: Path) -> None:
    """A split keyed by FracAtlas file names selects from a CSV that lists the same files by absolute path."""
    csv_path = tmp_path / "data.csv"
    rows = list(csv.DictReader(open(FIXTURES / "labels.csv")))
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        w.writerows([str(IMAGES / r["filename"]), r["fractured"]] for r in rows)
    split = tmp_path / "split.json"
    split.write_text(json.dumps({r["filename"]: ("val" if i % 3 == 0 else "train") for i, r in enumerate(rows)}))
    val = select_records(csv_path, split, "val")
    assert [Path(r.path).name for r in val] == [r["filename"] for i, r in enumerate(rows) if i % 3 == 0]
    assert len(select_records(csv_path, split, "train")) == len(rows) - len(val)
    # A split keyed by the folder-relative path matches too; one key claimed by two files is refused.
    split.write_text(json.dumps({f"images/{rows[0]['filename']}": "val"}))
    assert [Path(r.path).name for r in select_records(csv_path, split, "val")] == [rows[0]["filename"]]
    twin = tmp_path / "copy" / rows[0]["filename"]
    twin.parent.mkdir()
    twin.write_bytes((IMAGES / rows[0]["filename"]).read_bytes())
    with open(csv_path, "a", newline="") as f:
        csv.writer(f).writerow([str(twin), rows[0]["fractured"]])
    split.write_text(json.dumps({rows[0]["filename"]: "val"}))
    with pytest.raises(DatasetError, match="matches both"):
        select_records(csv_path, split, "val")


def test_plots_leave_matplotlib_backend_alone(tmp_path: Path) -> None:
    """Importing the report module and drawing every plot selects no backend and never imports pyplot."""
    code = f"""
import sys, matplotlib, numpy as np
before = dict.__getitem__(matplotlib.rcParams, "backend")
from bonefrac.evaluation import report
y = np.array([0, 1] * 20); p = np.linspace(0, 1, 40)
report.write_plots(y, p, {{"default": 0.5}}, __import__("pathlib").Path({str(tmp_path)!r}))
report.plot_learning_curve([{{"epoch": 1, "train_loss": 1, "val_loss": 1, "val_auc": 0.5}}], \
__import__("pathlib").Path({str(tmp_path / "lc.png")!r}))
assert "matplotlib.pyplot" not in sys.modules, "pyplot imported"
assert dict.__getitem__(matplotlib.rcParams, "backend") == before, "backend changed"
"""
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    for name in ("roc.png", "pr.png", "calibration.png", "confusion_default.png", "lc.png"):
        assert (tmp_path / name).stat().st_size > 1000, name


def test_evaluate_help_shows_every_default() -> None:
    from bonefrac.apps.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    parser = sub.choices["evaluate"]
    formatter = parser._get_formatter()
    for action in parser._actions:
        if not action.option_strings or action.required or action.dest == "help":
            continue
        text = formatter._expand_help(action)
        assert "default" in text, action.option_strings
        if action.default not in (None, False):
            assert str(action.default) in text, action.option_strings


def test_terminal_output_progress_bar_then_whole_report(seen_model: Path, tmp_path: Path) -> None:
    """On a terminal the bar finishes its line before the report starts, and the report says what was seen."""
    cmd = [sys.executable, "-m", "bonefrac", "evaluate", str(FIXTURES), "--out", str(tmp_path / "rep")]
    code, text = run_on_a_terminal([*cmd, "--model", str(seen_model), "--backend", "torch", "--workers", "1"])
    assert code == 0
    lines = text.replace("\r\n", "\n").split("\n")
    start = lines.index("bonefrac evaluation")
    assert any("evaluate: 100%" in line for line in lines[:start])  # the bar was drawn, and before the report
    report_lines = lines[start:]
    assert not any("evaluate:" in line or "\r" in line for line in report_lines)
    assert "seen by the model: 5 trained on, 2 validated on, 7 unseen" in report_lines
    assert report_lines[-2].startswith("report written to")


def _stamp_tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("stamp_digests", ROOT / "tools" / "stamp_digests.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_stamp_digests_tool_adds_digests_and_keeps_the_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    tool = _stamp_tool()
    model = make_checkpoint(tmp_path / "model.pt")
    split = tmp_path / "split.json"
    split.write_text(json.dumps({n: "train" for n in TRAIN} | {n: "val" for n in VALIDATION}))
    argv = ["stamp_digests.py", str(model), "--split", str(split), "--dataset", str(FIXTURES)]
    monkeypatch.setattr(sys, "argv", argv)
    assert tool.main() == 0
    assert (tmp_path / "model.pt.sha256").read_text().split()[0] == sha256_file(model)
    before = torch.load(make_checkpoint(tmp_path / "fresh.pt"), weights_only=True)  # the same seed: same weights
    after = torch.load(model, weights_only=True)
    assert after["spec"] == before["spec"] and after["info"]["model_version"] == before["info"]["model_version"]
    assert all(torch.equal(after["state_dict"][k], v) for k, v in before["state_dict"].items())
    assert after["info"]["image_digests"] == {
        "train": sorted(content_digest(IMAGES / n) for n in TRAIN),
        "validation": sorted(content_digest(IMAGES / n) for n in VALIDATION),
    }
    # A split naming images the dataset does not hold is refused: the list would be wrong.
    split.write_text(json.dumps({"IMG9999999.jpg": "train"} | {n: "val" for n in VALIDATION}))
    capsys.readouterr()
    assert tool.main() == 1 and "found in" in capsys.readouterr().err


def test_sensitivity_at_specificity_reads_the_roc() -> None:
    from sklearn.metrics import roc_curve

    from bonefrac.evaluation.metrics import sensitivity_at_specificity

    # 10 negatives, 5 positives: at specificity >= 0.9 one negative may score at or above the threshold.
    y = np.array([0] * 10 + [1] * 5)
    p = np.array([0.1, 0.2, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.9, 0.3, 0.58, 0.7, 0.8, 0.95])
    s = sensitivity_at_specificity(y, p)
    # The threshold 0.7 admits 0.9 (one false positive: specificity 0.9) and 0.7/0.8/0.95 (3 of 5 fractures).
    assert s == {"target_specificity": 0.9, "sensitivity": 0.6, "specificity": 0.9, "threshold": 0.7}
    fpr, tpr, _ = roc_curve(y, p)
    assert s["sensitivity"] == tpr[fpr <= 0.1 + 1e-12].max()  # the ROC's own reading
    # Ties stay together: a negative tied with the positives at the top cannot be split off.
    tied = sensitivity_at_specificity(np.array([0] * 10 + [1] * 2), np.array([0.1] * 9 + [0.9] * 3))
    assert tied["sensitivity"] == 1.0 and tied["specificity"] == 0.9
    assert sensitivity_at_specificity(np.array([0, 0, 1]), np.array([0.5, 0.6, 0.7]), 1.0)["sensitivity"] == 1.0
    assert np.isnan(sensitivity_at_specificity(np.array([1, 1]), np.array([0.2, 0.3]))["sensitivity"])


def test_a_detector_is_evaluated_on_its_boxes(tmp_path: Path) -> None:
    """A lite0_centernet checkpoint: metrics.json carries the ROC sensitivity at specificity 0.90 beside the AUC,
    and the detection figures are those of its own detections and peaks, recomputed here from the public API."""
    from bonefrac.evaluation.detection import average_precision
    from bonefrac.evaluation.metrics import sensitivity_at_specificity
    from bonefrac.inference.detector import FractureDetector

    model = make_checkpoint(tmp_path / "det.pt", arch="lite0_centernet", image_size=64)
    m = evaluate(FIXTURES, tmp_path / "rep", model=model, backend="torch", workers=1, progress=False)
    saved = json.loads((tmp_path / "rep" / "metrics.json").read_text())
    records = load_dataset(FIXTURES)
    preds = list(FractureDetector.load(model, backend="torch").predict_many([r.path for r in records], workers=1))
    y = np.array([r.label for r in records])
    p = np.array([q.probability for q in preds])
    assert saved["sensitivity_at_specificity"] == pytest.approx(sensitivity_at_specificity(y, p))
    assert saved["auc"] == pytest.approx(auc(y, p))
    boxed = [(r, q) for r, q in zip(records, preds, strict=True) if r.boxes]
    hits = sum(any(b[0] <= q.peak[0] <= b[2] and b[1] <= q.peak[1] <= b[3] for b in r.boxes) for r, q in boxed)
    assert saved["localization"]["pointing_game"] == pytest.approx(hits / len(boxed))
    terciles = saved["localization"]["by_box_size"]  # every boxed image in one of the three, smallest first
    assert [t["tercile"] for t in terciles] == ["small", "medium", "large"]
    assert sum(t["n_images"] for t in terciles) == len(boxed)
    ap50, ap50_95 = average_precision([r.boxes for r, _ in boxed], [q.detections for _, q in boxed])
    d = saved["detection"]
    assert (d["ap50_fractured"], d["ap50_95_fractured"]) == pytest.approx((ap50, ap50_95), nan_ok=True)
    # The 7 fixture fractures all have boxes; the 7 normal images count too (their detections are false positives).
    assert (d["n_images"], d["n_fractured_images"], d["n_fractured_without_boxes"]) == (14, 7, 0)
    assert d["n_detections"] == sum(len(q.detections) for q in preds) > 0 and set(d["froc"]) == {"0.5", "1", "2"}
    assert 0 <= saved["calibration"]["ece"] <= 1 and 0 <= saved["calibration"]["brier"] <= 1
    assert m["model"]["arch"] == "lite0_centernet"
    text = (tmp_path / "rep" / "results.txt").read_text()
    sens = saved["sensitivity_at_specificity"]["sensitivity"]
    assert f"sensitivity at specificity >= 0.90 on the ROC: {sens:.3f}" in text
    assert "AP@0.5       all images" in text and (tmp_path / "rep" / "froc.png").stat().st_size > 1000
    small = terciles[0]
    assert f"  small  boxes (smallest box's long side {small['size_px'][0]:.1f}-" in text
    assert f"n={small['n_images']}): pointing game {small['pointing_game']:.3f}" in text


def _tool(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _fake_report(folder: Path, y: np.ndarray, p: np.ndarray, **metrics: object) -> Path:
    """An evaluate folder as `bonefrac evaluate` writes it: predictions.csv and (the figures given) metrics.json."""
    folder.mkdir()
    with open(folder / "predictions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "probability", "region", "seen_by_model"])
        w.writerows(
            [f"/data/images/IMG{i:07d}.jpg", int(t), f"{q:.6f}", "hand", "unseen"]
            for i, (t, q) in enumerate(zip(y, p, strict=True))
        )
    ds = {"path": "/data", "split_file": "split.json", "subset": "val"}
    base = {"n": len(y), "n_positive": int(y.sum()), "auc": auc(y, p), "dataset": ds, "model": {}}
    (folder / "metrics.json").write_text(json.dumps(base | metrics))
    return folder


def test_compare_models_prints_one_row_per_evaluation(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bonefrac.evaluation.metrics import sensitivity_at_specificity

    tool = _tool("compare_models")
    rng = np.random.default_rng(0)
    y = (rng.random(200) < 0.2).astype(int)
    p_old, p_new = rng.random(200), np.clip(0.3 * y + 0.7 * rng.random(200), 0, 1)
    fitted = {"fitted_on": "/data", "n_images": 200, "n_fractured": int(y.sum()), "ece_before": 0.21,
              "ece_after": 0.04, "brier_before": 0.2, "brier_after": 0.15}  # fmt: skip
    # An older report without the ROC figure (recomputed from predictions.csv), and a detector's full one.
    old = _fake_report(tmp_path / "old", y, p_old, auc_ci95=[0.41, 0.55], calibration={"ece": 0.2})
    terciles = [{"pointing_game": g} for g in (0.41, 0.623, 0.9)]
    regions = {r: {"operating_points": {"default": {"sensitivity": s}}} for r, s in (("hand", 0.81), ("leg", 0.7))}
    new = _fake_report(
        tmp_path / "new", y, p_new, auc_ci95=[0.8, 0.9], calibration={"ece": 0.04},
        sensitivity_at_specificity=sensitivity_at_specificity(y, p_new),
        localization={"pointing_game": 0.7, "by_box_size": terciles}, per_region=regions,
        auc_without_hardware={"auc": 0.77}, detection={"ap50_fractured": 0.31},
        model={"calibration": {"fitted": fitted}},
    )  # fmt: skip
    # reframe_probe.py --json's file (its zoom 1 is not a column).
    probe = tmp_path / "reframe.json"
    probe.write_text(json.dumps({"zoom": {"1": 0.7, "1.5": 0.65, "2": 0.5, "3": 0.333}, "n": 50}))
    argv = [f"v1={old}", f"v2 detector={new}", "--minutes", "v2 detector=118", "--ips", "v1=70.5"]
    argv += ["--reframe", f"v2 detector={probe}", "--ood", "v2 detector=MURA wrist: 12% flagged | p=0.9"]
    assert tool.main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("| model | AUC (95% CI) | sens @ spec 0.90 | pointing game | AP@0.5 (fractured) | ECE |")
    sens_old = sensitivity_at_specificity(y, p_old)["sensitivity"]
    assert lines[2] == f"| v1 | {auc(y, p_old):.3f} (0.410-0.550) | {sens_old:.3f} | n/a | n/a | 0.200 | n/a | 70.5 |"
    sens_new = sensitivity_at_specificity(y, p_new)["sensitivity"]
    assert (
        lines[3]
        == f"| v2 detector | {auc(y, p_new):.3f} (0.800-0.900) | {sens_new:.3f} | 0.700 | 0.310 | 0.040 | 118 | n/a |"
    )
    # The robustness table, below the main one: an older report's figures are "-".
    assert lines[5].startswith("| model | pointing s/m/l boxes | sens @ default, hand | sens @ default, leg |")
    assert lines[5].endswith("| AUC without hardware | re-framed pointing 1.5x/2x/3x | OOD proxy |")
    assert lines[7] == "| v1 | - | - | - | - | - | - |"
    ood = "MURA wrist: 12% flagged \\| p=0.9"  # its bar escaped: it would end the cell
    assert lines[8] == f"| v2 detector | 0.41/0.62/0.90 | 0.810 | 0.700 | 0.770 | 0.65/0.50/0.33 | {ood} |"
    assert f"200 images ({y.sum()} fractured) of data, subset val of split.json." in lines
    assert lines[-1].startswith("v2 detector: calibrated on 200 images of data") and "ECE 0.210 -> 0.040" in lines[-1]
    # Evaluations over different images do not compare; a figure for a model not in the table is a typo.
    other = _fake_report(tmp_path / "other", y[:100], p_old[:100])
    with pytest.raises(SystemExit, match="evaluated different images"):
        tool.main([str(old), str(other)])
    with pytest.raises(SystemExit, match="name no model here: v3"):
        tool.main([f"v1={old}", "--ips", "v3=1"])
    with pytest.raises(SystemExit, match="name no model here: v3"):
        tool.main([f"v1={old}", "--ood", "v3=x"])
