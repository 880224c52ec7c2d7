"""VGG16 with keras.applications' layer names, its weights, and the frozen part as one fast function.

The layer names (block1_conv1 ... block5_pool, flatten, fc1, fc2, predictions) are the
contract with every weight file the course hands out, so we never rename them.

The frozen part up to the cut (block5_pool, or block4_pool for the v2 network) is the seam
of the whole tool: its output is what the feature cache stores, and it is the only place
that needs speed. `frozen_fn` turns it into a plain tf.function over constant weights,
under a chosen precision and optionally XLA-compiled.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fastheads.errors import UserError

CONV_LAYERS = [
    "block1_conv1", "block1_conv2", "block1_pool",
    "block2_conv1", "block2_conv2", "block2_pool",
    "block3_conv1", "block3_conv2", "block3_conv3", "block3_pool",
    "block4_conv1", "block4_conv2", "block4_conv3", "block4_pool",
    "block5_conv1", "block5_conv2", "block5_conv3", "block5_pool",
]  # fmt: skip
TOP_LAYERS = ["fc1", "fc2", "predictions"]


@dataclass(frozen=True)
class ModelDefaults:
    """timm-style default config of the one backbone we support."""

    name: str = "vgg16"
    input_size: int = 224
    preprocessing: str = "caffe"  # RGB->BGR, minus ImageNet means
    interpolation: str = "bilinear-antialias"


VGG16_DEFAULTS = ModelDefaults()


def cut_layer(arch: str) -> str:
    """Deepest frozen layer of each architecture: where features are cached."""
    if arch == "v2":
        return "block4_pool"
    if arch == "vgg16":
        return "block5_pool"
    raise UserError(f"--arch must be vgg16 or v2, got {arch!r}.")


def build_vgg16(image_size: int = 224):
    """The full VGG16 (with top, 1000 classes), random weights, keras.applications' names."""
    import keras

    if image_size < 32 or image_size % 32:
        raise UserError(f"--image-size must be a multiple of 32 and at least 32, got {image_size}.")
    return keras.applications.VGG16(
        weights=None, include_top=True, input_shape=(image_size, image_size, 3), classes=1000
    )


def load_weights(model, weights: str, need_top: bool, seed: int = 0) -> str:
    """Fill `model` from `weights`; return a one-line description of what was loaded."""
    if weights == "none":
        _random_he_init(model, seed)
        return "RANDOM weights (--weights none): a pipeline check, not a trained network"
    if weights == "imagenet":
        return _load_imagenet(model)
    path = Path(weights)
    if not path.is_file():
        raise UserError(f"--weights {weights}: file not found (use imagenet, none, or a path to an .h5 file).")
    if path.name.endswith(".weights.h5"):
        try:
            model.load_weights(str(path))
        except Exception as e:  # Keras raises ValueError/KeyError on mismatch
            raise UserError(f"{path}: does not fit VGG16 with top ({str(e).splitlines()[0][:160]}).") from e
        return f"Keras 3 weights from {path}"
    return _load_keras2_h5(model, path, need_top)


def _random_he_init(model, seed: int) -> None:
    """He-uniform kernels, zero biases: random features that keep their scale through 16 ReLU layers.

    (Keras' default glorot init shrinks activations layer by layer until the head sees
    almost nothing, which would make every random-weight test and demo a flat line.)
    """
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if not layer.weights:
            continue
        kernel, bias = layer.get_weights()
        fan_in = int(np.prod(kernel.shape[:-1]))
        limit = np.sqrt(6.0 / fan_in) / (64.0 if layer.name == "block1_conv1" else 1.0)  # pixels are ~±64
        k = rng.random(kernel.shape, dtype=np.float32)  # He-uniform; float32 draws are 4x faster than normals
        k = (k - np.float32(0.5)) * np.float32(2 * limit)
        layer.set_weights([k, np.zeros_like(bias)])


def _load_imagenet(model) -> str:
    import keras

    if model.input_shape[1] != 224:
        raise UserError("--weights imagenet needs --image-size 224 (the size VGG16 was trained at).")
    try:
        ref = keras.applications.VGG16(weights="imagenet", include_top=True)
    except Exception as e:
        raise UserError(
            "--weights imagenet: could not download the ImageNet weights "
            f"({e.__class__.__name__}); offline, pass the course's file instead: --weights path/to/vgg16_weights.h5"
        ) from e
    model.set_weights(ref.get_weights())
    return "ImageNet weights (keras.applications download)"


def _weight_order(name: str) -> tuple[int, str]:
    # Keras 2 names: block1_conv1_W_1:0 / block1_conv1_b_1:0, or kernel:0 / bias:0.
    base = name.split("/")[-1]
    return (0 if re.search(r"(_W|kernel)", base) else 1, base)


def _load_keras2_h5(model, path: Path, need_top: bool) -> str:
    """Keras 2 era weights (layer groups + `weight_names` attributes), as the course ships."""
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise UserError(f"{path}: not a readable HDF5 weights file ({e.__class__.__name__}).") from e
    with f:
        root = f["model_weights"] if "model_weights" in f else f
        groups = set(root.keys())
        wanted = [n for n in CONV_LAYERS if not n.endswith("pool")]
        missing_conv = [n for n in wanted if n not in groups]
        if missing_conv:
            raise UserError(
                f"{path}: not VGG16 weights: no layer {missing_conv[0]!r} "
                f"(the file has {', '.join(sorted(groups)[:6])}{'...' if len(groups) > 6 else ''})."
            )
        has_top = all(n in groups for n in ("fc1", "fc2"))
        if need_top and not has_top:
            raise UserError(
                f"{path}: has no top (fc1, fc2): it is an include_top=False file; "
                "--train-layers needs the full VGG16 weights, or use --arch v2 which needs only the convolutions."
            )
        names = wanted + (TOP_LAYERS if has_top else [])
        for lname in names:
            if lname not in groups:
                continue  # 'predictions' may be absent; it is replaced anyway
            g = root[lname]
            wnames = [n.decode() if isinstance(n, bytes) else n for n in g.attrs.get("weight_names", [])]
            if not wnames:
                wnames = []
                g.visititems(lambda n, obj, acc=wnames: acc.append(n) if isinstance(obj, h5py.Dataset) else None)
            wnames = sorted(wnames, key=_weight_order)
            try:
                arrays = [np.asarray(g[n][()]) for n in wnames]
            except (KeyError, OSError) as e:
                raise UserError(f"{path}: layer {lname} cannot be read ({e}); the file may be truncated.") from e
            layer = model.get_layer(lname)
            expected = [tuple(w.shape) for w in layer.weights]
            got = [a.shape for a in arrays]
            if got != expected:
                if lname == "predictions":
                    continue  # a different number of classes: the new head replaces it anyway
                raise UserError(
                    f"{path}: layer {lname} has weights of shape {got}, VGG16 at "
                    f"{model.input_shape[1]}x{model.input_shape[1]} expects {expected}."
                )
            layer.set_weights(arrays)
    return f"Keras 2 weights from {path}" + ("" if has_top else " (no top)")


# --------------------------------------------------------------------------- the frozen function


def resolve_precision(precision: str) -> str:
    """`auto`: bf16 where the hardware has native bf16 math (AVX512-BF16/AMX CPUs, Ampere+ GPUs)."""
    if precision not in ("auto", "fp32", "bf16", "fp16"):
        raise UserError(f"--precision must be auto, fp32, bf16 or fp16, got {precision!r}.")
    if precision != "auto":
        return precision
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        cc = tf.config.experimental.get_device_details(gpus[0]).get("compute_capability", (0, 0))
        return "bf16" if cc >= (8, 0) else "fp16"
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "fp32"
    return "bf16" if re.search(r"\b(avx512_bf16|amx_bf16)\b", flags) else "fp32"


def resolve_xla(xla: str) -> bool:
    """`auto`: on for GPUs; off on CPUs, where oneDNN without XLA measured faster (see bench/)."""
    if xla not in ("auto", "on", "off"):
        raise UserError(f"--xla must be auto, on or off, got {xla!r}.")
    if xla != "auto":
        return xla == "on"
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def frozen_fn(model, cut: str, precision: str = "fp32", xla: bool = False, strategy=None):
    """images (caffe-preprocessed, float32) -> features at `cut` (float32), as a tf.function.

    With a tf.distribute `strategy` of several replicas the weights become mirrored
    variables (one copy per device, not one host constant copied at every call) and the
    function splits each batch across the replicas (see distribute.py).
    """
    import tensorflow as tf

    spread = strategy is not None and strategy.num_replicas_in_sync > 1
    dtype = {"fp32": tf.float32, "bf16": tf.bfloat16, "fp16": tf.float16}[precision]
    layers = CONV_LAYERS[: CONV_LAYERS.index(cut) + 1]
    params = []
    for name in layers:
        if name.endswith("pool"):
            params.append(None)
        else:
            k, b = model.get_layer(name).get_weights()
            if spread:
                with strategy.scope():
                    params.append(tuple(tf.Variable(tf.constant(w, dtype), trainable=False) for w in (k, b)))
            else:
                params.append((tf.constant(k, dtype), tf.constant(b, dtype)))

    def forward(x):
        x = tf.cast(x, dtype)
        for p in params:
            if p is None:
                x = tf.nn.max_pool2d(x, 2, 2, "VALID")
            else:
                x = tf.nn.relu(tf.nn.bias_add(tf.nn.conv2d(x, p[0], 1, "SAME"), p[1]))
        return tf.cast(x, tf.float32)

    fn = tf.function(forward, jit_compile=xla, reduce_retracing=True)
    if not spread:
        return fn
    from fastheads.distribute import replicated_fn

    return replicated_fn(fn, strategy)


@dataclass
class Backbone:
    """The loaded VGG16, its frozen function, and how it was set up (for run.json and the cache key)."""

    vgg: object
    base_fn: Callable
    weights_desc: str
    precision: str
    xla: bool
    pristine_top: dict  # fc1/fc2 weights as loaded, restored before a run if an earlier one trained them
    strategy: object = None  # the tf.distribute.Strategy the base runs under (heads are built in its scope)
    strategy_desc: str = "default x1"
    trained_top: set[str] = field(default_factory=set)  # fc layers of `vgg` a run has trained since loading


def prepare(weights: str, arch: str, image_size: int, precision: str, xla: str, strategy: str = "default") -> Backbone:
    """Build VGG16, load its weights (random ones always from seed 0), compile the frozen part.

    `strategy` (see distribute.py) spreads the frozen part over several devices.

    Memoised per process on the weights file's identity (path, size, mtime): a notebook or
    `fastheads tp` training many heads pays for building the 138M-parameter network once.
    Its frozen layers never change; the fc layers a run trains are restored from `pristine_top` before the next one.
    """
    stamp = ""
    if weights not in ("none", "imagenet") and Path(weights).is_file():
        st = Path(weights).stat()
        stamp = f"{Path(weights).resolve()}|{st.st_size}|{st.st_mtime_ns}"
    return _prepare(weights, stamp, arch, image_size, precision, xla, strategy)


@functools.lru_cache(maxsize=2)
def _prepare(weights: str, stamp: str, arch: str, image_size: int, precision: str, xla: str,
             strategy: str = "default") -> Backbone:  # fmt: skip
    from fastheads.distribute import resolve_strategy, strategy_name

    dist = resolve_strategy(strategy)  # first: MultiWorker/TPU set-up wants to come before other TF work
    vgg = build_vgg16(image_size)
    desc = load_weights(vgg, weights, need_top=arch == "vgg16", seed=0)
    prec, use_xla = resolve_precision(precision), resolve_xla(xla)
    fn = frozen_fn(vgg, cut_layer(arch), prec, use_xla, dist)
    pristine = {n: vgg.get_layer(n).get_weights() for n in ("fc1", "fc2")}
    return Backbone(vgg, fn, desc, prec, use_xla, pristine, dist, strategy_name(dist))
