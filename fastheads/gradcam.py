"""Grad-CAM: where in the image the network found the evidence for its prediction.

The heatmap is the last convolutional layer's activations weighted by the gradient of the
class score (Selvaraju et al., 2017). The score is the predicted class's *logit*, recovered
from the final softmax Dense layer, because the gradient of a saturated probability (0.999)
vanishes and would give blank maps exactly for the confident predictions; a model without
such a layer falls back to the log-probability, whose gradient does not vanish either.

Works on any Keras model with the course's contract, not only ours: a flat functional or
Sequential model (the course notebook's and fastheads' own), or a chain whose convolutional
base is one nested model (`Sequential([vgg_base, Flatten(), Dense(...)])`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from fastheads.errors import UserError


def _conv_layers(model) -> list[tuple]:
    """Every Conv2D in graph order, nested models included, each as its path: (outer..., layer)."""
    import keras

    found: list[tuple] = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            found += [(layer, *rest) for rest in _conv_layers(layer)]
        elif isinstance(layer, keras.layers.Conv2D):
            found.append((layer,))
    return found


def find_last_conv(model, name: str | None = None) -> tuple:
    """The layer Grad-CAM looks at: `name` if given, else the last Conv2D (block5_conv3, or block4_conv3 for v2).

    Returns the path to it: (layer,) at the top level, (nested_model, ..., layer) inside one.
    """
    convs = _conv_layers(model)
    if name is not None:
        convs = [p for p in convs if p[-1].name == name]
        if not convs:
            raise UserError(f"Grad-CAM: the model has no convolutional layer named {name!r}.")
    if not convs:
        raise UserError("Grad-CAM: the model has no 2-D convolutional layer to look at.")
    return convs[-1]


def _is_softmax_dense(layer) -> bool:
    import keras

    return isinstance(layer, keras.layers.Dense) and getattr(layer.activation, "__name__", "") == "softmax"


def _forward_fn(model, path: tuple) -> Callable:
    """x -> (conv activations, input of the last layer or the output): the two tensors Grad-CAM needs.

    A conv layer in the model's own graph: one sub-model. Otherwise (a nested base, or layers
    shared with another model, whose `.output` is ambiguous) the layers are run as a chain.
    """
    import keras

    last = model.layers[-1]
    use_logits = _is_softmax_dense(last)
    if len(path) == 1:
        try:
            head_out = last.input if use_logits else model.outputs[0]
            sub = keras.Model(model.inputs, [path[0].output, head_out])
            return lambda x: tuple(sub(x, training=False))
        except (ValueError, AttributeError):
            pass
    chain = [la for la in model.layers if not isinstance(la, keras.layers.InputLayer)]
    return lambda x: _run_chain(chain[:-1] if use_logits else chain, x, path)


def _run_chain(layers: list, x, path: tuple):
    """Apply `layers` in order, keeping the activation of path[-1] (descending into nested models)."""
    import keras

    act = None
    for layer in layers:
        if layer is path[0] and len(path) > 1:
            inner = [la for la in layer.layers if not isinstance(la, keras.layers.InputLayer)]
            act, x = _run_chain(inner, x, path[1:])
        else:
            x = layer(x, training=False)
            if layer is path[0]:
                act = x
    if act is None:
        raise UserError(f"Grad-CAM: could not reach layer {path[-1].name} by running the model's layers in order.")
    return act, x


def gradcam(model, x, classes: np.ndarray | None = None, layer: str | None = None, batch_size: int = 16) -> np.ndarray:
    """Heatmaps (N, h, w) in 0..1 at the conv layer's resolution, for preprocessed images `x`.

    `classes`: the class to explain per image (default: the predicted one).
    """
    import tensorflow as tf

    path = find_last_conv(model, layer)
    forward = _forward_fn(model, path)
    last = model.layers[-1]
    use_logits = _is_softmax_dense(last)
    _check_chain(model, forward, x[:2], use_logits)
    maps = []
    for start in range(0, len(x), batch_size):
        xb = tf.convert_to_tensor(x[start : start + batch_size], tf.float32)
        with tf.GradientTape() as tape:
            tape.watch(xb)  # frozen layers' weights are not watched by default: record from the input on
            act, y = forward(xb)
            scores = _logits(last, y) if use_logits else tf.math.log(y + 1e-12)
            cls = tf.argmax(scores, axis=-1) if classes is None else tf.constant(classes[start : start + batch_size])
            # images are independent at inference, so one gradient of the sum gives each image's own
            target = tf.reduce_sum(tf.gather(scores, cls, axis=1, batch_dims=1))
        grads = tape.gradient(target, act)
        weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
        cam = tf.nn.relu(tf.reduce_sum(weights * act, axis=-1)).numpy()
        peak = cam.max(axis=(1, 2), keepdims=True)
        maps.append(np.where(peak > 0, cam / np.maximum(peak, 1e-12), 0.0).astype(np.float32))
    return np.concatenate(maps)


def _logits(dense, y):
    import tensorflow as tf

    z = tf.matmul(y, tf.cast(dense.kernel, y.dtype))
    return z + tf.cast(dense.bias, y.dtype) if dense.use_bias else z


def _check_chain(model, forward: Callable, x, use_logits: bool) -> None:
    """Rebuilding a nested model as a chain must give the model's own output; say so if not."""
    import tensorflow as tf

    _, y = forward(tf.convert_to_tensor(x, tf.float32))
    last = model.layers[-1]
    probs = tf.nn.softmax(_logits(last, y)) if use_logits else y
    ref = model(tf.convert_to_tensor(x, tf.float32), training=False)
    if not np.allclose(np.asarray(probs), np.asarray(ref), atol=1e-4):
        raise UserError("Grad-CAM: this model's layers do not form a simple chain; cannot locate its conv layer.")


def upsample(cam: np.ndarray, height: int, width: int) -> np.ndarray:
    """One heatmap resized (bilinear) to an image's size, still 0..1."""
    import tensorflow as tf

    r = tf.image.resize(cam[..., None], (height, width), method="bilinear").numpy()[..., 0]
    return np.clip(r, 0.0, 1.0)
