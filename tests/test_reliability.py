"""Faults lose nothing: a killed training run resumes to the same result; OOM halves the batch."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from fastheads.pipeline import extract_features


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
