"""Shared fixtures: tiny generated data in the course's layouts, random VGG16 weights at 32x32.

Nothing here reads ../shared: a fresh clone has no such folder.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

from pathlib import Path

import h5py
import numpy as np
import pytest

from fastheads.demo import make_demo_images

SIZE = 32  # the smallest input VGG16 accepts: the pipeline is the same, the cost 1/49th


@pytest.fixture(scope="session")
def tiny_images() -> tuple[np.ndarray, np.ndarray]:
    """4 classes x 6 images of 40x40 (resized to 32 by the pipeline), uint8."""
    images, labels = make_demo_images(per_class=6, size=40, seed=1)
    keep = labels < 4
    return images[keep], labels[keep]


@pytest.fixture(scope="session")
def tiny_h5(tmp_path_factory, tiny_images) -> Path:
    images, labels = tiny_images
    path = tmp_path_factory.mktemp("data") / "tiny.h5"
    with h5py.File(path, "w") as f:
        f["images"] = images.astype(np.float32)  # like 10FlowerColorImages.h5
        f["labels"] = labels
    return path


@pytest.fixture(scope="session")
def tiny_classes(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "classes.txt"
    path.write_text("phlox\nrose\ncalendula\niris\n")
    return path


def write_keras2_weights(model, path: Path, include_top: bool = True) -> None:
    """A weights file laid out like the course's Keras 2 era vgg16_weights.h5."""
    names = [layer.name for layer in model.layers if layer.weights]
    if not include_top:
        names = [n for n in names if n.startswith("block")]
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([n.encode() for n in names])
        for name in names:
            g = f.create_group(name)
            kernel, bias = model.get_layer(name).get_weights()
            wn = [f"{name}_W_1:0".encode(), f"{name}_b_1:0".encode()]
            g.attrs["weight_names"] = np.array(wn)
            g[wn[0].decode()] = kernel
            g[wn[1].decode()] = bias


@pytest.fixture(scope="session")
def keras2_weights(tmp_path_factory) -> Path:
    from fastheads.backbone import build_vgg16, load_weights

    vgg = build_vgg16(SIZE)
    load_weights(vgg, "none", need_top=True, seed=7)
    path = tmp_path_factory.mktemp("weights") / "vgg16_weights.h5"
    write_keras2_weights(vgg, path)
    return path
