"""Training end to end on tiny data: CLI, outputs, cached == uncached, determinism, no overwrite."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
from typer.testing import CliRunner

from fastheads.cli import app
from fastheads.errors import UserError
from fastheads.split import stratified_split
from fastheads.train import train

from conftest import SIZE

FAST = dict(image_size=SIZE, epochs=3, patience=3, batch_size=8, verbose=False)


def test_cli_train_end_to_end(tmp_path, tiny_h5, tiny_classes, keras2_weights):
    out = tmp_path / "run"
    args = ["train", "--data", str(tiny_h5), "--classes", str(tiny_classes), "--weights", str(keras2_weights),
            "--image-size", str(SIZE), "--epochs", "2", "--batch-size", "8", "--out", str(out)]  # fmt: skip
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "Epoch 2/2" in res.output and "best epoch" in res.output
    for name in ("model.keras", "history.json", "run.json", "curves.png"):
        assert (out / name).is_file(), name
    hist = json.loads((out / "history.json").read_text())
    assert set(hist) == {"loss", "categorical_accuracy", "val_loss", "val_categorical_accuracy"}
    assert all(len(v) == 2 for v in hist.values())
    run = json.loads((out / "run.json").read_text())
    assert len(run["split"]["train"]) + len(run["split"]["val"]) == 24
    assert run["config"]["lr"] == 0.001 and run["config"]["augment"]["shear_range"] == 0.2
    model = keras.models.load_model(out / "model.keras")
    assert model.input_shape == (None, SIZE, SIZE, 3) and model.output_shape == (None, 4)
    # a second run into the same folder must not replace the model without --overwrite
    before = (out / "model.keras").stat().st_mtime_ns
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2 and "--overwrite" in res.output
    assert (out / "model.keras").stat().st_mtime_ns == before


@pytest.mark.parametrize(
    "args,match",
    [
        (["--epochs", "0"], "--epochs must be at least 1"),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
        (["--val-split", "1.0"], "--val-split must be between 0 and 1"),
        (["--augment", "rotation_range=400"], "rotation_range"),
        (["--weights", "/nonexistent/w.h5"], "file not found"),
        (["--train-layers", "5"], "--train-layers must be 1, 2 or 3"),
        (["--cache", "--views", "1025"], "--views (default: --epochs) must be at most 1024"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(tmp_path, tiny_h5, args, match):
    res = CliRunner().invoke(app, ["train", "--data", str(tiny_h5), "--weights", "none", "--image-size", str(SIZE),
                                   "--out", str(tmp_path / "o"), *args])  # fmt: skip
    assert res.exit_code == 2, res.output
    assert match in res.output
    assert "Traceback" not in res.output


def _head_weights(run) -> list[np.ndarray]:
    model = keras.models.load_model(run.model_path)
    return [w for layer in model.layers if layer.name == "predictions" for w in layer.get_weights()]


def test_cached_equals_uncached_at_fp32(tmp_path, tiny_h5, keras2_weights):
    """Same seed, same augmented views: a head trained from the store ends with the same weights."""
    common = dict(FAST, data=str(tiny_h5), weights=str(keras2_weights), precision="fp32", xla="off",
                  augment="tp", train_layers=2)  # fmt: skip
    live = train(**common, out=str(tmp_path / "live"))
    cached = train(**common, out=str(tmp_path / "cached"), cache=True, cache_dir=str(tmp_path / "c"),
                   cache_dtype="float32")  # fmt: skip
    for k in live.history:
        np.testing.assert_allclose(live.history[k], cached.history[k], rtol=1e-4, atol=1e-5)
    for a, b in zip(_head_weights(live.runs[0]), _head_weights(cached.runs[0]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    # the store is shared by a later run with another head and seed: a hit, nothing rebuilt
    entries = list((tmp_path / "c").iterdir())
    again = train(**dict(common, train_layers=1, seed=5), out=str(tmp_path / "again"), cache=True,
                  cache_dir=str(tmp_path / "c"), cache_dtype="float32")  # fmt: skip
    assert list((tmp_path / "c").iterdir()) == entries and again.runs[0].stopped_epoch >= 1


def test_same_seed_same_numbers(tmp_path, tiny_h5):
    common = dict(FAST, data=str(tiny_h5), weights="none", cache=True, cache_dir=str(tmp_path / "c"))
    a = train(**common, out=str(tmp_path / "a"))
    b = train(**common, out=str(tmp_path / "b"))
    assert a.history == b.history
    c = train(**common, out=str(tmp_path / "c2"), seed=1)
    assert c.history != a.history


def test_a_run_that_trains_fc2_does_not_leak_into_the_next(tmp_path, tiny_h5):
    """The backbone is shared within a process; fc2 trained by one run is restored before the next."""
    common = dict(FAST, data=str(tiny_h5), weights="none", cache=True, cache_dir=str(tmp_path / "c"), train_layers=2)
    a = train(**common, out=str(tmp_path / "a"))
    one = train(**dict(common, train_layers=1), out=str(tmp_path / "one"))
    b = train(**common, out=str(tmp_path / "b"))
    assert a.history == b.history
    fc2 = [keras.models.load_model(r.model_path).get_layer("fc2").get_weights()[0] for r in (a.runs[0], one.runs[0])]
    assert not np.array_equal(fc2[0], fc2[1])  # a's fc2 trained; one's exported fc2 is the loaded one


def test_export_best_writes_one_full_model_equal_to_export_every(tmp_path, tiny_h5):
    common = dict(FAST, data=str(tiny_h5), weights="none", cache=True, cache_dir=str(tmp_path / "c"), repeats=3)
    every = train(**common, out=str(tmp_path / "every"))
    best = train(**common, out=str(tmp_path / "best"), export="best")
    assert [r.best_value for r in every.runs] == [r.best_value for r in best.runs]
    winner = max(range(3), key=lambda i: best.runs[i].best_value)
    for i, run in enumerate(best.runs):
        assert (run.out_dir / "model.keras").is_file() == (i == winner)
        assert (run.out_dir / "head.weights.npz").is_file()  # every repeat keeps its trained layers
    for a, b in zip(_head_weights(every.runs[winner]), _head_weights(best.runs[winner]), strict=True):
        np.testing.assert_array_equal(a, b)
    again = train(**common, out=str(tmp_path / "best"), export="best", resume=True)  # all finished: nothing redone
    assert [r.model_path for r in again.runs] == [r.model_path for r in best.runs]
    # another configuration into the folder of --export every: no earlier model may pass for a new repeat's
    other = train(**dict(common, seed=7), out=str(tmp_path / "every"), export="best", overwrite=True)
    assert len(list((tmp_path / "every").glob("run_*/model.keras"))) == 1
    assert other.runs[0].model_path is None or other.runs[0].model_path.is_file()


def test_faithful_mode_uses_the_notebook_step_counts(tmp_path, tiny_h5):
    r = train(**dict(FAST, epochs=1, batch_size=5), data=str(tiny_h5), weights="none", faithful=True,
              out=str(tmp_path / "f"))  # fmt: skip
    run = r.runs[0].record
    n_val, n_train = len(run["split"]["val"]), len(run["split"]["train"])
    assert run["validation_images_per_epoch"] == n_val // 5 * 5 < n_val  # 5 of 8, as validation_steps = 8 // 5
    assert run["training_images_per_epoch"] == n_train // 5 * 5 < n_train


def test_repeats_use_different_splits(tmp_path, tiny_h5):
    r = train(**dict(FAST, epochs=1), data=str(tiny_h5), weights="none", repeats=2, cache=True,
              cache_dir=str(tmp_path / "c"), out=str(tmp_path / "rep"))  # fmt: skip
    assert len(r.runs) == 2 and (tmp_path / "rep" / "summary.json").is_file()
    assert r.runs[0].record["split"]["val"] != r.runs[1].record["split"]["val"]


def test_stratified_split_properties():
    labels = np.repeat(np.arange(10), [15, 26, 20, 21, 22, 20, 21, 22, 23, 20])  # unbalanced like the course
    tr, va = stratified_split(labels, 0.3, seed=0)
    assert len(va) == 63 and len(tr) == len(labels) - 63  # ceil(0.3 * 210), as train_test_split
    assert set(labels[va]) == set(range(10)) and set(labels[tr]) == set(range(10))
    assert not set(tr) & set(va)
    tr2, va2 = stratified_split(labels, 0.3, seed=1)
    assert not np.array_equal(va, va2)
    with pytest.raises(UserError, match="at least 2 per class"):
        stratified_split(np.array([0, 0, 1]), 0.3, 0)
    with pytest.raises(UserError, match="single class"):
        stratified_split(np.zeros(5, int), 0.3, 0)


def test_an_epoch_of_compiled_steps_is_an_epoch_of_fit():
    """EpochSteps replaces `fit(epochs=1)` per epoch: same history, same weights, same optimizer state."""
    from fastheads.loop import EpochSteps

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(45, 12)).astype(np.float32), keras.utils.to_categorical(rng.integers(0, 3, 45), 3)
    val = (rng.normal(size=(13, 12)).astype(np.float32), keras.utils.to_categorical(rng.integers(0, 3, 13), 3))

    def head():
        keras.utils.set_random_seed(5)
        m = keras.Sequential([keras.Input((12,)), keras.layers.Dense(8, activation="relu"),
                              keras.layers.Dense(3, activation="softmax")])  # fmt: skip
        lr = keras.optimizers.schedules.InverseTimeDecay(0.05, decay_steps=1, decay_rate=1e-3)
        m.compile(keras.optimizers.SGD(lr, momentum=0.7, nesterov=True), "categorical_crossentropy",
                  metrics=["categorical_accuracy"])  # fmt: skip
        return m

    a, b = head(), head()
    steps = EpochSteps(b)
    for epoch in range(3):
        order = np.random.default_rng(epoch).permutation(45)
        h = a.fit(x[order], y[order], batch_size=8, epochs=1, shuffle=False, verbose=0, validation_data=val)
        logs = steps.run((x[order], y[order]), val, 8)
        assert list(logs) == list(h.history) and logs == {k: float(v[-1]) for k, v in h.history.items()}
    for wa, wb in zip(a.get_weights() + [v.numpy() for v in a.optimizer.variables],
                      b.get_weights() + [v.numpy() for v in b.optimizer.variables], strict=True):  # fmt: skip
        np.testing.assert_array_equal(wa, wb)


def test_cache_build_refuses_more_views_than_an_entry_holds(tmp_path, tiny_h5):
    res = CliRunner().invoke(app, ["cache", "build", "--data", str(tiny_h5), "--weights", "none", "--epochs", "1025",
                                   "--cache-dir", str(tmp_path / "c")])  # fmt: skip
    assert res.exit_code == 2 and "must be at most 1024" in res.output, res.output
    assert not (tmp_path / "c").exists()  # refused before anything was loaded or created


def test_cache_build_takes_classes_like_train(tmp_path, tiny_h5, tiny_classes):
    """--classes is checked against the labels, and does not change the entry (class names are not in the key)."""
    short = tmp_path / "two.txt"
    short.write_text("phlox\nrose\n")
    base = ["cache", "build", "--data", str(tiny_h5), "--weights", "none", "--image-size", "32", "--views", "1",
            "--cache-dir", str(tmp_path / "c")]  # fmt: skip
    res = CliRunner().invoke(app, [*base, "--classes", str(short)])
    assert res.exit_code == 2 and "out of range for 2 class names" in res.output, res.output
    assert not (tmp_path / "c").exists()
    res = CliRunner().invoke(app, [*base, "--classes", str(tiny_classes)])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(app, base)
    assert res.exit_code == 0 and "feature store hit" in res.output, res.output
