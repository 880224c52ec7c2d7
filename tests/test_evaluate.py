"""`fastheads evaluate` and `fastheads report` against models a course script would build with plain Keras.

The models here never touch fastheads: a small Conv2D + GlobalAveragePooling + Dense softmax
network on 32x32x3 caffe-preprocessed input, trained for a few seconds to tell three colours
of square apart, saved as `.keras` and as legacy `.h5`. The reference for every prediction is
the course notebook's own loop: `keras.models.load_model`, RGB->BGR minus the means, `predict`.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from fastheads.errors import UserError

MEAN_BGR = np.array([103.939, 116.779, 123.68], np.float32)
CLASSES = ["red square", "green square", "blue square"]
COLOURS = np.array([[220, 30, 30], [30, 200, 30], [30, 30, 220]], np.float32)


def squares(n: int, size: int = 32, seed: int = 0):
    """Grey noise with one coloured square each; the colour is the class. Also the squares' boxes."""
    rng = np.random.default_rng(seed)
    images = rng.normal(128, 20, (n, size, size, 3))
    labels = np.arange(n) % 3
    side = size // 3
    boxes = []
    for i in range(n):
        y, x = rng.integers(0, size - side, 2)
        images[i, y : y + side, x : x + side] = COLOURS[labels[i]]
        boxes.append((y, x, side))
    return np.clip(images, 0, 255).astype(np.uint8), labels.astype(np.int64), boxes


def caffe(images: np.ndarray) -> np.ndarray:
    """The course notebook's preprocessing, written out independently of fastheads."""
    return images[..., ::-1].astype(np.float32) - MEAN_BGR


def write_holdout(path: Path, images, labels, filenames: bool = True, labels_2d: bool = True) -> Path:
    with h5py.File(path, "w") as f:
        f["images"] = images.astype(np.float32)  # the course stores float 0..255
        f["labels"] = labels.reshape(-1, 1) if labels_2d else labels
        if filenames:
            f["filenames"] = np.array([[f"img_{i:03d}.jpg".encode()] for i in range(len(labels))], dtype="S")
    return path


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    """A course-style folder: trained model (.keras, .h5), holdout file, class-names file."""
    import keras

    root = tmp_path_factory.mktemp("course")
    keras.utils.set_random_seed(0)
    inp = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="block1_conv1")(inp)
    x = keras.layers.Conv2D(12, 3, padding="same", activation="relu", name="block5_conv3")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(3, activation="softmax", name="predictions")(x)
    model = keras.Model(inp, out)
    model.compile(keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy")
    images, labels, _ = squares(240, seed=1)
    model.fit(caffe(images), labels, epochs=6, batch_size=32, verbose=0)
    model.save(root / "model.keras")
    model.save(root / "model.h5")
    hold_images, hold_labels, boxes = squares(24, seed=2)
    hold_labels = hold_labels.copy()
    hold_labels[[0, 4]] = [2, 0]  # two deliberate mistakes, so errors.png has something to show
    classes = root / "classes.txt"
    classes.write_text("\n".join(CLASSES) + "\n")
    return {
        "root": root, "model": model, "keras": root / "model.keras", "h5": root / "model.h5", "classes": classes,
        "holdout": write_holdout(root / "holdout.h5", hold_images, hold_labels),
        "images": hold_images, "labels": hold_labels, "boxes": boxes,
    }  # fmt: skip


@pytest.fixture(scope="module")
def evaluated(course, tmp_path_factory):
    from fastheads.evaluate import evaluate

    out = tmp_path_factory.mktemp("eval")
    return evaluate(course["keras"], course["holdout"], course["classes"], out=out, gradcam=True, verbose=False)


def cli():
    from typer.testing import CliRunner

    from fastheads.cli import app
    from fastheads.cli_evaluate import register

    register(app)
    register(app)  # twice: the engineer's cli.py may already have done it
    return CliRunner(), app


# --------------------------------------------------------------------------- the holdout reader


def test_holdout_reader_course_layout(course):
    from fastheads.data import load_images

    ds = load_images(course["holdout"], course["classes"])
    assert ds.names[:2] == ["img_000.jpg", "img_001.jpg"]
    assert ds.labels.shape == (24,) and ds.labels.dtype == np.int64
    np.testing.assert_array_equal(ds.labels, course["labels"])
    assert ds.class_names == CLASSES


def test_holdout_reader_without_filenames(course, tmp_path):
    from fastheads.data import load_images

    path = write_holdout(tmp_path / "h.h5", course["images"], course["labels"], filenames=False, labels_2d=False)
    ds = load_images(path, course["classes"])
    assert ds.names == [f"{i:04d}" for i in range(24)]
    np.testing.assert_array_equal(ds.labels, course["labels"])


# --------------------------------------------------------------------------- predictions


@pytest.mark.parametrize("fmt", ["keras", "h5"])
def test_evaluate_equals_plain_keras_loop(course, fmt, tmp_path, capsys):
    import keras

    from fastheads.evaluate import evaluate

    result = evaluate(course[fmt], course["holdout"], course["classes"], out=tmp_path, verbose=True)
    ref_model = keras.models.load_model(course[fmt], compile=False)
    with h5py.File(course["holdout"]) as f:
        x, y = f["images"][()], f["labels"][()][:, 0]
    probs = ref_model.predict(caffe(x), verbose=0)
    np.testing.assert_allclose(result.probabilities, probs, atol=1e-5)
    assert [p.predicted for p in result.predictions] == [CLASSES[i] for i in probs.argmax(1)]
    assert result.accuracy == pytest.approx((probs.argmax(1) == y).mean())
    assert 0.75 <= result.accuracy < 1.0  # the model learned, and the two planted mistakes show
    printed = capsys.readouterr().out
    assert "img_000.jpg" in printed and f"accuracy: {result.accuracy:.4f}" in printed
    rows = list(csv.DictReader(open(tmp_path / "predictions.csv")))
    assert [r["file"] for r in rows][:3] == ["img_000.jpg", "img_001.jpg", "img_002.jpg"]
    assert rows[0]["true"] == CLASSES[2] and rows[0]["predicted"] == CLASSES[int(probs[0].argmax())]
    assert float(rows[0]["probability"]) == pytest.approx(probs[0].max(), abs=1e-5)
    assert rows[0]["top3"].startswith(rows[0]["predicted"])
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["accuracy"] == pytest.approx(result.accuracy)
    assert np.asarray(metrics["confusion_matrix"]).sum() == 24 and metrics["class_names"] == CLASSES


def test_evaluate_resizes_to_the_models_input(course, tmp_path):
    import keras
    import tensorflow as tf

    from fastheads.evaluate import evaluate

    big, labels, _ = squares(9, size=64, seed=3)
    path = write_holdout(tmp_path / "big.h5", big, labels)
    result = evaluate(course["h5"], path, CLASSES, verbose=False)
    small = tf.image.resize(big.astype(np.float32), (32, 32), method="bilinear", antialias=True).numpy()
    ref = keras.models.load_model(course["h5"], compile=False).predict(caffe(np.clip(small, 0, 255)), verbose=0)
    np.testing.assert_allclose(result.probabilities, ref, atol=1e-5)


def test_evaluate_a_folder_of_images_with_a_labels_csv(course, tmp_path):
    from PIL import Image

    from fastheads.evaluate import evaluate

    folder = tmp_path / "holdout"
    folder.mkdir()
    rows = ["file,label"]
    for i in range(6):
        Image.fromarray(course["images"][i]).save(folder / f"flower_{i}.png")
        rows.append(f"flower_{i}.png,{course['labels'][i]}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    from_folder = evaluate(course["keras"], folder, CLASSES, verbose=False)
    from_h5 = evaluate(course["keras"], course["holdout"], CLASSES, verbose=False)
    assert [p.file for p in from_folder.predictions] == [f"flower_{i}.png" for i in range(6)]
    np.testing.assert_allclose(from_folder.probabilities, from_h5.probabilities[:6], atol=1e-5)


def test_api_bad_input_raises_user_error(course, tmp_path):
    from fastheads.evaluate import evaluate

    with pytest.raises(UserError, match="predicts 3 classes but 2 class names"):
        evaluate(course["keras"], course["holdout"], CLASSES[:2], verbose=False)
    with pytest.raises(UserError, match="no class names"):
        evaluate(course["keras"], course["holdout"], None, verbose=False)
    with pytest.raises(UserError, match="no convolutional layer named 'fc9'"):
        evaluate(course["keras"], course["holdout"], CLASSES, out=tmp_path, gradcam=True, gradcam_layer="fc9")
    assert not list(tmp_path.iterdir())  # nothing written before the check


def test_metric_helpers_by_hand():
    from fastheads.evaluate import confusion_matrix, per_class_scores

    cm = confusion_matrix(np.array([0, 0, 1, 1, 2]), np.array([0, 1, 1, 1, 1]), 3)
    np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 2, 0], [0, 1, 0]])
    s = per_class_scores(cm)
    np.testing.assert_allclose(s["precision"], [1.0, 0.5, 0.0])  # class 2 never predicted: 0, not NaN
    np.testing.assert_allclose(s["recall"], [0.5, 1.0, 0.0])
    np.testing.assert_allclose(s["f1"], [2 / 3, 2 / 3, 0.0])
    np.testing.assert_array_equal(s["support"], [2, 2, 1])


# --------------------------------------------------------------------------- pictures


def assert_picture(path: Path, min_side: int = 300) -> None:
    from PIL import Image

    with Image.open(path) as im:
        pixels = np.asarray(im.convert("RGB"), np.float32)
    assert min_side <= pixels.shape[1] <= 4000 and pixels.shape[0] <= 6000, pixels.shape
    assert pixels.std() > 20, f"{path.name} looks blank"


def test_evaluate_pictures(evaluated):
    for name in ("confusion", "errors", "gradcam"):
        assert evaluated.paths[name].name == f"{name}.png"
        assert_picture(evaluated.paths[name])


def test_gradcam_looks_at_the_square(course):
    from fastheads.gradcam import gradcam, upsample

    images, boxes = course["images"], course["boxes"]
    cams = gradcam(course["model"], caffe(images))
    assert cams.shape[0] == 24 and cams.min() >= 0 and cams.max() <= 1
    inside = 0
    for cam, (y, x, side) in zip(cams, boxes, strict=True):
        py, px = np.unravel_index(upsample(cam, 32, 32).argmax(), (32, 32))
        inside += (y - 3 <= py < y + side + 3) and (x - 3 <= px < x + side + 3)
    assert inside >= 0.8 * len(boxes)


def test_gradcam_through_a_nested_base(course):
    """`Sequential([base, pooling, dense])`, as students often write it, gives the flat model's maps."""
    import keras

    from fastheads.gradcam import gradcam

    flat = course["model"]
    base = keras.Model(flat.inputs, flat.get_layer("block5_conv3").output, name="base")
    nested = keras.Sequential([keras.Input((32, 32, 3)), base, flat.layers[-2], flat.layers[-1]])
    x = caffe(course["images"][:6])
    np.testing.assert_allclose(gradcam(nested, x), gradcam(flat, x), atol=1e-4)


def test_gradcam_on_layers_shared_with_another_model(course):
    """fastheads' full model shares its layers with the VGG16 it was cut from: `layer.output` is ambiguous."""
    import keras

    from fastheads.gradcam import gradcam

    flat = course["model"]
    y = inp = keras.Input((32, 32, 3))
    for layer in flat.layers[1:]:
        y = layer(y)
    shared = keras.Model(inp, y)
    x = caffe(course["images"][:6])
    np.testing.assert_allclose(gradcam(shared, x), gradcam(flat, x), atol=1e-4)


# --------------------------------------------------------------------------- the CLI


def test_cli_evaluate(course, tmp_path):
    runner, app = cli()
    args = ["evaluate", str(course["h5"]), "--data", str(course["holdout"]), "--classes", str(course["classes"])]
    result = runner.invoke(app, [*args, "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "accuracy:" in result.output and "img_023.jpg" in result.output
    assert {p.name for p in tmp_path.iterdir()} >= {"predictions.csv", "metrics.json", "confusion.png", "errors.png"}


def _bad_model(kind: str, folder: Path) -> Path:
    import keras

    if kind in ("text", "h5 text"):
        path = folder / ("notes.keras" if kind == "text" else "notes.h5")
        path.write_text("not a model")
        return path
    if kind == "h5 not a model":  # an HDF5 file, but a data set rather than a model
        return write_holdout(folder / "data.h5", np.zeros((2, 8, 8, 3), np.uint8), np.array([0, 1]))
    if kind == "suffix":
        path = folder / "weights.txt"
        path.write_text("x")
        return path
    shape = {"flat": (12,), "grey": (32, 32, 1)}[kind]
    inp = keras.Input(shape)
    x = keras.layers.Flatten()(inp) if len(shape) > 1 else inp
    model = keras.Model(inp, keras.layers.Dense(3, activation="softmax")(x))
    path = folder / f"{kind}.keras"
    model.save(path)
    return path


@pytest.mark.parametrize(
    "case, expect",
    [
        ("four classes", "predicts 3 classes but 4 class names"),
        ("label out of range", "label 3 is out of range"),
        ("text", "a .keras file is a zip archive"),
        ("h5 text", "a .h5 model is an HDF5 file"),
        ("h5 not a model", "not a loadable Keras model"),
        ("suffix", "ending in .keras or .h5"),
        ("flat", "expected (batch, height, width, 3)"),
        ("grey", "expected (batch, height, width, 3)"),
        ("missing", "model file not found"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(course, tmp_path, case, expect):
    runner, app = cli()
    model, data, classes = course["keras"], course["holdout"], course["classes"]
    if case == "four classes":
        classes = tmp_path / "four.txt"
        classes.write_text("\n".join([*CLASSES, "violet square"]))
    elif case == "label out of range":
        data = write_holdout(tmp_path / "bad.h5", course["images"][:3], np.array([0, 1, 3]))
    elif case == "missing":
        model = tmp_path / "nope.keras"
    else:
        model = _bad_model(case, tmp_path)
    args = ["evaluate", str(model), "--data", str(data), "--classes", str(classes), "--out", str(tmp_path / "o")]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert expect in result.stderr
    assert result.stderr.strip().count("\n") == 0 and result.stderr.startswith("fastheads: error:")


# --------------------------------------------------------------------------- report


def fake_run(folder: Path, seed: int, train_layers: int, val_acc: list[float], holdout: float | None = None) -> Path:
    """A run folder as `fastheads train` writes it, by hand."""
    folder.mkdir(parents=True)
    n = len(val_acc)
    history = {
        "loss": list(np.linspace(1.5, 0.5, n)), "categorical_accuracy": list(np.linspace(0.4, 0.9, n)),
        "val_loss": list(np.linspace(1.6, 0.8, n)), "val_categorical_accuracy": val_acc,
    }  # fmt: skip
    best = int(np.argmax(val_acc))
    config = {"arch": "vgg16", "train_layers": train_layers, "augment": "none", "lr": 0.001, "epochs": 13,
              "monitor": "val_categorical_accuracy", "seed": seed, "out": str(folder)}  # fmt: skip
    record = {"config": config, "seed": seed, "best_epoch": best + 1, "best_value": val_acc[best], "stopped_epoch": n}
    (folder / "history.json").write_text(json.dumps(history))
    (folder / "run.json").write_text(json.dumps(record))
    if holdout is not None:
        (folder / "eval_holdout").mkdir()
        (folder / "eval_holdout" / "metrics.json").write_text(json.dumps({"accuracy": holdout}))
    return folder


def test_report_runs(tmp_path):
    from fastheads.report import report_runs

    a = fake_run(tmp_path / "a", 0, 1, [0.5, 0.7, 0.65, 0.6], holdout=0.8125)
    b = fake_run(tmp_path / "b", 1, 1, [0.55, 0.6, 0.75, 0.7, 0.72])
    c = fake_run(tmp_path / "c", 0, 2, [0.6, 0.8, 0.85])
    result = report_runs([a, b, c], tmp_path / "out", "test runs")
    assert_picture(tmp_path / "out" / "report.png", min_side=600)
    table = (tmp_path / "out" / "runs.md").read_text()
    row_a = next(line for line in table.splitlines() if line.startswith(f"| {a} |"))
    assert "| train-layers 1 | 0 | 2 | 0.7000 | 4 | 0.9000 | 0.6000 | 0.8125 |" in row_a
    row_b = next(line for line in table.splitlines() if line.startswith(f"| {b} |"))
    assert "| 3 | 0.7500 | 5 |" in row_b and row_b.endswith("| – |")
    assert "| train-layers 1 | 2 | 0.7250 ± 0.0250 |" in table  # a and b are repeats of one configuration
    saved = json.loads((tmp_path / "out" / "runs.json").read_text())
    assert saved["runs"][0]["holdout_accuracy"] == 0.8125 and len(saved["configurations"]) == 2
    assert result["runs"][2]["best_epoch"] == 3


def test_cli_report(tmp_path):
    runner, app = cli()
    parent = tmp_path / "repeats"
    for r in range(3):
        fake_run(parent / f"run_{r + 1:02d}", r, 1, [0.5, 0.6 + r / 20, 0.7])
    result = runner.invoke(app, ["report", str(parent)])
    assert result.exit_code == 0, result.output
    assert (parent / "report.png").is_file() and "3 runs" in result.output
    bad = runner.invoke(app, ["report", str(tmp_path / "nothing")])
    assert bad.exit_code == 2 and "run folder not found" in bad.stderr
