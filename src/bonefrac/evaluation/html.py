"""report.html: the evaluation as one self-contained file a user can send (no folder of plots, no network).

The verdict first, then what the figures rest on (images, overlap with the model's own training images, the
caveats), the tables, and the plots embedded as base64 PNG `data:` URLs; results.txt at the end for the
figures not tabled here. Every text from the data is escaped.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bonefrac.evaluation.report import closing_note, results_text, with_ci

#: The plots `report.write_plots` and `report.write_froc_plot` draw, in the order shown, with their captions.
PLOTS = {
    "roc.png": "ROC curve with the model's operating points",
    "pr.png": "Precision-recall curve",
    "calibration.png": "Calibration: observed fraction fractured against predicted probability",
    "froc.png": "FROC: fracture boxes found against false-positive boxes per image",
}

_STYLE = """
body{font:15px/1.45 system-ui,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;color:#1b1b1b}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.8em;border-bottom:1px solid #ddd}
.verdict{font-size:1.15em;font-weight:600;padding:.7em 1em;border-left:5px solid #1f6feb;background:#f0f5ff}
.verdict.weak{border-color:#d1242f;background:#fff0f0}
table{border-collapse:collapse;margin:.5em 0}td,th{padding:.25em .7em;border-bottom:1px solid #eee;text-align:right}
th:first-child,td:first-child,td.t{text-align:left}.caveats li{color:#8a3b00}
figure{display:inline-block;margin:.5em}figure img{max-width:440px;width:100%}figcaption{font-size:.85em}
pre{font-size:12px;background:#f7f7f7;padding:1em;overflow-x:auto}
"""


def write_report_html(m: dict[str, Any], folder: Path, path: Path | None = None) -> Path:
    """Write report.html for the metrics `m` (`evaluate.compute_metrics` plus the model and dataset facts),
    embedding the plots found in `folder`; returns its path (default folder / "report.html")."""
    path = folder / "report.html" if path is None else path
    path.write_text(report_html(m, folder))
    return path


def report_html(m: dict[str, Any], folder: Path) -> str:
    """The report as one HTML document; the plots are read from `folder` (those missing are left out)."""
    e = html.escape
    weak = "includes 0.5" in m.get("verdict", "") or "no conclusion" in m.get("verdict", "")
    dataset = m.get("dataset") or {}
    model = m.get("model") or {}
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>bonefrac evaluation: {e(Path(str(dataset.get('path', ''))).name)}</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>bonefrac evaluation report</h1>",
        f'<p id="verdict" class="verdict{" weak" if weak else ""}">{e(m.get("verdict", ""))}</p>',
        "<h2>What was evaluated</h2>",
        _table(
            ["", ""],
            [
                [
                    "model",
                    f"{model.get('version', '?')} ({model.get('arch', '?')}, sha256 "
                    f"{str(model.get('sha256', ''))[:12]})",
                ],  # fmt: skip
                ["dataset", f"{Path(str(dataset.get('path', ''))).name} (subset {dataset.get('subset')})"],
                ["images", f"{m['n']} ({m['n_positive']} fractured); unreadable: {len(m.get('unreadable') or {})}"],
                ["seen by the model", _overlap_text(m.get("overlap"))],
            ],
            head=False,
        ),
        "<h2>Caveats</h2>",
        '<ul class="caveats">' + "".join(f"<li>{e(c)}</li>" for c in caveats(m)) + "</ul>",
    ]
    groups = m.get("by_overlap") or {}
    overlap = m.get("overlap") or {}
    if overlap.get("train", 0) + overlap.get("validation", 0) and "unseen" in groups:
        parts += ["<h2>Images the model never saw</h2>", *_discrimination(groups["unseen"])]
        parts.append(f"<h2>All {m['n']} images (some seen by the model: optimistic)</h2>")
    else:
        parts.append(f"<h2>All {m['n']} images</h2>")
    parts += _discrimination(m)
    c = m.get("calibration")
    if c:
        parts.append(
            f"<p>Calibration of the probability: ECE {_num(c['ece'])} ({c['bins']} equal-width bins), "
            f"Brier {_num(c['brier'])}.</p>"
        )
    parts += ["<h2>Per body region</h2>", _regions(m.get("per_region") or {})]
    parts += ["<h2>Plots</h2>", *_figures(folder)]
    parts += [
        "<h2>Everything, as text (results.txt)</h2>",
        f"<details><summary>results.txt</summary><pre>{e(results_text(m))}</pre></details>",
        f"<p><small>bonefrac {e(str(m.get('bonefrac_version', '')))}</small></p>",
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def caveats(m: dict[str, Any]) -> list[str]:
    """Every caution on the figures, each once: the whole set's, each overlap group's and body region's
    small-sample caveats, and the note on operating points and seen images."""
    found = []
    if m.get("caveat"):
        found.append(f"all images: {m['caveat']}")
    for name, g in (m.get("by_overlap") or {}).items():
        if g.get("caveat"):
            found.append(f"{name} images: {g['caveat']}")
    regions = [reg for reg, r in (m.get("per_region") or {}).items() if r.get("caveat")]
    if regions:
        found.append(f"too few images for a stable AUC in: {', '.join(regions)} (see the region table)")
    return [*found, closing_note(m)]


def _overlap_text(overlap: dict[str, int] | None) -> str:
    if overlap is None:
        return "unknown (the checkpoint does not list the images it was trained on)"
    return f"{overlap['train']} trained on, {overlap['validation']} validated on, {overlap['unseen']} unseen"


def _discrimination(d: dict[str, Any]) -> list[str]:
    lo, hi = d["auc_ci95"]
    out = [f"<p>{d['n']} images ({d['n_positive']} fractured). AUC <b>{_num(d['auc'])}</b> "
           f"(95% CI {_num(lo)}-{_num(hi)}, bootstrap).</p>"]  # fmt: skip
    s = d.get("sensitivity_at_specificity")
    if s:
        out.append(
            f"<p>Sensitivity at specificity &ge; {s['target_specificity']:.2f} on the ROC: "
            f"{_num(s['sensitivity'])} (no operating point).</p>"
        )
    rows = [
        [name, _num(s["threshold"]), *(with_ci(s, k) for k in ("sensitivity", "specificity", "ppv", "npv"))]
        for name, s in d["operating_points"].items()
    ]
    out.append(_table(["operating point", "threshold", "sensitivity", "specificity", "PPV", "NPV"], rows))
    out.append("<p><small>In brackets: Wilson 95% confidence intervals.</small></p>")
    return out


def _regions(regions: dict[str, Any]) -> str:
    rows = []
    for reg, r in regions.items():
        lo, hi = r["auc_ci95"]
        ci = r.get("caveat") or f"{_num(lo)}-{_num(hi)}"
        rows.append([reg, str(r["n"]), str(r["n_positive"]), _num(r["auc"]), ci])
    return _table(["body region", "n", "fractured", "AUC", "95% CI, or caveat"], rows)


def _figures(folder: Path) -> Iterable[str]:
    names = [n for n in PLOTS if (folder / n).is_file()]
    names += sorted(p.name for p in folder.glob("confusion_*.png"))
    for name in names:
        data = base64.b64encode((folder / name).read_bytes()).decode("ascii")
        caption = PLOTS.get(name) or f"Confusion matrix at {name[len('confusion_') : -len('.png')]}"
        yield (
            f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )


def _table(header: list[str], rows: list[list[str]], head: bool = True) -> str:
    e = html.escape
    top = "<tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>" if head else ""
    body = "".join("<tr>" + "".join(_cell(str(c)) for c in row) + "</tr>" for row in rows)
    return f"<table>{top}{body}</table>"


def _cell(text: str) -> str:
    """Figures right-aligned (their decimals line up), words left-aligned."""
    numeric = re.fullmatch(r"[\d.\-() n/a]*", text) is not None
    return f"<td{'' if numeric else ' class=t'}>{html.escape(text)}</td>"


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"
