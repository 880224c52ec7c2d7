"""Data augmentation in ImageDataGenerator's vocabulary and with its semantics.

The course's questions are phrased in `ImageDataGenerator` arguments, whose meaning differs
from Keras 3's preprocessing layers: rotation is in degrees, shear is an angle in DEGREES
(the notebook's 0.2 is a 0.2 degree shear), x and y zoom are drawn independently and a
factor > 1 zooms out, and the default fill is `nearest`. So we rebuild the TF 2.x
ImageDataGenerator's affine matrix (the one Colab ran, still in Keras 3 as
`keras.preprocessing.image.apply_affine_transform`) and apply it with one
`ImageProjectiveTransformV3` (bilinear, like its `order=1`). Its quirks are kept on
purpose: the matrix is in (x=col, y=row) coordinates, so `tx` (drawn from
height_shift_range times the number of rows) moves the image sideways and `zx` scales
columns; on the course's square images this only swaps which range drives which axis.

Randomness is stateless: the parameters for image i, view v come from
`stateless_fold_in(seed, i, v)`. The same (seed, image, view) always gives the same
picture, which is what lets a cache of augmented views equal the on-the-fly pipeline.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, replace

from fastheads.errors import UserError

FILL_MODES = ("nearest", "constant", "reflect", "wrap")


@dataclass(frozen=True)
class AugmentSpec:
    """ImageDataGenerator's augmentation arguments (the subset the course uses, plus flips/fill)."""

    rotation_range: float = 0.0  # degrees, uniform in [-r, r]
    width_shift_range: float = 0.0  # fraction of the width, uniform in [-s, s]
    height_shift_range: float = 0.0  # fraction of the height
    shear_range: float = 0.0  # DEGREES (ImageDataGenerator's unit), uniform in [-s, s]
    zoom_range: tuple[float, float] = (1.0, 1.0)  # x and y drawn independently; > 1 zooms out
    horizontal_flip: bool = False  # 50 % chance
    vertical_flip: bool = False
    fill_mode: str = "nearest"
    cval: float = 0.0

    @property
    def is_identity(self) -> bool:
        return self == replace(AugmentSpec(), fill_mode=self.fill_mode, cval=self.cval)

    @classmethod
    def from_dict(cls, d: dict) -> AugmentSpec:
        """The inverse of `asdict` (and of `canonical` after json.loads): JSON has lists, not tuples."""
        return cls(**{**d, "zoom_range": tuple(d.get("zoom_range", (1.0, 1.0)))})

    def canonical(self) -> str:
        """A stable text form: part of the feature-cache key."""
        return json.dumps(asdict(self), sort_keys=True)

    def describe(self) -> str:
        if self.is_identity:
            return "none"
        d = AugmentSpec()
        parts = []
        for k, v in asdict(self).items():
            if v != getattr(d, k):
                parts.append(f"{k}={list(v) if isinstance(v, tuple) else v}")
        return ",".join(parts)


PRESETS: dict[str, AugmentSpec] = {
    # The course notebook's ImageDataGenerator.
    "tp": AugmentSpec(
        rotation_range=10,
        width_shift_range=0.1,
        height_shift_range=0.1,
        shear_range=0.2,
        zoom_range=(0.8, 1.4),
        horizontal_flip=True,
    ),
    # The alternative values of question 7.
    "tp-q7": AugmentSpec(
        rotation_range=20,
        width_shift_range=0.1,
        height_shift_range=0.1,
        shear_range=0.0,
        zoom_range=(0.5, 1.5),
        horizontal_flip=True,
    ),
    "none": AugmentSpec(),
}

_FIELDS = {f for f in AugmentSpec.__dataclass_fields__}


def _parse_value(key: str, raw: str):
    raw = raw.strip()
    if key in ("horizontal_flip", "vertical_flip"):
        if raw.lower() in ("true", "1", "yes"):
            return True
        if raw.lower() in ("false", "0", "no"):
            return False
        raise UserError(f"--augment: {key} must be true or false, got {raw!r}.")
    if key == "fill_mode":
        if raw not in FILL_MODES:
            raise UserError(f"--augment: fill_mode must be one of {', '.join(FILL_MODES)}, got {raw!r}.")
        return raw
    if key == "zoom_range" and raw.startswith("["):
        items = [s for s in raw.strip("[]").split(",") if s.strip()]
        if len(items) != 2:
            raise UserError(f"--augment: zoom_range must be a number or [lower,upper], got {raw!r}.")
        lo, hi = (_number(key, s) for s in items)
        return (lo, hi)
    return _number(key, raw)


def _number(key: str, raw: str) -> float:
    try:
        v = float(raw)
    except ValueError:
        raise UserError(f"--augment: {key} must be a number, got {raw!r}.") from None
    if not math.isfinite(v):
        raise UserError(f"--augment: {key} must be finite, got {raw!r}.")
    return v


def validate(spec: AugmentSpec) -> AugmentSpec:
    """Reject values ImageDataGenerator would take but that make no sense (or crash later)."""
    if not 0 <= spec.rotation_range <= 180:
        raise UserError(f"--augment: rotation_range is in degrees and must be in 0..180, got {spec.rotation_range:g}.")
    for k in ("width_shift_range", "height_shift_range"):
        v = getattr(spec, k)
        if not 0 <= v < 1:
            raise UserError(f"--augment: {k} is a fraction of the image and must be in [0, 1), got {v:g}.")
    if not 0 <= spec.shear_range < 90:
        raise UserError(f"--augment: shear_range is in degrees and must be in [0, 90), got {spec.shear_range:g}.")
    lo, hi = spec.zoom_range
    if not (0 < lo <= hi):
        raise UserError(f"--augment: zoom_range must satisfy 0 < lower <= upper, got [{lo:g}, {hi:g}].")
    if spec.fill_mode not in FILL_MODES:
        raise UserError(f"--augment: fill_mode must be one of {', '.join(FILL_MODES)}, got {spec.fill_mode!r}.")
    return spec


def parse_augment(text: str) -> AugmentSpec:
    """A preset name (`tp`, `tp-q7`, `none`) or `key=value,...` in ImageDataGenerator's names."""
    text = text.strip()
    if text in PRESETS:
        return PRESETS[text]
    if not text:
        raise UserError("--augment: empty; use a preset (tp, tp-q7, none) or key=value pairs.")
    values: dict = {}
    # split on commas that are not inside [...]
    for item in re.split(r",(?![^\[]*\])", text):
        if not item.strip():
            continue
        if "=" not in item:
            raise UserError(f"--augment: {item.strip()!r} is neither a preset ({', '.join(PRESETS)}) nor key=value.")
        key, raw = (s.strip() for s in item.split("=", 1))
        if key not in _FIELDS:
            raise UserError(f"--augment: unknown key {key!r}; known: {', '.join(sorted(_FIELDS))}.")
        values[key] = _parse_value(key, raw)
    if isinstance(values.get("zoom_range"), float):
        z = values["zoom_range"]
        values["zoom_range"] = (1 - z, 1 + z)  # ImageDataGenerator's scalar meaning
    return validate(AugmentSpec(**values))


# --------------------------------------------------------------------------- TensorFlow side


def random_params(spec: AugmentSpec, seed, height: int, width: int) -> dict:
    """Draw one image's transform, as ImageDataGenerator.get_random_transform does.

    `seed` is a stateless seed (int32/int64 tensor of shape [2]). Returns scalars:
    theta, shear (degrees), tx, ty (pixels; tx along rows), zx, zy, flip_h, flip_v.
    """
    import tensorflow as tf

    u = tf.random.stateless_uniform([8], seed=seed, dtype=tf.float32)

    def sym(i, r):
        return (2.0 * u[i] - 1.0) * r

    lo, hi = spec.zoom_range
    return {
        "theta": sym(0, spec.rotation_range),
        "tx": sym(1, spec.height_shift_range) * height,
        "ty": sym(2, spec.width_shift_range) * width,
        "shear": sym(3, spec.shear_range),
        "zx": lo + u[4] * (hi - lo),
        "zy": lo + u[5] * (hi - lo),
        "flip_h": tf.logical_and(spec.horizontal_flip, u[6] < 0.5),
        "flip_v": tf.logical_and(spec.vertical_flip, u[7] < 0.5),
    }


def affine_matrix(p: dict, height: int, width: int):
    """ImageDataGenerator's 3x3 output->input matrix in (x=col, y=row) coordinates."""
    import tensorflow as tf

    theta = p["theta"] * (math.pi / 180.0)
    shear = p["shear"] * (math.pi / 180.0)
    c, s = tf.cos(theta), tf.sin(theta)
    one, zero = tf.ones_like(c), tf.zeros_like(c)

    def m(rows):
        return tf.stack([tf.stack(r) for r in rows])

    rot = m([[c, -s, zero], [s, c, zero], [zero, zero, one]])
    shift = m([[one, zero, p["tx"] * one], [zero, one, p["ty"] * one], [zero, zero, one]])
    shr = m([[one, -tf.sin(shear), zero], [zero, tf.cos(shear), zero], [zero, zero, one]])
    zoom = m([[p["zx"] * one, zero, zero], [zero, p["zy"] * one, zero], [zero, zero, one]])
    t = rot @ shift @ shr @ zoom
    ox, oy = height / 2.0 - 0.5, width / 2.0 - 0.5  # as transform_matrix_offset_center(m, h, w)
    to_c = tf.constant([[1, 0, ox], [0, 1, oy], [0, 0, 1]], tf.float32)
    from_c = tf.constant([[1, 0, -ox], [0, 1, -oy], [0, 0, 1]], tf.float32)
    return to_c @ t @ from_c


def apply_params(image, p: dict, spec: AugmentSpec):
    """Warp one (H, W, 3) float image with drawn parameters, then flip (ImageDataGenerator's order)."""
    import tensorflow as tf

    h, w = int(image.shape[0]), int(image.shape[1])
    mat = affine_matrix(p, h, w)
    # TF maps output (x, y) to input: x_in = a0 x + a1 y + a2 ; y_in = b0 x + b1 y + b2.
    transform = tf.concat([mat[0], mat[1], tf.zeros([2], tf.float32)], axis=0)
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[tf.newaxis],
        transforms=transform[tf.newaxis],
        output_shape=tf.constant([h, w], tf.int32),
        fill_value=tf.constant(spec.cval, tf.float32),
        interpolation="BILINEAR",
        fill_mode=spec.fill_mode.upper(),
    )[0]
    out = tf.cond(p["flip_h"], lambda: tf.reverse(out, [1]), lambda: out)  # not out[:, ::-1]: see caffe_preprocess
    out = tf.cond(p["flip_v"], lambda: tf.reverse(out, [0]), lambda: out)
    return out


def view_seed(seed: int, image_index, view):
    """Stateless seed of (run's augmentation seed, image, view)."""
    import tensorflow as tf

    base = tf.constant([seed & 0x7FFFFFFF, 0x5EED], tf.int64)
    s = tf.random.experimental.stateless_fold_in(base, tf.cast(image_index, tf.int64))
    return tf.random.experimental.stateless_fold_in(s, tf.cast(view, tf.int64))


def augment_image(image, spec: AugmentSpec, seed: int, image_index, view):
    """The augmented view `view` of image `image_index` (identity spec: the image itself)."""
    if spec.is_identity:
        return image
    h, w = int(image.shape[0]), int(image.shape[1])
    p = random_params(spec, view_seed(seed, image_index, view), h, w)
    return apply_params(image, p, spec)
