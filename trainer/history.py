"""Training history: one JSON file and a PNG plot of loss and validation AUC per epoch."""

from __future__ import annotations

import json
from pathlib import Path


def save_history(history: dict, json_path: str | Path, png_path: str | Path) -> None:
    """`history`: {"attempts": [{"attempt", "learning_rate", "collapsed", "epochs": [
    {"epoch", "loss", "val_loss", "val_auc", "lr", "seconds"}, ...]}, ...], ...}."""
    Path(json_path).write_text(json.dumps(history, indent=2) + "\n")
    plot_history(history, png_path)


def plot_history(history: dict, png_path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_auc) = plt.subplots(1, 2, figsize=(10, 4))
    for attempt in history.get("attempts", []):
        epochs = attempt.get("epochs", [])
        if not epochs:
            continue
        tag = f"attempt {attempt['attempt']}" + (" (collapsed)" if attempt.get("collapsed") else "")
        xs = [e["epoch"] for e in epochs]
        line = ax_loss.plot(xs, [e["loss"] for e in epochs], label=f"train loss, {tag}")[0]
        ax_loss.plot(xs, [e["val_loss"] for e in epochs], "--", color=line.get_color(), label=f"val loss, {tag}")
        ax_auc.plot(xs, [e["val_auc"] for e in epochs], color=line.get_color(), label=f"val AUC, {tag}")
    best = history.get("best_epoch")
    if best is not None:
        ax_auc.axvline(best, color="grey", linestyle=":", label=f"best epoch {best}")
    ax_loss.set(xlabel="epoch", ylabel="binary cross-entropy", title="loss")
    ax_auc.set(xlabel="epoch", ylabel="AUC-ROC", title="validation AUC", ylim=(0.4, 1.01))
    for ax in (ax_loss, ax_auc):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png_path, dpi=90)
    plt.close(fig)
