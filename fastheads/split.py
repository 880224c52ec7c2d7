"""The 70/30 stratified split, drawn from the run's seed."""

from __future__ import annotations

import math

import numpy as np

from fastheads.errors import UserError


def stratified_split(labels: np.ndarray, val_split: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Return sorted (train, val) indices with every class in both parts.

    The validation size is ceil(val_split * N), as sklearn's train_test_split gives
    (63 of the course's 210 images); it is shared out over the classes in proportion to
    their size (largest remainders first), so unbalanced classes stay unbalanced alike.
    """
    labels = np.asarray(labels)
    if not 0 < val_split < 1:
        raise UserError(f"--val-split must be between 0 and 1 (exclusive), got {val_split:g}.")
    classes, counts = np.unique(labels, return_counts=True)
    if len(classes) < 2:
        raise UserError(f"the data has a single class ({int(classes[0])}); a classifier needs at least two.")
    if counts.min() < 2:
        c = int(classes[counts.argmin()])
        raise UserError(
            f"class {c} has {int(counts.min())} image(s); the stratified split needs at least 2 per class "
            "(one to train on, one to validate)."
        )
    n_val = math.ceil(val_split * len(labels))
    exact = counts * n_val / len(labels)
    per_class = np.clip(np.floor(exact).astype(int), 1, counts - 1)
    order = np.argsort(-(exact - np.floor(exact)), kind="stable")
    i = 0
    while per_class.sum() < n_val and i < 10 * len(order):
        c = order[i % len(order)]
        if per_class[c] < counts[c] - 1:
            per_class[c] += 1
        i += 1
    rng = np.random.default_rng(seed)
    val = []
    for c, k in zip(classes, per_class, strict=True):
        members = np.flatnonzero(labels == c)
        val.extend(rng.choice(members, size=int(k), replace=False).tolist())
    val_idx = np.sort(np.array(val, dtype=np.int64))
    train_idx = np.setdiff1d(np.arange(len(labels)), val_idx)
    return train_idx, val_idx
