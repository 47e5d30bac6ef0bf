"""Plots and the evaluation report.

Figures are drawn with matplotlib's object-oriented API onto an Agg canvas of their own: no pyplot, no
backend chosen for the whole process, so importing bonefrac never changes how a caller's plots display.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from bonefrac.evaluation.detection import FROC_RATES, FrocCurve
from bonefrac.evaluation.metrics import operating_point_stats


def _figure(figsize: tuple[float, float]) -> Figure:
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)  # attaches itself to the figure: savefig renders through it
    return fig


def _save(fig: Figure, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def plot_learning_curve(history: list[dict[str, float]], path: Path) -> None:
    epochs = [h["epoch"] for h in history]
    fig = _figure((10, 4))
    a, b = fig.subplots(1, 2)
    a.plot(epochs, [h["train_loss"] for h in history], "o-", label="train loss")
    a.plot(epochs, [h["val_loss"] for h in history], "o-", label="validation loss")
    a.set_xlabel("epoch")
    a.legend()
    b.plot(epochs, [h["val_auc"] for h in history], "o-", color="C2")
    b.set_xlabel("epoch")
    b.set_ylabel("validation AUC")
    _save(fig, path)


def write_plots(y: np.ndarray, p: np.ndarray, operating_points: dict[str, float], out: Path) -> None:
    """roc.png, pr.png, calibration.png and confusion_<operating point>.png."""
    from sklearn.calibration import calibration_curve
    from sklearn.metrics import average_precision_score, precision_recall_curve, roc_curve

    y, p = np.asarray(y), np.asarray(p)
    fpr, tpr, _ = roc_curve(y, p)
    fig = _figure((5, 5))
    ax = fig.subplots()
    ax.plot(fpr, tpr, label="ROC")
    stats = {name: operating_point_stats(y, p, t) for name, t in operating_points.items()}
    for i, (name, s) in enumerate(stats.items()):
        ax.plot(
            1 - s["specificity"], s["sensitivity"], "o", color=f"C{i + 1}", label=f"{name} (t={s['threshold']:.2f})"
        )
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title="ROC")
    ax.legend(loc="lower right")
    _save(fig, out / "roc.png")

    prec, rec, _ = precision_recall_curve(y, p)
    fig = _figure((5, 5))
    ax = fig.subplots()
    ax.plot(rec, prec)
    ax.axhline(y.mean(), ls=":", color="grey", label=f"prevalence {y.mean():.2f}")
    ax.set(
        xlabel="recall (sensitivity)",
        ylabel="precision (PPV)",
        title=f"Precision-recall (AP {average_precision_score(y, p):.3f})",
    )
    ax.legend()
    _save(fig, out / "pr.png")

    frac_pos, mean_pred = calibration_curve(y, p, n_bins=10, strategy="quantile")
    fig = _figure((5, 5))
    ax = fig.subplots()
    ax.plot(mean_pred, frac_pos, "o-", label="model")
    ax.plot([0, 1], [0, 1], ":", color="grey", label="perfect calibration")
    ax.set(xlabel="predicted probability", ylabel="observed fraction fractured", title="Calibration")
    ax.legend()
    _save(fig, out / "calibration.png")

    for name, s in stats.items():
        cm = np.array([[s["tn"], s["fp"]], [s["fn"], s["tp"]]])  # rows: true class, columns: predicted
        fig = _figure((4, 4))
        ax = fig.subplots()
        ax.imshow(cm, cmap="Blues")
        for (i, j), v in np.ndenumerate(cm):
            ax.text(j, i, str(v), ha="center", va="center", color="black", fontsize=14)
        ax.set(
            xticks=[0, 1],
            yticks=[0, 1],
            xticklabels=["no fracture", "fracture"],
            yticklabels=["no fracture", "fracture"],
            xlabel="predicted",
            ylabel="true",
            title=f"{name} (threshold {s['threshold']:.3f})",
        )
        _save(fig, out / f"confusion_{name}.png")


def write_froc_plot(froc: FrocCurve, path: Path) -> None:
    """froc.png: sensitivity against false positives per image (log scale, 1/8 to 8), FROC_RATES marked."""
    rates = np.geomspace(1 / 8, 8, 200)
    fig = _figure((5, 5))
    ax = fig.subplots()
    ax.plot(rates, [froc.sensitivity_at(r) for r in rates], label="model")
    for i, r in enumerate(FROC_RATES):
        s = froc.sensitivity_at(r)
        ax.plot(r, s, "o", color=f"C{i + 1}", label=f"{r:g} FP/image: {s:.3f}")
    if 0 < froc.fp_per_image[-1] <= rates[-1]:  # past it the curve is flat: no threshold keeps more boxes
        ax.axvline(froc.fp_per_image[-1], ls=":", color="grey", label="every detection kept")
    ax.set_xscale("log")
    ax.set_xticks([1 / 8, 1 / 4, 1 / 2, 1, 2, 4, 8], ["1/8", "1/4", "1/2", "1", "2", "4", "8"])
    ax.set_xticks([], minor=True)  # the log scale's own labels would overprint these
    ax.set(
        xlabel="false-positive boxes per image",
        ylabel="sensitivity (fracture boxes found, IoU >= 0.5)",
        ylim=(0, 1.02),
        title="FROC",
    )
    ax.legend(loc="best")
    _save(fig, path)


# ---------------------------------------------------------------- results.txt
def _fmt(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _ci(d: dict[str, Any]) -> str:
    lo, hi = d["auc_ci95"]
    return f"95% CI {_fmt(lo)}-{_fmt(hi)}"


def _auc_line(d: dict[str, Any]) -> str:
    """'0.930 (95% CI 0.852-0.986)', or with the group's caveat (which carries the CI) when it has one."""
    return f"{_fmt(d['auc'])}  ({d['caveat'] if d.get('caveat') else _ci(d)})"


def _discrimination_lines(d: dict[str, Any]) -> list[str]:
    lines = [f"AUC: {_fmt(d['auc'])}  ({_ci(d)}, bootstrap)"]
    if d.get("sensitivity_at_specificity"):
        s = d["sensitivity_at_specificity"]
        lines.append(
            f"sensitivity at specificity >= {s['target_specificity']:.2f} on the ROC: {_fmt(s['sensitivity'])} "
            f"(specificity {_fmt(s['specificity'])} at probability >= {_fmt(s['threshold'])}; no operating point)"
        )
    if d.get("caveat"):
        lines.append(f"caveat: {d['caveat']}")
    head = "".join(f"{k:>19}" for k in ("sensitivity", "specificity", "PPV", "NPV"))
    lines += ["", f"{'operating point':<18}{'threshold':>10}{head}   (Wilson 95% CI)"]
    for name, s in d["operating_points"].items():
        cells = "".join(f"{with_ci(s, k):>19}" for k in ("sensitivity", "specificity", "ppv", "npv"))
        lines.append(f"{name:<18}{_fmt(s['threshold']):>10}{cells}")
    return lines


def with_ci(stats: dict[str, Any], key: str) -> str:
    """'0.868 (0.79-0.92)': an operating point's proportion with its Wilson 95% CI (when it has one)."""
    ci = stats.get(f"{key}_ci95")
    if ci is None or None in ci or not np.isfinite(ci).all():
        return _fmt(stats[key])
    return f"{_fmt(stats[key])} ({ci[0]:.2f}-{ci[1]:.2f})"


def _overlap_lines(m: dict[str, Any]) -> list[str]:
    """The model's own images among these: the unseen ones' figures first, the rest for comparison."""
    overlap, groups = m.get("overlap"), m.get("by_overlap") or {}
    if overlap is None:
        return ["seen by the model: unknown (the checkpoint does not list the images it was trained on)"]
    seen = overlap["train"] + overlap["validation"]
    head = (
        f"seen by the model: {overlap['train']} trained on, {overlap['validation']} validated on, "
        f"{overlap['unseen']} unseen"
    )
    if not seen:
        return [f"{head} (none of these images trained or validated it)"]
    lines = [head, ""]
    if "unseen" in groups:
        u = groups["unseen"]
        lines += [f"UNSEEN IMAGES (neither trained nor validated on): {u['n']} ({u['n_positive']} fractured)"]
        lines += _discrimination_lines(u)
    else:
        lines.append(
            "UNSEEN IMAGES: none. Each image here trained or validated this model: all figures are optimistic."
        )
    seen_groups = [
        f"the {groups[name]['n']} images it was {label} ({groups[name]['n_positive']} fractured): "
        f"AUC {_auc_line(groups[name])}"
        for name, label in (("validation", "validated on"), ("train", "trained on"))
        if name in groups
    ]
    if len(groups) > 1:  # (one group alone is the ALL block below)
        lines += ["", *seen_groups]
    share = "every one" if seen == m["n"] else f"{seen} of them"
    lines += ["", f"ALL {m['n']} IMAGES ({share} seen by the model: optimistic)"]
    return lines


def closing_note(m: dict[str, Any]) -> str:
    overlap = m.get("overlap")
    if overlap is None:
        if m["dataset"].get("subset") == "val":
            return (
                "These are validation images: the operating points were chosen on them, so sensitivity and "
                "specificity are optimistic. An independent test set gives the unbiased figures."
            )
        return (
            "Operating points were chosen on the training run's validation split. This model does not record "
            "its training images: if some are among these, the figures are optimistic."
        )
    notes = []
    if overlap["train"]:
        notes.append(f"{overlap['train']} of these images trained the model: figures including them flatter it.")
    if overlap["validation"]:
        notes.append(
            f"{overlap['validation']} of these images validated it: its epoch and operating points were chosen on "
            "those, so their sensitivity and specificity are optimistic."
        )
    if not notes:
        return "Operating points were chosen on the training run's validation split, not on this data."
    return " ".join(notes) + " Unseen images (an independent test set) give the unbiased figures."


def _calibration_lines(c: dict[str, Any] | None) -> list[str]:
    if c is None:
        return []
    return [
        "",
        f"calibration of the probability: ECE {_fmt(c['ece'])} ({c['bins']} equal-width bins), "
        f"Brier {_fmt(c['brier'])}",
    ]


def _detection_lines(d: dict[str, Any]) -> list[str]:
    froc = " / ".join(_fmt(v) for v in d["froc"].values())
    rates = " / ".join(d["froc"])
    lines = [
        f"detection over {d['n_images']} images ({d['n_fractured_images']} fractured with "
        f"{d['n_gt_boxes']} boxes; {d['n_detections']} detections), COCO box AP by pycocotools:",
        f"  AP@0.5       all images {_fmt(d['ap50'])}   fractured images only {_fmt(d['ap50_fractured'])}",
        f"  AP@[.5:.95]  all images {_fmt(d['ap50_95'])}   fractured images only {_fmt(d['ap50_95_fractured'])}",
        f"  FROC sensitivity (IoU>={d['froc_iou']}) at {rates} false positives per image: {froc}",
    ]
    if d.get("n_fractured_without_boxes"):
        lines.append(f"  ({d['n_fractured_without_boxes']} fractured images without boxes left out)")
    return lines


def _box_size_lines(terciles: list[dict[str, Any]]) -> list[str]:
    """One line per box-size tercile (`metrics.localization_by_box_size`): its images, size range, scores."""
    lines = []
    for t in terciles:
        lo, hi = t["size_px"]
        span = f"{lo:.1f}-{hi:.1f} px" if t["n_images"] else "no images"
        lines.append(
            f"  {t['tercile']:<6} boxes (smallest box's long side {span}, n={t['n_images']}): "
            f"pointing game {_fmt(t['pointing_game'])}, recall at IoU>={t['iou_threshold']} {_fmt(t['box_recall'])}"
        )
    return lines


def results_text(m: dict[str, Any]) -> str:
    """The readable summary (the seed project's results.txt, with the numbers that matter clinically)."""
    lines = [
        *([m["verdict"], ""] if m.get("verdict") else []),
        "bonefrac evaluation",
        f"model: {m['model']['version']}",
        f"dataset: {m['dataset']['path']} ({m['dataset']['subset']})",
        f"images: {m['n']} ({m['n_positive']} fractured), unreadable: {len(m.get('unreadable', {}))}",
        *_overlap_lines(m),
        "",
        *_discrimination_lines(m),
        *_calibration_lines(m.get("calibration")),
        "",
        "per body region:",
    ]
    for reg, r in m["per_region"].items():
        lines.append(f"  {reg:<28} n={r['n']:<5} fractured={r['n_positive']:<4} AUC={_auc_line(r)}")
    if "auc_without_hardware" in m:
        h = m["auc_without_hardware"]
        lines.append(f"\nAUC on images without orthopaedic hardware (n={h['n']}): {_auc_line(h)}")
    if "localization" in m:
        loc = m["localization"]
        lines += [
            "",
            f"localisation over {loc['n_images']} fractured images with boxes:",
            f"  pointing game (heatmap peak inside a fracture box): {_fmt(loc['pointing_game'])}",
            f"  boxes at IoU>={loc['iou_threshold']}: precision {_fmt(loc['box_precision'])}, "
            f"recall {_fmt(loc['box_recall'])}",
            *_box_size_lines(loc.get("by_box_size") or []),
        ]
    if "detection" in m:
        lines += ["", *_detection_lines(m["detection"])]
    lines += ["", closing_note(m)]
    return "\n".join(lines) + "\n"


def write_results_txt(m: dict[str, Any], path: Path) -> None:
    path.write_text(results_text(m))
