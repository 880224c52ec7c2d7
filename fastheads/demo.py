"""A built-in, procedurally drawn 10-class "flower" set, so `fastheads demo` runs offline anywhere.

Class c is a rose curve with 3 + c % 5 petals in one of two colours, drawn with a random
rotation, size, position and background. It exercises the real pipeline; with random
VGG16 weights its accuracy says nothing about transfer learning.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

DEMO_CLASSES = [f"{p}-petal {c}" for c in ("magenta", "yellow") for p in range(3, 8)]


def make_demo_images(per_class: int = 10, size: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (N, size, size, 3) and int64 labels, N = 10 * per_class."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    images, labels = [], []
    colours = [np.array([220, 40, 180]), np.array([240, 210, 30])]
    for c in range(10):
        petals, colour = 3 + c % 5, colours[c // 5]
        for _ in range(per_class):
            cx, cy = rng.uniform(-0.1, 0.1, 2)
            r = np.hypot(xx - cx, yy - cy)
            th = np.arctan2(yy - cy, xx - cx) + rng.uniform(0, 2 * np.pi)
            radius = rng.uniform(0.28, 0.42) * np.abs(np.cos(petals * th / 2)) ** 0.8
            bg = rng.uniform(40, 120, 3) * np.array([0.6, 1.0, 0.6])  # greenish background
            img = np.broadcast_to(bg, (size, size, 3)).copy()
            img[r < radius] = colour * rng.uniform(0.8, 1.0)
            img[r < 0.06] = (250, 200, 40) if c < 5 else (120, 60, 20)  # the centre
            img += rng.normal(0, 8, img.shape)
            images.append(np.clip(img, 0, 255).astype(np.uint8))
            labels.append(c)
    return np.stack(images), np.array(labels, np.int64)


def write_demo_files(folder: str | Path, per_class: int = 10, size: int = 64) -> tuple[Path, Path]:
    """Write the demo set in the course's layout: an .h5 (images, labels) and a class-names file."""
    import h5py

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    images, labels = make_demo_images(per_class, size)
    h5 = folder / "demo_flowers.h5"
    with h5py.File(h5, "w") as f:
        f["images"] = images.astype(np.float32)  # float32 0..255, like 10FlowerColorImages.h5
        f["labels"] = labels
    classes = folder / "demo_classes.txt"
    classes.write_text("\n".join(DEMO_CLASSES) + "\n")
    return h5, classes
