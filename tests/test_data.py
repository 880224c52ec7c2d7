"""Loaders: both layouts, float32 and uint8, RGBA PNGs, odd sizes, course folders, bad files."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from PIL import Image

from fastheads.data import find_course_files, load_class_names, load_folder, load_h5, load_images
from fastheads.errors import UserError
from fastheads.preprocess import CAFFE_MEAN_BGR, caffe_preprocess, resize_images


def _h5(path, images, labels, **extra):
    with h5py.File(path, "w") as f:
        f["images"] = images
        f["labels"] = labels
        for k, v in extra.items():
            f[k] = v
    return path


@pytest.mark.parametrize("dtype", [np.float32, np.uint8])
@pytest.mark.parametrize("label_shape", ["flat", "column"])
def test_h5_course_layout(tmp_path, tiny_images, dtype, label_shape):
    images, labels = tiny_images
    lab = labels if label_shape == "flat" else labels[:, None]
    path = _h5(tmp_path / "a.h5", images.astype(dtype), lab)
    ds = load_h5(path)
    assert len(ds) == len(images)
    np.testing.assert_array_equal(ds.labels, labels)
    np.testing.assert_array_equal(np.asarray(ds.images, np.float32), images.astype(np.float32))
    assert ds.names[0] == "0000"


def test_h5_filenames_are_read(tmp_path, tiny_images):
    images, labels = tiny_images
    names = np.array([[f"img_{i}.png".encode()] for i in range(len(images))])
    ds = load_h5(_h5(tmp_path / "a.h5", images, labels[:, None], filenames=names))
    assert ds.names[3] == "img_3.png"


def test_folder_with_rgba_and_odd_size(tmp_path, tiny_images):
    images, labels = tiny_images
    rows = ["file,label"]
    for i, (img, lab) in enumerate(zip(images[:6], labels[:6], strict=True)):
        rgba = np.dstack([img, np.full(img.shape[:2], 255, np.uint8)])
        im = Image.fromarray(rgba, "RGBA")
        if i == 2:
            im = im.resize((52, 52))  # the stray 208x208 of the real folder, in small
        im.save(tmp_path / f"{i:04d}.png")
        rows.append(f"{i:04d}.png,{lab}")
    (tmp_path / "flower_labels.csv").write_text("\n".join(rows) + "\n")
    ds = load_folder(tmp_path)
    assert len(ds) == 6 and ds.names[0] == "0000.png"
    assert ds.image(0).shape == (40, 40, 3)  # alpha dropped
    assert ds.image(2).shape == (52, 52, 3)
    np.testing.assert_array_equal(ds.image(0), images[0])
    resized = resize_images(ds.images, 32)
    assert resized.shape == (6, 32, 32, 3) and resized.dtype == np.float32


def test_class_names_and_course_root(tmp_path, tiny_h5):
    root = tmp_path / "course"
    (root / "imagenet_dataset").mkdir(parents=True)
    (root / "flowers_dataset" / "data" / "test").mkdir(parents=True)
    (root / "imagenet_dataset" / "10FlowerColorImages.h5").write_bytes(tiny_h5.read_bytes())
    (root / "imagenet_dataset" / "vgg16_weights.h5").write_bytes(b"x")
    (root / "flowers_dataset" / "flower_class_index.txt").write_text("a\nb\nc\nd\n\n")
    (root / "flowers_dataset" / "data" / "test" / "flowers_holdout.h5").write_bytes(b"x")
    found = find_course_files(root)
    assert found.train.name == "10FlowerColorImages.h5"
    assert found.weights.name == "vgg16_weights.h5"
    assert found.holdout.name == "flowers_holdout.h5"
    assert load_class_names(found.classes) == ["a", "b", "c", "d"]
    ds = load_images(found.train, found.classes)
    assert ds.class_names == ["a", "b", "c", "d"]


def test_caffe_preprocess_is_bgr_minus_means():
    rgb = np.array([[[[10.0, 20.0, 30.0]]]], np.float32)
    out = caffe_preprocess(rgb)
    np.testing.assert_allclose(out[0, 0, 0], [30 - CAFFE_MEAN_BGR[0], 20 - CAFFE_MEAN_BGR[1], 10 - CAFFE_MEAN_BGR[2]])


def test_caffe_preprocess_on_tensors_is_keras_caffe_mode():
    """The pipeline's TensorFlow path (tf.reverse, for speed) gives Keras' own caffe preprocessing exactly."""
    import tensorflow as tf
    from keras.applications.vgg16 import preprocess_input

    rgb = np.random.default_rng(1).uniform(0, 255, (2, 5, 7, 3)).astype(np.float32)
    got = caffe_preprocess(tf.constant(rgb)).numpy()
    np.testing.assert_array_equal(got, preprocess_input(rgb.copy()))
    np.testing.assert_array_equal(got, caffe_preprocess(rgb))


BAD = {
    "no images": (lambda f: f.create_dataset("labels", data=np.zeros(3, int)), "no 'images'"),
    "rank": (lambda f: (f.create_dataset("images", data=np.zeros((3, 8, 8))),
                        f.create_dataset("labels", data=np.zeros(3, int))), "rank 3"),
    "channels": (lambda f: (f.create_dataset("images", data=np.zeros((3, 8, 8, 4))),
                            f.create_dataset("labels", data=np.zeros(3, int))), "3 colour channels"),
    "nan": (lambda f: (f.create_dataset("images", data=np.full((3, 8, 8, 3), np.nan, np.float32)),
                       f.create_dataset("labels", data=np.zeros(3, int))), "NaN"),
    "range": (lambda f: (f.create_dataset("images", data=np.full((3, 8, 8, 3), 300.0)),
                         f.create_dataset("labels", data=np.zeros(3, int))), "0..255"),
    "count": (lambda f: (f.create_dataset("images", data=np.zeros((3, 8, 8, 3))),
                         f.create_dataset("labels", data=np.zeros(2, int))), "2 labels for 3 images"),
    "negative": (lambda f: (f.create_dataset("images", data=np.zeros((3, 8, 8, 3))),
                            f.create_dataset("labels", data=np.array([0, -1, 1]))), "negative"),
    "fraction": (lambda f: (f.create_dataset("images", data=np.zeros((3, 8, 8, 3))),
                            f.create_dataset("labels", data=np.array([0, 0.5, 1]))), "whole numbers"),
    "empty": (lambda f: (f.create_dataset("images", data=np.zeros((0, 8, 8, 3))),
                         f.create_dataset("labels", data=np.zeros(0, int))), "zero images"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_h5_gives_one_clear_line(tmp_path, case):
    build, expected = BAD[case]
    path = tmp_path / "bad.h5"
    with h5py.File(path, "w") as f:
        build(f)
    with pytest.raises(UserError, match=expected) as e:
        load_h5(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_not_hdf5_and_missing(tmp_path):
    p = tmp_path / "x.h5"
    p.write_text("hello")
    with pytest.raises(UserError, match="not a readable HDF5"):
        load_h5(p)
    with pytest.raises(UserError, match="not found"):
        load_h5(tmp_path / "missing.h5")


def test_label_out_of_class_range(tmp_path, tiny_h5):
    names = tmp_path / "c.txt"
    names.write_text("a\nb\n")
    with pytest.raises(UserError, match="out of range for 2 class names"):
        load_images(tiny_h5, names)
