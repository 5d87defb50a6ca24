"""The loss / metric curve of a run (``curves.png``), drawn off-screen with matplotlib's Agg backend."""

from __future__ import annotations

from pathlib import Path


def plot_curves(metrics: dict, path: Path) -> Path:
    """Train and validation loss (left) and the validation main metric (right) per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    history = metrics["epochs"]
    epochs = [h["epoch"] for h in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    left.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    left.plot(epochs, [h["loss"] for h in history], "s-", label="validation")
    left.set(xlabel="epoch", ylabel="loss", title="loss")
    left.legend()
    right.plot(epochs, [h["main"] for h in history], "o-", color="C2")
    best = metrics.get("best")
    if best:
        right.axvline(best["epoch"], color="grey", linestyle=":", label=f"best (epoch {best['epoch']})")
        right.legend()
    right.set(xlabel="epoch", ylabel=f"validation {metrics['metric']}", title="validation metric")
    for ax in (left, right):
        ax.set_xticks(epochs)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{metrics['method']} on {metrics['task']} ({metrics['trainable_pct']:.2f}% trained)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


__all__ = ["plot_curves"]
