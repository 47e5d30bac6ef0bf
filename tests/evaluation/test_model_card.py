"""tools/model_card.py writes the detector's card from what `bonefrac calibrate` and `bonefrac evaluate` wrote
(the real files, not a hand-made metrics.json), and refuses a report of another model."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest
from _models import FIXTURE_IMAGES, FIXTURES, make_checkpoint

from bonefrac.evaluation.calibration import recalibrate
from bonefrac.evaluation.evaluate import evaluate
from bonefrac.models.checkpoint import load_model

TOOL = Path(__file__).parents[2] / "tools" / "model_card.py"


def _card(tmp_path: Path, model: Path, report: Path, *extra: str) -> str:
    out = tmp_path / "MODEL_CARD.md"
    argv = ["model_card.py", "--model", str(model), "--report", str(report), "--out", str(out), *extra]
    old, sys.argv = sys.argv, argv
    try:
        runpy.run_path(str(TOOL), run_name="__main__")
    finally:
        sys.argv = old
    return out.read_text()


def test_the_card_carries_the_calibration_and_the_validation_report(tmp_path: Path) -> None:
    source = make_checkpoint(tmp_path / "det.pt", arch="lite0_centernet", image_size=96)
    split = tmp_path / "split.json"
    split.write_text(json.dumps({Path(p).name: "val" for p in FIXTURE_IMAGES}))
    record = recalibrate(
        FIXTURES, tmp_path / "cal.pt", model=source, split_file=split, backend="torch", workers=1, progress=False,
        allow_small=True,
    )  # fmt: skip
    m = evaluate(
        FIXTURES, tmp_path / "rep", model=tmp_path / "cal.pt", split_file=split, subset="val",
        backend="torch", workers=1, progress=False,
    )  # fmt: skip
    (tmp_path / "history.csv").write_text("epoch,seconds\n1,600\n2,1200\n")
    (tmp_path / "commands.txt").write_text("bonefrac train DATA --arch lite0_centernet\n")
    (tmp_path / "compare.md").write_text("| model | AUC (95% CI) |\n|---|---|\n| v2 | 0.931 (0.900-0.950) |\n")
    common = ["--history", str(tmp_path / "history.csv"), "--commands", str(tmp_path / "commands.txt")]
    card = _card(
        tmp_path, tmp_path / "cal.pt", tmp_path / "rep", *common, "--trained-on", "a 2-core CPU (no GPU)",
        "--comparison-md", str(tmp_path / "compare.md"),
    )  # fmt: skip

    _, spec, info = load_model(tmp_path / "cal.pt")
    assert info["sha256"] in card and "lite0_centernet" in card and "96 x 96" in card
    assert "a 2-core CPU (no GPU): 30 minutes of wall clock over 2 epochs" in card
    assert "bonefrac train DATA --arch lite0_centernet" in card
    # calibration: the fitted scale and bias, and bonefrac calibrate's before/after figures
    assert f"a = {spec.calibration['scale']:.4f}, b = {spec.calibration['bias']:.4f}" in card
    assert f"ECE {record['ece_before']:.3f} -> **{record['ece_after']:.3f}**" in card
    assert f"on {record['n_images']} images ({record['n_fractured']} fractured" in card
    # the report's figures, each operating point with the rule that chose it
    assert f"**{m['auc']:.3f}**" in card and "not test results" in card
    for name, s in m["operating_points"].items():
        lo, hi = s["sensitivity_ci95"]
        assert f"| {name} | " in card
        assert f"| {s['threshold']:.3f} | {s['sensitivity']:.3f} ({lo:.2f}-{hi:.2f}) |" in card
    assert "sensitivity >= 90%" in card and "specificity >= 95%" in card
    d = m["detection"]
    assert f"**{d['ap50_fractured']:.3f}** / {d['ap50_95_fractured']:.3f}" in card
    assert " / ".join(f"{d['froc'][k]:.3f}" for k in ("0.5", "1", "2")) in card
    assert f"**{m['localization']['pointing_game']:.3f}**" in card
    assert "| model | AUC (95% CI) |\n|---|---|\n| v2 | 0.931 (0.900-0.950) |" in card  # verbatim
    assert "bonefrac calibrate DATASET --model M --out M2" in card
    # a new model has no independent test yet, and says so; the public download's route is written out
    assert "## Independent test (images not in this repository)\n\nIndependent test: not yet measured." in card
    assert "--split src/bonefrac/weights/split.json" in card.split("## From the public download")[1]
    measured = tmp_path / "independent.md"
    measured.write_text("AUC **0.917** on 819 radiographs outside the repository.")
    with_test = _card(tmp_path, tmp_path / "cal.pt", tmp_path / "rep", *common, "--trained-on", "x",
                      "--independent-test", str(measured))  # fmt: skip
    assert "AUC **0.917** on 819 radiographs" in with_test and "not yet measured" not in with_test

    # a report of another model (here: the uncalibrated source) is refused, not carded
    with pytest.raises(SystemExit, match="evaluated"):
        _card(tmp_path, source, tmp_path / "rep", *common, "--trained-on", "x")
