"""Pictures of training runs. matplotlib with the Agg backend: no screen needed."""

from __future__ import annotations

from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(history: dict[str, list[float]], path: str | Path, title: str, best_epoch: int = 0) -> None:
    """Accuracy and loss per epoch, train and validation, the kept epoch marked."""
    from fastheads.runio import atomic_write

    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), dpi=100)
    for ax, metric, label in ((axes[0], "categorical_accuracy", "accuracy"), (axes[1], "loss", "loss")):
        for key, style in ((metric, "-o"), (f"val_{metric}", "--s")):
            if key in history:
                epochs = range(1, len(history[key]) + 1)
                ax.plot(epochs, history[key], style, label=key.replace("categorical_", ""), markersize=4)
        if best_epoch:
            ax.axvline(best_epoch, color="grey", linestyle=":", label=f"kept epoch {best_epoch}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0].set_ylim(0, 1.02)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png"), suffix=".png")
    plt.close(fig)
