"""The model comparison of issue 16 (for the model card): one markdown table from `bonefrac evaluate` folders.

    python tools/compare_models.py "bundled v1=/work/runs/eval-bundled" "v2=/work/runs/eval-v2" \
        --minutes "v2=118" --ips "bundled v1=70.1" --ips "v2=31.5" \
        --reframe "v2=/work/runs/reframe-v2.json" --ood "v2=MURA wrist: 12% flagged"

Each positional argument is an evaluate output folder (metrics.json and predictions.csv), optionally named
`LABEL=FOLDER` (default label: the folder's name). Training minutes and `bonefrac predict` images/s are not
in an evaluation: give them per label (`bench/bench_predict.py` measures images/s side by side). Compare
folders evaluated on the same images (the same dataset, split and subset): the tool refuses others, since
figures over different images do not compare.

Columns: AUC with its bootstrap 95% CI; sensitivity at specificity 0.90 read off the ROC (no operating point:
computed from predictions.csv when an older metrics.json lacks it); the pointing game (heatmap peak inside a
fracture box); COCO box AP@0.5 over fractured images (the FracAtlas paper's protocol); ECE (15 bins).

A second table, of robustness: the pointing game per box-size tercile (small/medium/large fractures); the
sensitivity at the model's default operating point in the two big regions, hand and leg; the AUC without
images showing orthopaedic hardware (the implant shortcut); the pointing game on images re-framed at zoom
1.5/2/3 (`tools/reframe_probe.py --json`, given per label with `--reframe`); and a free-text OOD proxy
figure per label (`--ood`). A figure an older metrics.json lacks shows as "-".

Below the tables: each calibrated model's record of its calibration (ECE before and after, on the images it
was fitted on).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bonefrac.evaluation.metrics import ROC_SPECIFICITY, sensitivity_at_specificity

COLUMNS = (
    "model",
    "AUC (95% CI)",
    f"sens @ spec {ROC_SPECIFICITY:.2f}",
    "pointing game",
    "AP@0.5 (fractured)",
    "ECE",
    "training minutes",
    "predict images/s",
)
#: The regions of the robustness table (FracAtlas' two big ones) and the zooms of the re-framing probe.
REGIONS = ("hand", "leg")
REFRAME_ZOOMS = ("1.5", "2", "3")
ROBUSTNESS_COLUMNS = (
    "model",
    "pointing s/m/l boxes",
    *(f"sens @ default, {r}" for r in REGIONS),
    "AUC without hardware",
    f"re-framed pointing {'/'.join(z + 'x' for z in REFRAME_ZOOMS)}",
    "OOD proxy",
)


@dataclass
class Row:
    label: str
    folder: Path
    metrics: dict[str, Any]
    minutes: float | None = None
    images_per_s: float | None = None
    reframe: dict[str, Any] | None = None  # reframe_probe.py's --json
    ood: str | None = None
    notes: list[str] = field(default_factory=list)


def _num(x: Any, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _dash(x: Any, digits: int = 3) -> str:
    """A figure of the robustness table: "-" when this report lacks it."""
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def read_sensitivity(folder: Path, metrics: dict[str, Any]) -> float | None:
    """Sensitivity at specificity 0.90 from metrics.json, else recomputed from predictions.csv."""
    s = metrics.get("sensitivity_at_specificity")
    if isinstance(s, dict) and s.get("target_specificity") == ROC_SPECIFICITY:
        return s.get("sensitivity")
    with open(folder / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    y = np.array([int(r["label"]) for r in rows])
    p = np.array([float(r["probability"]) for r in rows])
    return sensitivity_at_specificity(y, p)["sensitivity"]


def cells(row: Row) -> list[str]:
    m = row.metrics
    lo, hi = m.get("auc_ci95") or (None, None)
    loc, det = m.get("localization") or {}, m.get("detection") or {}
    return [
        row.label,
        f"{_num(m.get('auc'))} ({_num(lo)}-{_num(hi)})",
        _num(read_sensitivity(row.folder, m)),
        _num(loc.get("pointing_game")),
        _num(det.get("ap50_fractured")),
        _num((m.get("calibration") or {}).get("ece")),
        _num(row.minutes, 0),
        _num(row.images_per_s, 1),
    ]


def robustness_cells(row: Row) -> list[str]:
    m = row.metrics
    terciles = (m.get("localization") or {}).get("by_box_size")
    regions = m.get("per_region") or {}
    default = [((regions.get(r) or {}).get("operating_points") or {}).get("default") or {} for r in REGIONS]
    zooms = (row.reframe or {}).get("zoom") or {}
    return [
        row.label,
        "/".join(_dash(t.get("pointing_game"), 2) for t in terciles) if terciles else "-",
        *(_dash(d.get("sensitivity")) for d in default),
        _dash((m.get("auc_without_hardware") or {}).get("auc")),
        "/".join(_dash(zooms.get(z), 2) for z in REFRAME_ZOOMS) if zooms else "-",
        (row.ood or "-").replace("|", "\\|"),  # a bar would end the cell
    ]


def _markdown(columns: tuple[str, ...], body: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)] + [
        "| " + " | ".join(c) + " |" for c in body
    ]


def calibration_note(row: Row) -> str | None:
    fitted = ((row.metrics.get("model") or {}).get("calibration") or {}).get("fitted")
    if not isinstance(fitted, dict):
        return None
    where = Path(str(fitted.get("fitted_on", "?"))).name
    return (
        f"{row.label}: calibrated on {fitted.get('n_images')} images of {where} "
        f"({fitted.get('n_fractured')} fractured): ECE {_num(fitted.get('ece_before'))} -> "
        f"{_num(fitted.get('ece_after'))}, Brier {_num(fitted.get('brier_before'))} -> "
        f"{_num(fitted.get('brier_after'))}"
    )


def table(rows: list[Row]) -> str:
    """The main markdown table, the robustness one (two: one would be too wide to read), then the evaluated
    images and the calibration records."""
    lines = _markdown(COLUMNS, [cells(r) for r in rows])
    lines += ["", *_markdown(ROBUSTNESS_COLUMNS, [robustness_cells(r) for r in rows])]
    m = rows[0].metrics
    ds = m.get("dataset") or {}
    lines += [
        "",
        f"{m.get('n')} images ({m.get('n_positive')} fractured) of {Path(str(ds.get('path'))).name}, "
        f"subset {ds.get('subset')} of {Path(str(ds.get('split_file'))).name if ds.get('split_file') else 'no split'}.",
    ]
    notes = [n for n in (calibration_note(r) for r in rows) if n]
    return "\n".join(lines + notes) + "\n"


def _pairs(values: list[str], what: str) -> dict[str, float]:
    """LABEL=NUMBER pairs."""
    out = _texts(values, what, "NUMBER")
    try:
        return {label: float(number) for label, number in out.items()}
    except ValueError as e:
        raise SystemExit(f"{what}: expected LABEL=NUMBER ({e})") from None


def _texts(values: list[str], what: str, kind: str = "TEXT") -> dict[str, str]:
    """LABEL=TEXT pairs, split at the first "=": the text may hold one, a label may not."""
    out = {}
    for v in values:
        label, sep, text = v.partition("=")
        if not sep:
            raise SystemExit(f"{what} {v!r}: expected LABEL={kind}")
        out[label] = text
    return out


def load_rows(
    folders: list[str],
    minutes: dict[str, float],
    ips: dict[str, float],
    reframe: dict[str, str] | None = None,
    ood: dict[str, str] | None = None,
) -> list[Row]:
    reframe, ood = reframe or {}, ood or {}
    rows = []
    for arg in folders:
        label, sep, path = arg.rpartition("=")
        folder = Path(path)
        label = label if sep else folder.name
        metrics = json.loads((folder / "metrics.json").read_text())
        probe = json.loads(Path(reframe[label]).read_text()) if label in reframe else None
        rows.append(Row(label, folder, metrics, minutes.get(label), ips.get(label), probe, ood.get(label)))
    unknown = (set(minutes) | set(ips) | set(reframe) | set(ood)) - {r.label for r in rows}
    if unknown:
        raise SystemExit(f"--minutes/--ips/--reframe/--ood name no model here: {', '.join(sorted(unknown))}")
    # Figures over different images do not compare: the same image files (by name, as predictions.csv lists
    # them; dataset paths may be written differently) with the same labels, or refuse.
    first = evaluated_images(rows[0].folder)
    for r in rows[1:]:
        if evaluated_images(r.folder) != first:
            raise SystemExit(
                f"{r.folder} and {rows[0].folder} evaluated different images: their figures do not compare"
            )
    return rows


def evaluated_images(folder: Path) -> set[tuple[str, str]]:
    with open(folder / "predictions.csv", newline="") as f:
        return {(Path(r["path"]).name, r["label"]) for r in csv.DictReader(f)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="+", help="[LABEL=]FOLDER of a `bonefrac evaluate` report")
    ap.add_argument("--minutes", action="append", default=[], help="LABEL=training minutes (repeatable)")
    ap.add_argument("--ips", action="append", default=[], help="LABEL=bonefrac predict images/s (repeatable)")
    ap.add_argument(
        "--reframe", action="append", default=[], help="LABEL=JSON written by tools/reframe_probe.py --json"
    )
    ap.add_argument("--ood", action="append", default=[], help="LABEL=free text of an OOD proxy figure")
    a = ap.parse_args(argv)
    minutes, ips = _pairs(a.minutes, "--minutes"), _pairs(a.ips, "--ips")
    rows = load_rows(a.folders, minutes, ips, _texts(a.reframe, "--reframe"), _texts(a.ood, "--ood"))
    sys.stdout.write(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
