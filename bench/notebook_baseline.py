"""REFERENCE ONLY: the course notebook's pipeline, re-implemented faithfully for `fastheads bench`.

This is not a fastheads code path. It is what a student runs without fastheads, so the
bench can time it side by side with fastheads on the same machine, data and weights:

- Keras' own `ImageDataGenerator` (deprecated, still shipped in Keras 3) with the
  notebook's arguments and `preprocess_input` (caffe) as its preprocessing_function;
- the full VGG16 with `predictions` replaced by a new Dense(n, softmax) on fc2, every
  other layer frozen (question 1);
- SGD(lr=0.001, momentum=0.7, nesterov=True) (Keras 3 has no `decay`), categorical
  cross-entropy, `model.fit` with steps_per_epoch = n_train // 32 and
  validation_steps = n_val // 32 (at least 1), EarlyStopping(patience=3) and
  ModelCheckpoint(save_best_only) on val_categorical_accuracy, as the notebook does;
- `jit_compile=False`, as Keras 2 ran it (Keras 3 would pick XLA on its own).

Every epoch pushes every image through all 13 convolutions again: that is the cost
fastheads removes.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np


def _endless(flow):
    while True:
        yield next(flow)


def notebook_run(
    images: np.ndarray,
    labels: np.ndarray,
    n_classes: int,
    weights: list[np.ndarray],
    split: tuple[np.ndarray, np.ndarray],
    epochs: int = 13,
    batch_size: int = 32,
    patience: int = 3,
    seed: int = 0,
    precision: str = "fp32",
) -> dict:
    """One question-1 training run; `images` are already resized, RGB 0-255. Returns history and time."""
    import keras
    from keras.applications.vgg16 import preprocess_input
    from tensorflow.keras.preprocessing.image import ImageDataGenerator

    policy = keras.config.dtype_policy()
    if precision in ("bf16", "fp16"):  # what a notebook user would do: a Keras mixed-precision policy
        keras.config.set_dtype_policy({"bf16": "mixed_bfloat16", "fp16": "mixed_float16"}[precision])
    try:
        keras.utils.set_random_seed(seed)
        size = images.shape[1]
        base = keras.applications.VGG16(weights=None, include_top=True, input_shape=(size, size, 3))
        base.set_weights(weights)
        out = keras.layers.Dense(n_classes, activation="softmax", name="predictions_new", dtype="float32")(
            base.get_layer("fc2").output
        )
        model = keras.Model(base.input, out)
        for layer in model.layers[:-1]:
            layer.trainable = False
        model.compile(
            optimizer=keras.optimizers.SGD(learning_rate=0.001, momentum=0.7, nesterov=True),
            loss="categorical_crossentropy",
            metrics=["categorical_accuracy"],
            jit_compile=False,
        )
        train_idx, val_idx = split
        y = keras.utils.to_categorical(labels, n_classes)
        train_gen = ImageDataGenerator(
            rotation_range=10, width_shift_range=0.1, height_shift_range=0.1, shear_range=0.2,
            zoom_range=[0.8, 1.4], horizontal_flip=True, preprocessing_function=preprocess_input,
        )  # fmt: skip
        val_gen = ImageDataGenerator(preprocessing_function=preprocess_input)
        # Keras 2's fit_generator drew batches from these endless iterators; Keras 3 would treat
        # them as finite datasets and stop early ("ran out of data"), so they are wrapped.
        train_flow = _endless(train_gen.flow(images[train_idx], y[train_idx], batch_size=batch_size, seed=seed))
        val_flow = _endless(val_gen.flow(images[val_idx], y[val_idx], batch_size=batch_size, seed=seed))
        with tempfile.TemporaryDirectory() as tmp:
            callbacks = [
                keras.callbacks.EarlyStopping(monitor="val_categorical_accuracy", patience=patience),
                keras.callbacks.ModelCheckpoint(
                    str(Path(tmp) / "vgg16_retrained_10flowers.keras"),
                    monitor="val_categorical_accuracy",
                    save_best_only=True,
                ),
            ]
            t0 = time.perf_counter()
            hist = model.fit(
                train_flow,
                steps_per_epoch=max(1, len(train_idx) // batch_size),
                epochs=epochs,
                validation_data=val_flow,
                validation_steps=max(1, len(val_idx) // batch_size),
                callbacks=callbacks,
                verbose=0,
            )
            seconds = time.perf_counter() - t0
        history = {k: [float(v) for v in vals] for k, vals in hist.history.items()}
        return {"history": history, "seconds": seconds, "epochs_run": len(history["loss"])}
    finally:
        keras.config.set_dtype_policy(policy)
