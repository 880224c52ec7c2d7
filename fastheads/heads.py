"""The trainable part on top of the frozen features, and the full model stitched back together.

Two cuts matter. The *conv cut* (block5_pool, or block4_pool for v2) ends the expensive
frozen convolutions: the feature store holds its outputs, shared by every head. The
*head cut* is the deepest frozen layer of the chosen head: fc2 for `--train-layers 1`, fc1
for 2, the conv cut for 3 and v2. Between the two run the frozen dense layers, which are
cheap per image but not per epoch: with 25088x4096 weights, pushing 210 images through fc1
every epoch cost more than the rest of a cached run together, so they run once per view
(`frozen_dense_fn`) and the head starts at the head cut. Training is the same either way:
frozen layers have no gradient and are deterministic.

The head and the exported full model share layer objects: training the head trains the
full model.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from fastheads.backbone import CONV_LAYERS, cut_layer
from fastheads.errors import UserError


def check_head_args(arch: str, train_layers: int) -> None:
    cut_layer(arch)
    if arch == "vgg16" and train_layers not in (1, 2, 3):
        raise UserError(f"--train-layers must be 1, 2 or 3, got {train_layers}.")


def head_cut(arch: str, train_layers: int) -> str:
    """The deepest frozen layer: where the head's input comes from."""
    if arch == "vgg16" and train_layers in (1, 2):
        return {1: "fc2", 2: "fc1"}[train_layers]
    return cut_layer(arch)


def frozen_dense_layers(arch: str, train_layers: int) -> list[str]:
    """The frozen dense layers between the conv cut and the head cut."""
    return {"fc2": ["flatten", "fc1", "fc2"], "fc1": ["flatten", "fc1"]}.get(head_cut(arch, train_layers), [])


def trained_vgg_layers(arch: str, train_layers: int) -> list[str]:
    """VGG16's own layers that this head trains in place (v2's new layers are new objects)."""
    return {2: ["fc2"], 3: ["fc1", "fc2"]}.get(train_layers, []) if arch == "vgg16" else []


def frozen_dense_fn(top_weights: dict, arch: str, train_layers: int) -> Callable[[np.ndarray], np.ndarray] | None:
    """conv-cut features -> head-cut features (fp32, batched), from the pristine fc weights; None if no layers."""
    names = [n for n in frozen_dense_layers(arch, train_layers) if n != "flatten"]
    if not names:
        return None
    import tensorflow as tf

    params: list = []  # the fc weights as constants, made on first use: a store whose derived views exist never needs them

    @tf.function(reduce_retracing=True)
    def dense(x):
        x = tf.reshape(x, [tf.shape(x)[0], -1])
        for k, b in params:
            x = tf.nn.relu(tf.matmul(x, k) + b)
        return x

    def run(feats: np.ndarray, batch: int = 256) -> np.ndarray:
        if not params:
            params.extend(tuple(tf.constant(w) for w in top_weights[n]) for n in names)
        return np.concatenate([dense(feats[i : i + batch]).numpy() for i in range(0, len(feats), batch)])

    return run


def build_head(vgg, arch: str, train_layers: int, n_classes: int, seed: int):
    """A Keras model: features at the head cut -> class probabilities.

    vgg16, train_layers=1: new predictions on fc2's output; 2: fc2 (pretrained, trainable)
    + new predictions on fc1's output; 3: flatten + fc1 + fc2 (trainable) + new predictions.
    v2: flatten(block4_pool) -> new Dense(4096) -> new Dense(4096) -> new predictions.
    """
    import keras

    check_head_args(arch, train_layers)
    if n_classes < 2:
        raise UserError(f"need at least 2 classes, got {n_classes}.")
    cut = head_cut(arch, train_layers)
    feat_shape = tuple(vgg.get_layer(cut).output.shape[1:])
    keras.utils.set_random_seed(seed)  # the new layers' initial weights
    inp = keras.Input(feat_shape, name=f"{cut}_features")
    if arch == "vgg16":
        fc1, fc2 = vgg.get_layer("fc1"), vgg.get_layer("fc2")
        fc1.trainable = train_layers >= 3
        fc2.trainable = train_layers >= 2
        layers = {1: [], 2: [fc2], 3: [vgg.get_layer("flatten"), fc1, fc2]}[train_layers]
    else:
        layers = [
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(4096, activation="relu", name="fc1"),
            keras.layers.Dense(4096, activation="relu", name="fc2"),
        ]
    layers.append(keras.layers.Dense(n_classes, activation="softmax", name="predictions"))
    x = inp
    for layer in layers:
        x = layer(x)
    return keras.Model(inp, x, name=f"head_{arch}_{train_layers}")


def stitch_full_model(vgg, head, arch: str, train_layers: int = 3):
    """224x224x3 caffe-preprocessed image -> probabilities, only built-in layers, frozen base.

    This is what `model.keras` holds: the course's test notebook loads it with plain
    `keras.models.load_model` and predicts after its own caffe preprocessing.
    """
    import keras

    cut = cut_layer(arch)
    inp = keras.Input(vgg.input_shape[1:], name="input_layer")
    x = inp
    frozen = CONV_LAYERS[: CONV_LAYERS.index(cut) + 1] + frozen_dense_layers(arch, train_layers)
    for name in frozen:
        layer = vgg.get_layer(name)
        layer.trainable = False
        x = layer(x)
    for layer in head.layers[1:]:
        x = layer(x)
    return keras.Model(inp, x, name=f"vgg16_{arch}_retrained")
