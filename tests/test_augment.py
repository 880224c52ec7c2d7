"""The augmentation mapping: ImageDataGenerator's semantics, measured on images."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st
from keras.src.legacy.preprocessing.image import apply_affine_transform

from fastheads.augment import PRESETS, AugmentSpec, apply_params, augment_image, parse_augment, random_params
from fastheads.errors import UserError


def _params(**kw):
    p = {"theta": 0.0, "tx": 0.0, "ty": 0.0, "shear": 0.0, "zx": 1.0, "zy": 1.0}
    p.update(kw)
    out = {k: tf.constant(float(v)) for k, v in p.items()}
    out["flip_h"] = tf.constant(False)
    out["flip_v"] = tf.constant(False)
    return out


def _image(h=36, w=36, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (h, w, 3)).astype(np.float32)


@pytest.mark.parametrize("fill", ["nearest", "reflect"])
@pytest.mark.parametrize(
    "params",
    [
        {"theta": 10.0, "tx": 3.0, "ty": -5.0, "shear": 20.0, "zx": 0.8, "zy": 1.3},
        {"theta": -33.0},
        {"zx": 1.4, "zy": 0.7},
        {"shear": 0.2},
    ],
)
def test_matches_image_data_generator_transform(fill, params):
    """Our warp equals keras.preprocessing.image.apply_affine_transform (scipy) to float tolerance."""
    img = _image(36, 44)
    ref = apply_affine_transform(img, row_axis=0, col_axis=1, channel_axis=2, fill_mode=fill, **params)
    out = apply_params(tf.constant(img), _params(**params), AugmentSpec(fill_mode=fill)).numpy()
    np.testing.assert_allclose(out, ref, atol=0.01)


@pytest.mark.parametrize("flip", ["flip_h", "flip_v"])
def test_flips_mirror_as_image_data_generator(flip):
    """After the warp, horizontal flip reverses columns and vertical flip rows (ImageDataGenerator's flip_axis)."""
    img = _image(6, 9)
    p = _params()
    p[flip] = tf.constant(True)
    out = apply_params(tf.constant(img), p, AugmentSpec()).numpy()
    np.testing.assert_array_equal(out, img[:, ::-1] if flip == "flip_h" else img[::-1])


def test_rotation_is_in_degrees_of_a_known_pattern():
    """A 90 degree rotation (rotation_range's unit) turns the picture a quarter turn."""
    img = np.zeros((33, 33, 3), np.float32)
    img[2:10, 14:19] = 255.0  # a bar at the top
    out = apply_params(tf.constant(img), _params(theta=90.0), AugmentSpec()).numpy()
    turned = np.rot90(img, k=1)  # bar moves to the left
    np.testing.assert_allclose(out[1:-1, 1:-1], turned[1:-1, 1:-1], atol=1e-3)


def test_shear_range_is_degrees_not_a_tangent():
    """The notebook's shear_range=0.2 is a 0.2 degree shear: it barely moves any pixel."""
    img = _image(64, 64)
    tiny = apply_params(tf.constant(img), _params(shear=0.2), AugmentSpec()).numpy()
    as_tangent = apply_params(tf.constant(img), _params(shear=np.degrees(np.arctan(0.2))), AugmentSpec()).numpy()
    assert np.abs(tiny - img).mean() < 0.1 * np.abs(as_tangent - img).mean()


def test_zoom_above_one_zooms_out_with_nearest_fill():
    img = np.zeros((40, 40, 3), np.float32)
    img[15:25, 15:25] = 255.0
    out = apply_params(tf.constant(img), _params(zx=2.0, zy=2.0), AugmentSpec()).numpy()
    assert (out > 128).sum() < (img > 128).sum() / 2  # the square got smaller
    edge = np.zeros((40, 40, 3), np.float32)
    edge[:, :4] = 200.0  # a bright left edge is repeated outwards by "nearest"
    out = apply_params(tf.constant(edge), _params(zx=2.0, zy=2.0), AugmentSpec()).numpy()
    assert out[:, 0].mean() == pytest.approx(200.0, abs=1.0)


def test_random_params_follow_the_ranges():
    spec = PRESETS["tp"]
    draws = [random_params(spec, tf.constant([s, 1], tf.int64), 224, 224) for s in range(400)]
    theta = np.array([float(d["theta"]) for d in draws])
    zx = np.array([float(d["zx"]) for d in draws])
    zy = np.array([float(d["zy"]) for d in draws])
    tx = np.array([float(d["tx"]) for d in draws])
    flips = np.array([bool(d["flip_h"]) for d in draws])
    assert theta.min() >= -10 and theta.max() <= 10 and theta.max() > 8 and theta.min() < -8
    assert zx.min() >= 0.8 and zx.max() <= 1.4 and zx.max() > 1.3 and zx.min() < 0.85
    assert abs(np.corrcoef(zx, zy)[0, 1]) < 0.2  # drawn independently
    assert np.abs(tx).max() <= 0.1 * 224 + 1e-3
    assert 0.4 < flips.mean() < 0.6
    assert not any(bool(d["flip_v"]) for d in draws)


def test_views_are_deterministic_and_distinct():
    img = tf.constant(_image(32, 32))
    spec = PRESETS["tp"]
    a = augment_image(img, spec, 0, 5, 1).numpy()
    b = augment_image(img, spec, 0, 5, 1).numpy()
    c = augment_image(img, spec, 0, 5, 2).numpy()
    d = augment_image(img, spec, 1, 5, 1).numpy()
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).mean() > 1 and np.abs(a - d).mean() > 1


def test_parse_presets_and_pairs():
    assert parse_augment("tp") == PRESETS["tp"]
    assert PRESETS["tp"].shear_range == 0.2 and PRESETS["tp"].zoom_range == (0.8, 1.4)
    assert PRESETS["tp-q7"].zoom_range == (0.5, 1.5) and PRESETS["tp-q7"].rotation_range == 20
    s = parse_augment("rotation_range=10,zoom_range=[0.8,1.4],horizontal_flip=true,width_shift_range=0.1")
    assert s.rotation_range == 10 and s.zoom_range == (0.8, 1.4) and s.horizontal_flip
    assert parse_augment("zoom_range=0.5").zoom_range == (0.5, 1.5)  # ImageDataGenerator's scalar meaning
    assert parse_augment("none").is_identity


@pytest.mark.parametrize(
    "text,match",
    [
        ("rotation_range=400", "0..180"),
        ("zoom_range=[1.4,0.8]", "lower <= upper"),
        ("brightness=3", "unknown key"),
        ("width_shift_range=2", r"\[0, 1\)"),
        ("horizontal_flip=maybe", "true or false"),
        ("rotation_range=ten", "must be a number"),
        ("fancy", "neither a preset"),
    ],
)
def test_parse_rejects_bad_specs(text, match):
    with pytest.raises(UserError, match=match):
        parse_augment(text)


@settings(max_examples=60, deadline=None)
@given(
    st.text(alphabet="rotation_zoomwidthshift=[],.0123456789-etrufalsn", max_size=40),
)
def test_parse_never_crashes(text):
    """Any text is either a valid spec or a UserError, never another exception."""
    try:
        spec = parse_augment(text)
    except UserError:
        return
    assert 0 <= spec.rotation_range <= 180 and 0 < spec.zoom_range[0] <= spec.zoom_range[1]


def test_image_dataset_keeps_pair_order_without_autotuning():
    """The pipeline's batches are the pairs in order, each view as augment_image draws it; autotuning stays off
    (with it on, deleting an exhausted iterator stalled for seconds; see pipeline.image_dataset)."""
    from fastheads.pipeline import image_dataset
    from fastheads.preprocess import caffe_preprocess

    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (5, 16, 16, 3)).astype(np.float32)
    pairs = np.array([(3, 0), (1, 2), (4, 1), (0, 3), (2, 0), (3, 5), (1, 1)], np.int64)
    spec = PRESETS["tp"]
    ds = image_dataset(images, pairs, spec, aug_seed=7, batch=3)
    assert ds.options().autotune.enabled is False
    got = np.concatenate([b.numpy() for b in ds])
    want = [
        caffe_preprocess(
            augment_image(tf.constant(images[i]), spec, 7, tf.constant(i), tf.constant(v)) if v else images[i]
        )
        for i, v in pairs
    ]
    np.testing.assert_array_equal(got, np.stack([np.asarray(w) for w in want]))
