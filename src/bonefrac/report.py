"""Plots and the evaluation report (matplotlib with the Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_learning_curve(history: list[dict[str, float]], path: Path) -> None:
    epochs = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(epochs, [h["train_loss"] for h in history], "o-", label="train loss")
    a.plot(epochs, [h["val_loss"] for h in history], "o-", label="validation loss")
    a.set_xlabel("epoch")
    a.legend()
    b.plot(epochs, [h["val_auc"] for h in history], "o-", color="C2")
    b.set_xlabel("epoch")
    b.set_ylabel("validation AUC")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_plots(y: np.ndarray, p: np.ndarray, operating_points: dict[str, float], out: Path) -> None:
    """roc.png, pr.png, calibration.png and confusion_<operating point>.png."""
    from sklearn.calibration import calibration_curve
    from sklearn.metrics import average_precision_score, confusion_matrix, precision_recall_curve, roc_curve

    fpr, tpr, _ = roc_curve(y, p)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot(fpr, tpr, label="ROC")
    for i, (name, t) in enumerate(operating_points.items()):
        pred = p >= t
        sens = pred[y == 1].mean() if (y == 1).any() else np.nan
        spec = (~pred[y == 0]).mean() if (y == 0).any() else np.nan
        ax.plot(1 - spec, sens, "o", color=f"C{i + 1}", label=f"{name} (t={t:.2f})")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title="ROC")
    ax.legend(loc="lower right")
    _save(fig, out / "roc.png")

    prec, rec, _ = precision_recall_curve(y, p)
    fig, ax = plt.subplots(figsize=(5, 5))
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
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot(mean_pred, frac_pos, "o-", label="model")
    ax.plot([0, 1], [0, 1], ":", color="grey", label="perfect calibration")
    ax.set(xlabel="predicted probability", ylabel="observed fraction fractured", title="Calibration")
    ax.legend()
    _save(fig, out / "calibration.png")

    for name, t in operating_points.items():
        cm = confusion_matrix(y, (p >= t).astype(int), labels=[0, 1])
        fig, ax = plt.subplots(figsize=(4, 4))
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
            title=f"{name} (threshold {t:.3f})",
        )
        _save(fig, out / f"confusion_{name}.png")


def _save(fig: plt.Figure, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _fmt(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def write_results_txt(m: dict[str, Any], path: Path) -> None:
    """The readable summary (the seed project's results.txt, with the numbers that matter clinically)."""
    lo, hi = m["auc_ci95"]
    lines = [
        "bonefrac evaluation",
        f"model: {m['model']['version']}",
        f"dataset: {m['dataset']['path']} ({m['dataset']['subset']})",
        f"images: {m['n']} ({m['n_positive']} fractured), unreadable: {len(m.get('unreadable', {}))}",
        "",
        f"AUC: {_fmt(m['auc'])}  (95% CI {_fmt(lo)}-{_fmt(hi)}, bootstrap)",
        "",
        f"{'operating point':<18}{'threshold':>10}{'sensitivity':>13}{'specificity':>13}{'PPV':>8}{'NPV':>8}",
    ]
    for name, s in m["operating_points"].items():
        lines.append(
            f"{name:<18}{_fmt(s['threshold']):>10}{_fmt(s['sensitivity']):>13}"
            f"{_fmt(s['specificity']):>13}{_fmt(s['ppv']):>8}{_fmt(s['npv']):>8}"
        )
    lines += ["", "per body region:"]
    for reg, r in m["per_region"].items():
        lines.append(f"  {reg:<28} n={r['n']:<5} fractured={r['n_positive']:<4} AUC={_fmt(r['auc'])}")
    if "auc_without_hardware" in m:
        h = m["auc_without_hardware"]
        lines.append(f"\nAUC on images without orthopaedic hardware: {_fmt(h['auc'])} (n={h['n']})")
    if "localization" in m:
        loc = m["localization"]
        lines += [
            "",
            f"localisation over {loc['n_images']} fractured images with boxes:",
            f"  pointing game (heatmap peak inside a fracture box): {_fmt(loc['pointing_game'])}",
            f"  boxes at IoU>={loc['iou_threshold']}: precision {_fmt(loc['box_precision'])}, "
            f"recall {_fmt(loc['box_recall'])}",
        ]
    if m["dataset"].get("subset") == "val":
        note = "These are validation images: the operating points were chosen on them, so sensitivity and "
        note += "specificity are optimistic. An independent test set gives the unbiased figures."
    else:
        note = "Operating points were chosen on the training run's validation split, not on this data."
    lines += ["", note]
    path.write_text("\n".join(lines) + "\n")
