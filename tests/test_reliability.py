"""Faults lose nothing: a killed run resumes to the same result; out of memory halves the batch (features and
training); a full disk keeps the previous file."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest

from fastheads.errors import UserError
from fastheads.pipeline import extract_features
from fastheads.runio import write_json


def _train_cmd(data, out, *extra):
    return [sys.executable, "-m", "fastheads", "train", "--data", str(data), "--weights", "none",
            "--image-size", "64", "--epochs", "10", "--patience", "10", "--batch-size", "8",
            "--precision", "fp32", "--xla", "off", "--out", str(out), "--quiet", *extra]  # fmt: skip


def _predictions_layer(path):
    return keras.models.load_model(path).get_layer("predictions").get_weights()


def test_killed_training_resumes_to_the_same_result(tmp_path, tiny_h5):
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    subprocess.run(_train_cmd(tiny_h5, clean), check=True, capture_output=True)
    proc = subprocess.Popen(_train_cmd(tiny_h5, killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = killed / "checkpoint" / "state.json"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if json.loads(state.read_text())["epochs_done"] >= 3:
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    done = json.loads(state.read_text())["epochs_done"]
    assert 3 <= done < 10 and not (killed / "model.keras").exists()
    res = subprocess.run(_train_cmd(tiny_h5, killed, "--resume"), capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads((killed / "history.json").read_text()) == json.loads((clean / "history.json").read_text())
    for a, b in zip(_predictions_layer(killed / "model.keras"), _predictions_layer(clean / "model.keras"), strict=True):
        np.testing.assert_array_equal(a, b)
    assert not (killed / "checkpoint").exists()


def test_out_of_memory_halves_the_batch(tiny_images):
    """An injected ResourceExhaustedError makes the extractor retry with half the batch, with a warning."""
    import tensorflow as tf

    from fastheads.augment import PRESETS

    images = tiny_images[0][:10].astype(np.float32)
    pairs = np.stack([np.arange(10), np.ones(10, int)], axis=1)
    seen = []

    def base_fn(x):
        seen.append(int(x.shape[0]))
        if x.shape[0] > 2:
            raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor")
        return tf.reduce_mean(x, axis=[1, 2])

    with pytest.warns(UserWarning, match="batch size 2"):
        feats = extract_features(base_fn, images, pairs, PRESETS["tp"], 0, 8)
    assert feats.shape == (10, 3) and seen[:3] == [8, 4, 2]
    ref = extract_features(lambda x: tf.reduce_mean(x, axis=[1, 2]), images, pairs, PRESETS["tp"], 0, 2)
    np.testing.assert_allclose(feats, ref, rtol=1e-6)


# --------------------------------------------------------------------------- out of memory while training


class _Features:
    """A FeatureSource of fixed random features: epoch e gets its own 'augmented' view."""

    def __init__(self, n: int, dim: int = 6) -> None:
        rng = np.random.default_rng(0)
        self.clean_x = rng.normal(size=(n, dim)).astype(np.float32)
        self.views = rng.normal(size=(8, n, dim)).astype(np.float32)

    def clean(self, indices):
        return self.clean_x[indices]

    def augmented(self, indices, epoch):
        return self.views[epoch % 8][indices]


def _tiny_head():
    keras.utils.set_random_seed(3)
    head = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4, activation="softmax", name="predictions")])
    head.compile(keras.optimizers.SGD(0.05, momentum=0.7, nesterov=True), "categorical_crossentropy",
                 metrics=["categorical_accuracy"])  # fmt: skip
    return head


def _run_loop(tmp_path, name, batch_size, epochs=3, fit=None, resume=False, head=None):
    from fastheads.config import TrainConfig
    from fastheads.loop import Checkpoint, EpochSteps, run_epochs

    head = head or _tiny_head()
    if fit is not None:  # stands in for one epoch of training: (train, val, batch) -> logs
        steps = EpochSteps(head)
        fit.orig, steps.run = steps.run, fit
        head._fastheads_steps = steps
    labels = np.arange(24) % 4
    y = keras.utils.to_categorical(labels, 4)
    tr, va = np.arange(16), np.arange(16, 24)
    cfg = TrainConfig(data="x", epochs=epochs, patience=epochs, batch_size=batch_size, resume=resume, verbose=False)
    state = run_epochs(cfg, head, _Features(24), (tr, va), (y[tr], y[va]), 0,
                             Checkpoint(tmp_path / name, "fp"), lambda s: None)  # fmt: skip
    return state, head


def test_out_of_memory_in_training_halves_the_batch_and_retries_the_epoch(tmp_path):
    """An epoch raises ResourceExhaustedError above batch 2, after really taking a step: the epoch is redone
    from the saved weights at 4, then 2, and the run ends exactly as a run at batch size 2 does."""
    import tensorflow as tf

    seen = []

    def flaky_fit(train, val, batch_size):
        seen.append(batch_size)
        if batch_size > 2:
            (x, y) = train
            flaky_fit.orig((x[:batch_size], y[:batch_size]), val, batch_size)  # half done
            raise tf.errors.ResourceExhaustedError(None, None, f"OOM when allocating tensor with shape[{batch_size},6]")
        return flaky_fit.orig(train, val, batch_size)

    with pytest.warns(UserWarning, match=r"batch size 4\b") as rec:
        state, head = _run_loop(tmp_path, "oom", batch_size=8, fit=flaky_fit)
    msgs = [str(w.message) for w in rec if "out of memory" in str(w.message)]
    assert len(msgs) == 2 and "batch size 2" in msgs[1] and "effective batch size changed" in msgs[0]
    assert seen == [8, 4, 2, 2, 2]  # the smaller batch is kept for the later epochs
    assert state.batch_size_used == 2 and state.epochs_done == 3
    ref_state, ref_head = _run_loop(tmp_path, "ref", batch_size=2)
    assert ref_state.batch_size_used == 2
    assert state.history == ref_state.history
    for a, b in zip(head.get_weights(), ref_head.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    saved = json.loads((tmp_path / "oom" / "state.json").read_text())
    assert saved["batch_size_used"] == 2

    # a resumed run continues at the batch size that fitted, not at --batch-size again
    seen.clear()

    def recording_fit(train, val, batch_size):
        seen.append(batch_size)
        return recording_fit.orig(train, val, batch_size)

    resumed, _ = _run_loop(tmp_path, "oom", batch_size=8, epochs=4, fit=recording_fit, resume=True)
    assert seen == [2] and resumed.epochs_done == 4 and resumed.batch_size_used == 2


def test_training_errors_other_than_out_of_memory_are_not_retried(tmp_path):
    import tensorflow as tf

    calls = []

    def broken_fit(train, val, batch_size):
        calls.append(batch_size)
        raise ValueError("shapes do not match")

    with pytest.raises(ValueError, match="shapes"):
        _run_loop(tmp_path, "a", batch_size=8, fit=broken_fit)
    assert calls == [8]

    calls.clear()

    def always_oom(train, val, batch_size):
        calls.append(batch_size)
        raise tf.errors.ResourceExhaustedError(None, None, "OOM")

    with pytest.warns(UserWarning), pytest.raises(tf.errors.ResourceExhaustedError):
        _run_loop(tmp_path, "b", batch_size=4, fit=always_oom)
    assert calls == [4, 2, 1]  # down to 1, then the error is the user's to see


# --------------------------------------------------------------------------- a full disk


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_full_disk_keeps_the_previous_file(tmp_path, monkeypatch):
    """ENOSPC in the middle of a write: a one-line UserError, the old file byte for byte, no temporary left."""
    target = tmp_path / "run.json"
    target.write_text('{"previous": true}\n')
    real_write_text = Path.write_text

    def half_then_full(self, data, *a, **kw):
        real_write_text(self, data[: len(data) // 2], *a, **kw)  # the disk filled up half way
        _enospc()

    monkeypatch.setattr(Path, "write_text", half_then_full)
    with pytest.raises(UserError, match="No space left on device") as e:
        write_json(target, {"new": list(range(100))})
    monkeypatch.undo()
    msg = str(e.value)
    assert str(target) in msg and "untouched" in msg and "\n" not in msg
    assert target.read_text() == '{"previous": true}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]  # the temporary file is gone


def test_full_disk_while_saving_the_model_leaves_the_old_one(tmp_path, tiny_h5, monkeypatch):
    """`train --overwrite` over an existing model.keras on a full disk: exit 2, the old model untouched."""
    from typer.testing import CliRunner

    from fastheads.cli import app

    out = tmp_path / "run"
    out.mkdir()
    (out / "model.keras").write_bytes(b"the user's model")

    def save_half(self, path, *a, **kw):
        Path(path).write_bytes(b"PK\x03\x04 half a zip")
        _enospc()

    monkeypatch.setattr(keras.Model, "save", save_half)
    res = CliRunner().invoke(app, ["train", "--data", str(tiny_h5), "--weights", "none", "--image-size", "32",
                                   "--epochs", "1", "--batch-size", "8", "--augment", "none", "--overwrite",
                                   "--quiet", "--out", str(out)])  # fmt: skip
    assert res.exit_code == 2, res.output
    line = res.output.strip().splitlines()[-1]
    assert line.startswith("fastheads: error:") and "No space left on device" in line and "model.keras" in line
    assert (out / "model.keras").read_bytes() == b"the user's model"
    assert not list(out.glob(".model.keras*"))


def test_write_npz_streams_arrays_that_np_load_reads(tmp_path):
    from fastheads.runio import write_npz

    arrays = [np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1, 2], np.int64), keras.Variable(np.ones(3))]
    write_npz(tmp_path / "a.npz", "w", arrays)
    with np.load(tmp_path / "a.npz") as z:
        assert z.files == ["w0", "w1", "w2"]
        for i, a in enumerate(arrays):
            np.testing.assert_array_equal(z[f"w{i}"], np.asarray(a))
            assert z[f"w{i}"].dtype == np.asarray(a).dtype
