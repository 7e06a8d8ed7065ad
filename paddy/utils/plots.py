"""Figures written into run directories (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def _series(history: dict[str, Any], key: str) -> tuple[list, list]:
    points = [(e, v) for e, v in zip(history["epoch"], history.get(key, [])) if v is not None]
    return [e + 1 for e, _ in points], [v for _, v in points]


def plot_history(history: dict[str, Any], path: str | Path) -> None:
    """Four panels: loss, accuracy, F1 (train/valid) and learning rate per group, by epoch."""
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    panels = [("Loss", "train_loss", "valid_loss"), ("Accuracy", "train_acc", "valid_acc"),
              ("Macro F1", "train_f1", "valid_f1")]
    for ax, (title, train_key, valid_key) in zip(axes.flat, panels):
        for key, label, style in ((train_key, "train", "o-"), (valid_key, "valid", "s-")):
            x, y = _series(history, key)
            if y:
                ax.plot(x, y, style, label=label, markersize=3)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    ax = axes.flat[3]
    for name, values in history.get("learning_rates_by_group", {}).items():
        ax.plot([e + 1 for e in history["epoch"][: len(values)]], values, "o-", label=name, markersize=3)
    ax.set_title("Learning rate (end of epoch)")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    if history.get("learning_rates_by_group"):
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
