"""VGG16 layer names, weight files, the frozen function, heads and the exported model."""

from __future__ import annotations

import subprocess
import sys

import h5py
import keras
import numpy as np
import pytest

from fastheads import backbone, heads
from fastheads.errors import UserError

from conftest import SIZE, write_keras2_weights


def test_layer_names_are_keras_applications():
    vgg = backbone.build_vgg16(SIZE)
    names = [layer.name for layer in vgg.layers[1:]]
    assert names == backbone.CONV_LAYERS + ["flatten", "fc1", "fc2", "predictions"]


def test_keras2_weights_file_loads_exactly(keras2_weights):
    vgg = backbone.build_vgg16(SIZE)
    desc = backbone.load_weights(vgg, str(keras2_weights), need_top=True)
    assert "Keras 2" in desc
    with h5py.File(keras2_weights) as f:
        np.testing.assert_array_equal(
            vgg.get_layer("block3_conv2").get_weights()[0], f["block3_conv2/block3_conv2_W_1:0"]
        )
        np.testing.assert_array_equal(vgg.get_layer("fc2").get_weights()[1], f["fc2/fc2_b_1:0"])


def test_weights_without_top(tmp_path):
    vgg = backbone.build_vgg16(SIZE)
    backbone.load_weights(vgg, "none", need_top=True, seed=3)
    path = tmp_path / "notop.h5"
    write_keras2_weights(vgg, path, include_top=False)
    with pytest.raises(UserError, match="has no top"):
        backbone.load_weights(backbone.build_vgg16(SIZE), str(path), need_top=True)
    assert "no top" in backbone.load_weights(backbone.build_vgg16(SIZE), str(path), need_top=False)


def test_weights_for_another_size_or_model(tmp_path):
    other = backbone.build_vgg16(64)
    path = tmp_path / "w64.h5"
    write_keras2_weights(other, path)
    with pytest.raises(UserError, match="layer fc1 has weights of shape"):
        backbone.load_weights(backbone.build_vgg16(SIZE), str(path), need_top=True)
    alien = tmp_path / "alien.h5"
    with h5py.File(alien, "w") as f:
        f.create_group("conv2d_1")
    with pytest.raises(UserError, match="not VGG16 weights"):
        backbone.load_weights(backbone.build_vgg16(SIZE), str(alien), need_top=True)
    truncated = tmp_path / "trunc.h5"
    truncated.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(UserError, match=str(truncated)):
        backbone.load_weights(backbone.build_vgg16(SIZE), str(truncated), need_top=True)


def test_keras3_weights_file(tmp_path, keras2_weights):
    vgg = backbone.build_vgg16(SIZE)
    backbone.load_weights(vgg, str(keras2_weights), need_top=True)
    path = tmp_path / "vgg.weights.h5"
    vgg.save_weights(str(path))
    again = backbone.build_vgg16(SIZE)
    backbone.load_weights(again, str(path), need_top=True)
    np.testing.assert_array_equal(again.get_layer("fc1").get_weights()[0], vgg.get_layer("fc1").get_weights()[0])


def test_imagenet_offline_says_how_to_pass_a_file(monkeypatch):
    def no_net(*a, **k):
        raise OSError("no network")

    class Stub:  # a 224x224 VGG16 stand-in: building the real one costs 0.5 GB for nothing
        input_shape = (None, 224, 224, 3)

    monkeypatch.setattr(keras.applications, "VGG16", no_net)
    with pytest.raises(UserError, match="--weights path/to/vgg16_weights.h5"):
        backbone._load_imagenet(Stub())


@pytest.mark.parametrize("cut", ["block5_pool", "block4_pool"])
def test_frozen_fn_equals_keras_forward(keras2_weights, cut):
    vgg = backbone.build_vgg16(SIZE)
    backbone.load_weights(vgg, str(keras2_weights), need_top=True)
    x = np.random.default_rng(0).uniform(-120, 130, (3, SIZE, SIZE, 3)).astype(np.float32)
    ref = keras.Model(vgg.input, vgg.get_layer(cut).output)(x).numpy()
    got = backbone.frozen_fn(vgg, cut, "fp32", xla=False)(x).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    bf16 = backbone.frozen_fn(vgg, cut, "bf16", xla=False)(x).numpy()
    assert np.abs(bf16 - ref).max() < 0.1 * np.abs(ref).max()  # bf16 is close, not equal


@pytest.mark.parametrize(
    "arch,k,trainable",
    [
        ("vgg16", 1, ["predictions"]),
        ("vgg16", 2, ["fc2", "predictions"]),
        ("vgg16", 3, ["fc1", "fc2", "predictions"]),
        ("v2", 1, ["fc1", "fc2", "predictions"]),
    ],
)
def test_heads_train_the_right_layers(arch, k, trainable):
    vgg = backbone.build_vgg16(SIZE)
    head = heads.build_head(vgg, arch, k, n_classes=4, seed=0)
    assert [layer.name for layer in head.layers if layer.trainable and layer.weights] == trainable
    assert head.input_shape[1:] == tuple(vgg.get_layer(heads.head_cut(arch, k)).output.shape[1:])
    assert head.output_shape == (None, 4)
    full = heads.stitch_full_model(vgg, head, arch, k)
    assert full.input_shape == (None, SIZE, SIZE, 3) and full.output_shape == (None, 4)
    assert not any(layer.trainable for layer in full.layers if layer.name.startswith("block"))
    if arch == "v2":
        assert "block5_conv1" not in [layer.name for layer in full.layers]
    if arch == "vgg16" and k == 2:  # fc2 starts from the pretrained weights, shared with vgg
        np.testing.assert_array_equal(full.get_layer("fc2").get_weights()[0], vgg.get_layer("fc2").get_weights()[0])


def test_frozen_dense_fn_equals_the_keras_layers(keras2_weights):
    vgg = backbone.build_vgg16(SIZE)
    backbone.load_weights(vgg, str(keras2_weights), need_top=True)
    top = {n: vgg.get_layer(n).get_weights() for n in ("fc1", "fc2")}
    x = np.random.default_rng(2).uniform(0, 3, (5, 1, 1, 512)).astype(np.float32)
    for k, cut in ((1, "fc2"), (2, "fc1")):
        ref = keras.Model(vgg.get_layer("flatten").input, vgg.get_layer(cut).output)(x).numpy()
        np.testing.assert_allclose(heads.frozen_dense_fn(top, "vgg16", k)(x), ref, rtol=1e-5, atol=1e-5)
    assert heads.frozen_dense_fn(top, "vgg16", 3) is None and heads.frozen_dense_fn(top, "v2", 1) is None


def test_bad_head_arguments():
    with pytest.raises(UserError, match="--train-layers must be 1, 2 or 3"):
        heads.check_head_args("vgg16", 4)
    with pytest.raises(UserError, match="--arch must be vgg16 or v2"):
        heads.check_head_args("resnet", 1)


def test_exported_model_loads_in_a_fresh_process(tmp_path, keras2_weights):
    vgg = backbone.build_vgg16(SIZE)
    backbone.load_weights(vgg, str(keras2_weights), need_top=True)
    full = heads.stitch_full_model(vgg, heads.build_head(vgg, "vgg16", 2, 4, seed=1), "vgg16", 2)
    path = tmp_path / "model.keras"
    full.save(path)
    x = np.random.default_rng(1).uniform(-100, 100, (4, SIZE, SIZE, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    code = (
        "import numpy as np, keras, sys; m = keras.models.load_model(sys.argv[1]);"
        "np.save(sys.argv[2], m.predict(np.load(sys.argv[3]), verbose=0))"
    )
    subprocess.run([sys.executable, "-c", code, str(path), str(tmp_path / "p.npy"), str(tmp_path / "x.npy")],
                   check=True, capture_output=True)  # fmt: skip
    np.testing.assert_allclose(np.load(tmp_path / "p.npy"), full.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
