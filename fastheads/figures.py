"""Pictures for people: confusion matrix, misclassified images, Grad-CAM overlays, runs compared.

Every figure names what it shows in its title (model, data, configuration) so a PNG that
travels alone, pasted in a report, still says what it is. Written atomically: a half-drawn
PNG never replaces a good one.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fastheads.plots import _pyplot
from fastheads.runio import atomic_write

MAX_GRID = 64  # images per grid: beyond that thumbnails get too small to read


def _save(fig, path: str | Path, palette: bool = False) -> Path:
    """`palette`: 256 colours, for grids of photos, which otherwise weigh megabytes as PNG."""
    plt = _pyplot()
    if not palette:
        atomic_write(path, lambda p: fig.savefig(p, format="png", bbox_inches="tight"), suffix=".png")
    else:
        import io

        from PIL import Image

        buf = io.BytesIO()
        fig.savefig(buf, format="png", bbox_inches="tight")
        buf.seek(0)
        with Image.open(buf) as im:
            small = im.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
        atomic_write(path, lambda p: small.save(p, format="PNG", optimize=True), suffix=".png")
    plt.close(fig)
    return Path(path)


def _short(name: str, width: int = 18) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


def plot_confusion(cm: np.ndarray, class_names: Sequence[str], path: str | Path, title: str) -> Path:
    """Counts in the cells; colour = fraction of each true class, so small classes show their errors too."""
    plt = _pyplot()
    k = len(class_names)
    side = min(max(5.0, 0.55 * k + 2.5), 16.0)
    fig, ax = plt.subplots(figsize=(side + 1.2, side), dpi=100)
    rows = cm.sum(axis=1, keepdims=True)
    frac = np.divide(cm, rows, out=np.zeros(cm.shape, float), where=rows > 0)
    im = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    labels = [_short(n, 22) for n in class_names]
    ax.set_xticks(range(k), labels, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(k), labels)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    font = 10 if k <= 12 else 7
    for i in range(k):
        for j in range(k):
            if cm[i, j]:
                colour = "white" if frac[i, j] > 0.5 else "black"
                ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", color=colour, fontsize=font)
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def _display(image: np.ndarray) -> np.ndarray:
    return np.clip(np.asarray(image, np.float32), 0, 255).astype(np.uint8)


def image_grid(
    images: Sequence[np.ndarray],
    captions: Sequence[str],
    path: str | Path,
    title: str,
    colours: Sequence[str] | None = None,
    heatmaps: Sequence[np.ndarray] | None = None,
) -> Path:
    """Thumbnails with a caption under each; `heatmaps` (0..1, image-sized) are laid over them."""
    plt = _pyplot()
    n = len(images)
    if n == 0:
        fig, ax = plt.subplots(figsize=(6, 2), dpi=100)
        ax.axis("off")
        ax.text(0.5, 0.5, "nothing to show", ha="center", va="center", fontsize=14)
        ax.set_title(title, fontsize=10)
        return _save(fig, path)
    cols = min(n, 8)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.9 * cols, 2.3 * rows + 0.6), dpi=100, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        ax.imshow(_display(images[i]))
        if heatmaps is not None:  # opaque where the network looked, clear elsewhere: the image stays readable
            overlay = plt.get_cmap("jet")(heatmaps[i])
            overlay[..., 3] = 0.75 * heatmaps[i] ** 1.5
            ax.imshow(overlay)
        ax.set_title(captions[i], fontsize=8, color=(colours[i] if colours else "black"))
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return _save(fig, path, palette=True)


def caption(true: str, predicted: str, probability: float) -> str:
    """'true → predicted (p)' on two lines, so long class names stay readable in a thumbnail."""
    return f"{_short(true)}\n→ {_short(predicted)} ({probability:.2f})"


def plot_runs(groups: Sequence[dict], path: str | Path, title: str) -> Path:
    """Accuracy and loss per epoch of several configurations; each line is the mean over its repeats.

    `groups`: dicts with `label` and `histories` (a list of Keras History dicts). The band is
    ± 1 standard deviation over the repeats. Early stopping ends repeats at different epochs:
    past the first stop the mean is over fewer runs, so that stretch is drawn faded.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(13, 5), dpi=100)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    panels = ((axes[0], ACCURACY_KEYS, "accuracy"), (axes[1], ("loss",), "loss"))
    handles = []
    for g, group in enumerate(groups):
        colour = colours[g % len(colours)]
        n = len(group["histories"])
        for ax, keys, _ in panels:
            for prefix, style in (("", "-"), ("val_", "--")):
                curves = [c for c in (_series(h, keys, prefix) for h in group["histories"]) if c is not None]
                if not curves:
                    continue
                mean, std = _mean_band(curves)
                epochs = np.arange(1, len(mean) + 1)
                full = min(len(c) for c in curves)  # every repeat still training up to here
                line = ax.plot(epochs[:full], mean[:full], style, color=colour, marker="o", markersize=3)[0]
                ax.plot(epochs[full - 1 :], mean[full - 1 :], style, color=colour, marker="o", markersize=2, alpha=0.35)
                if len(curves) > 1:
                    ax.fill_between(epochs, mean - std, mean + std, color=colour, alpha=0.15, linewidth=0)
                if ax is axes[0] and not prefix:
                    line.set_label(f"{group['label']} ({n} run{'s' if n > 1 else ''})")
                    handles.append(line)
    for ax, _, name in panels:
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.set_title(f"{name} (solid: train, dashed: validation)", fontsize=10)
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    axes[0].set_ylim(0, 1.02)
    ncol = min(3, max(1, len(handles)))
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=ncol, fontsize=9, frameon=False)
    wrapped = "\n".join(textwrap.wrap(title, 110))
    fig.suptitle(f"{wrapped}\nmean over repeats, band ± 1 std; faded where some repeats had stopped", fontsize=10)
    rows = -(-len(handles) // ncol)
    fig.tight_layout(rect=(0, min(0.4, 0.02 + 0.045 * rows), 1, 1))
    return _save(fig, path)


ACCURACY_KEYS = ("categorical_accuracy", "accuracy", "acc", "sparse_categorical_accuracy")


def _series(history: dict, keys: Sequence[str], prefix: str) -> np.ndarray | None:
    for k in keys:
        if prefix + k in history:
            return np.asarray(history[prefix + k], float)
    return None


def _mean_band(curves: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    length = max(len(c) for c in curves)
    stack = np.full((len(curves), length), np.nan)
    for i, c in enumerate(curves):
        stack[i, : len(c)] = c
    return np.nanmean(stack, axis=0), np.nanstd(stack, axis=0)
