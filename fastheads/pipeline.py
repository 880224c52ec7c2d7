"""tf.data: image -> augmented view -> caffe preprocessing -> frozen base -> features.

A *view* names one version of an image: view 0 is the clean image (validation,
evaluation), view v >= 1 the v-th augmented draw. Training epoch e uses view 1 + e on the
fly; a feature store with K views serves view 1 + (e mod K). With K >= epochs the two are
the same pictures, hence the same features: the equivalence the cache relies on.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from typing import Protocol

import numpy as np

from fastheads.augment import AugmentSpec, augment_image
from fastheads.preprocess import caffe_preprocess


class FeatureSource(Protocol):
    """Where the head's inputs come from: computed on the fly, or read from the feature store."""

    def clean(self, indices: np.ndarray) -> np.ndarray: ...

    def augmented(self, indices: np.ndarray, epoch: int) -> np.ndarray: ...


def image_dataset(images: np.ndarray, pairs: np.ndarray, spec: AugmentSpec, aug_seed: int, batch: int):
    """Batches of caffe-preprocessed (augmented) images for (image index, view) pairs."""
    import tensorflow as tf

    table = tf.constant(images)

    def one(i, v):
        img = tf.gather(table, i)
        img = tf.cond(v > 0, lambda: augment_image(img, spec, aug_seed, i, v), lambda: img)
        return caffe_preprocess(img)

    # Fixed parallelism, autotuning off: with it on, deleting the exhausted iterator blocked
    # for ~15 s in a third of 832-image passes on the 2-core bench machine (0 of 6 with it
    # off, same throughput); a build or an uncached run makes one iterator per view.
    options = tf.data.Options()
    options.autotune.enabled = False
    ds = tf.data.Dataset.from_tensor_slices((pairs[:, 0], pairs[:, 1]))
    ds = ds.map(one, num_parallel_calls=_cpu_threads(), deterministic=True)
    return ds.batch(batch).prefetch(2).with_options(options)


def _cpu_threads() -> int:
    """The cores this process may use (a container's CPU set, not the host's count)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def is_oom(e: BaseException) -> bool:
    import tensorflow as tf

    return isinstance(e, (tf.errors.ResourceExhaustedError, MemoryError)) or "OOM" in str(e)[:200]


def extract_features(
    base_fn: Callable,
    images: np.ndarray,
    pairs: np.ndarray,
    spec: AugmentSpec,
    aug_seed: int,
    batch: int,
    on_batch: Callable[[int, np.ndarray], None] | None = None,
) -> np.ndarray | None:
    """Run the frozen base over (image, view) pairs, halving the batch on out-of-memory.

    With `on_batch(start, feats)` the features are handed over as they come (the cache
    writes them) and nothing is returned; otherwise they are returned in pair order.
    """
    out: list[np.ndarray] = []
    start = 0
    while start < len(pairs):
        try:
            ds = image_dataset(images, pairs[start:], spec, aug_seed, batch)
            for x in ds:
                f = base_fn(x).numpy()
                if on_batch is not None:
                    on_batch(start, f)
                else:
                    out.append(f)
                start += len(f)
        except Exception as e:
            if not is_oom(e) or batch == 1:
                raise
            batch = max(1, batch // 2)
            warnings.warn(f"out of memory extracting features; retrying with batch size {batch}", stacklevel=2)
    if on_batch is not None:
        return None
    return np.concatenate(out) if out else np.zeros((0,), np.float32)


class OnTheFly:
    """The uncached path: every epoch's augmented views go through the frozen base again.

    `dense` (optional) takes conv-cut features to the head cut (see heads.py).
    """

    def __init__(self, base_fn: Callable, images: np.ndarray, spec: AugmentSpec, aug_seed: int, batch: int,
                 dense: Callable[[np.ndarray], np.ndarray] | None = None):  # fmt: skip
        self.base_fn, self.images, self.spec = base_fn, images, spec
        self.aug_seed, self.batch, self.dense = aug_seed, batch, dense

    def _run(self, indices: np.ndarray, view: int) -> np.ndarray:
        pairs = np.stack([indices, np.full(len(indices), view)], axis=1).astype(np.int64)
        feats = extract_features(self.base_fn, self.images, pairs, self.spec, self.aug_seed, self.batch)
        return feats if self.dense is None else self.dense(feats)

    def clean(self, indices: np.ndarray) -> np.ndarray:
        return self._run(indices, 0)

    def augmented(self, indices: np.ndarray, epoch: int) -> np.ndarray:
        if self.spec.is_identity:
            return self.clean(indices)
        return self._run(indices, 1 + epoch)
