"""The trainable part on top of the frozen features, and the full model stitched back together.

The head takes the features at the cut (block5_pool or block4_pool) as its input, so it
trains identically on features computed on the fly or read from the feature store. The
head and the exported full model share the same layer objects: training the head trains
the full model.
"""

from __future__ import annotations

from fastheads.backbone import CONV_LAYERS, cut_layer
from fastheads.errors import UserError


def check_head_args(arch: str, train_layers: int) -> None:
    cut_layer(arch)
    if arch == "vgg16" and train_layers not in (1, 2, 3):
        raise UserError(f"--train-layers must be 1, 2 or 3, got {train_layers}.")


def build_head(vgg, arch: str, train_layers: int, n_classes: int, seed: int):
    """A Keras model: features at the cut -> class probabilities.

    vgg16, train_layers=1: flatten -> fc1 (frozen) -> fc2 (frozen) -> new predictions.
    train_layers=2 makes fc2 trainable (from its pretrained weights); 3 adds fc1.
    v2: flatten(block4_pool) -> new Dense(4096) -> new Dense(4096) -> new predictions.
    """
    import keras

    check_head_args(arch, train_layers)
    if n_classes < 2:
        raise UserError(f"need at least 2 classes, got {n_classes}.")
    cut = cut_layer(arch)
    feat_shape = tuple(vgg.get_layer(cut).output.shape[1:])
    keras.utils.set_random_seed(seed)  # the new layers' initial weights
    inp = keras.Input(feat_shape, name=f"{cut}_features")
    if arch == "vgg16":
        fc1, fc2 = vgg.get_layer("fc1"), vgg.get_layer("fc2")
        fc1.trainable = train_layers >= 3
        fc2.trainable = train_layers >= 2
        layers = [vgg.get_layer("flatten"), fc1, fc2]
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


def stitch_full_model(vgg, head, arch: str):
    """224x224x3 caffe-preprocessed image -> probabilities, only built-in layers, frozen base.

    This is what `model.keras` holds: the course's test notebook loads it with plain
    `keras.models.load_model` and predicts after its own caffe preprocessing.
    """
    import keras

    cut = cut_layer(arch)
    inp = keras.Input(vgg.input_shape[1:], name="input_layer")
    x = inp
    for name in CONV_LAYERS[: CONV_LAYERS.index(cut) + 1]:
        layer = vgg.get_layer(name)
        layer.trainable = False
        x = layer(x)
    for layer in head.layers[1:]:
        x = layer(x)
    return keras.Model(inp, x, name=f"vgg16_{arch}_retrained")
