"""Plots and the evaluation report (matplotlib with the Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

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
