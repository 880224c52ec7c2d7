"""The epoch loop: Keras' EarlyStopping and ModelCheckpoint rules, checkpointed every epoch.

Every epoch's inputs are a pure function of (seed, epoch): the features of view 1 + e
(or 1 + e mod K), the batch order from `default_rng([seed, epoch])`. So a run killed after
epoch e and resumed from its checkpoint (weights, optimizer state, history, best-so-far)
continues exactly as if it had never stopped.

Checkpoint files carry their epoch in their name and `state.json`, written last and
atomically, says which ones are current: a crash between two writes leaves the previous
consistent state in place.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from fastheads.config import TrainConfig
from fastheads.pipeline import FeatureSource, is_oom
from fastheads.runio import read_npz_into, write_json, write_npz


@dataclass
class LoopState:
    epochs_done: int = 0
    history: dict[str, list[float]] = field(default_factory=dict)
    best: float = -math.inf
    best_epoch: int = 0  # 1-based; 0 = none yet
    wait: int = 0
    finished: bool = False
    n_train_used: int = 0
    n_val_used: int = 0
    feature_s: float = 0.0
    batch_size_used: int = 0  # the effective batch size: --batch-size, or less after out-of-memory halvings


def improved(monitor: str, current: float, best: float) -> bool:
    """Keras' rule: strictly better (min_delta 0); accuracies go up, losses down."""
    return current < best if monitor.endswith("loss") else current > best


def epoch_batches(cfg: TrainConfig, seed: int, epoch: int, n_train: int, n_val: int):
    """This epoch's training order and validation subset (the notebook's quirks with --faithful)."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(n_train)
    val = np.arange(n_val)
    if cfg.faithful:
        order = order[: max(1, n_train // cfg.batch_size) * cfg.batch_size]
        k = n_val // cfg.batch_size * cfg.batch_size
        if 0 < k < n_val:
            val = np.sort(rng.choice(n_val, size=k, replace=False))
    return order, val


def config_fingerprint(cfg: TrainConfig, seed: int) -> str:
    d = asdict(cfg)
    for k in ("out", "overwrite", "resume", "verbose", "repeats", "export"):
        d.pop(k)
    d["seed"] = seed
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Checkpoint:
    """Per-epoch state of one run under <run>/checkpoint/, for `train --resume`."""

    def __init__(self, folder: Path, fingerprint: str) -> None:
        self.folder, self.fingerprint = folder, fingerprint

    def save(self, state: LoopState, head) -> None:
        """The head and optimizer after `state.epochs_done` epochs; also the best weights if this epoch is the best.

        Arrays are written one at a time (a v2 head is 1.6 GB per copy), and the best epoch's
        weights live only on disk: nothing of the size of the head is kept beside it in memory.
        """
        e = state.epochs_done
        write_npz(self.folder / f"current-e{e}.npz", "v", _variables(head))
        if state.best_epoch == e and e > 0:
            write_npz(self.folder / f"best-e{e}.npz", "w", head.trainable_weights)
        write_json(self.folder / "state.json", {"fingerprint": self.fingerprint, **asdict(state)})
        keep = {f"current-e{e}.npz", f"best-e{state.best_epoch}.npz", "state.json"}
        for p in self.folder.glob("*.npz"):
            if p.name not in keep:
                p.unlink(missing_ok=True)

    def load(self, head) -> LoopState | None:
        """Restore head and optimizer; None when there is nothing (or nothing compatible) to resume."""
        path = self.folder / "state.json"
        if not path.is_file():
            return None
        saved = json.loads(path.read_text())
        if saved.pop("fingerprint") != self.fingerprint:
            return None
        state = LoopState(**saved)
        self.restore(head, state.epochs_done)
        return state

    def restore_best(self, head, best_epoch: int) -> None:
        """The trainable weights of the best epoch, as ModelCheckpoint(save_best_only) would have kept them."""
        read_npz_into(self.folder / f"best-e{best_epoch}.npz", "w", head.trainable_weights)

    def has(self, epochs_done: int) -> bool:
        return (self.folder / f"current-e{epochs_done}.npz").is_file()

    def restore(self, head, epochs_done: int) -> None:
        """Weights and optimizer state as they were after `epochs_done` epochs."""
        read_npz_into(self.folder / f"current-e{epochs_done}.npz", "v", _variables(head))

    def remove(self) -> None:
        for p in self.folder.glob("*"):
            p.unlink(missing_ok=True)
        if self.folder.is_dir():
            self.folder.rmdir()


def run_epochs(
    cfg: TrainConfig,
    head,
    source: FeatureSource,
    split: tuple[np.ndarray, np.ndarray],
    targets: tuple[np.ndarray, np.ndarray],
    seed: int,
    checkpoint: Checkpoint,
    say: Callable[[str], None],
) -> LoopState:
    """Train epoch by epoch; return the final state (the best epoch's weights are in `checkpoint`)."""
    train_idx, val_idx = split
    y_tr, y_val = targets
    state = LoopState()
    if cfg.monitor.endswith("loss"):
        state.best = math.inf
    if cfg.resume:
        restored = checkpoint.load(head)
        if restored is not None:
            state = restored
            say(f"fastheads: resuming after epoch {state.epochs_done} from {checkpoint.folder}")
    if not checkpoint.has(state.epochs_done):
        checkpoint.save(state, head)  # what an out-of-memory retry of the next epoch restarts from
    t0 = time.perf_counter()
    x_val = source.clean(val_idx)
    state.feature_s += time.perf_counter() - t0
    while not state.finished and state.epochs_done < cfg.epochs:
        epoch = state.epochs_done
        t0 = time.perf_counter()
        x_tr = source.augmented(train_idx, epoch)
        state.feature_s += time.perf_counter() - t0
        order, val_sel = epoch_batches(cfg, seed, epoch, len(train_idx), len(val_idx))
        state.n_train_used, state.n_val_used = len(order), len(val_sel)
        logs = _fit_epoch(head, state, cfg, checkpoint, (x_tr[order], y_tr[order]), (x_val[val_sel], y_val[val_sel]))
        for k, v in logs.items():
            state.history.setdefault(k, []).append(v)
        state.epochs_done = epoch + 1
        mark = ""
        if improved(cfg.monitor, logs[cfg.monitor], state.best):
            state.best, state.best_epoch, state.wait = logs[cfg.monitor], epoch + 1, 0
            mark = "  (best so far: checkpoint)"
        else:
            state.wait += 1
        say(
            f"Epoch {epoch + 1}/{cfg.epochs} - {time.perf_counter() - t0:.1f}s - "
            + " - ".join(f"{k}: {v:.4f}" for k, v in logs.items())
            + (f" - batch size {state.batch_size_used}" if state.batch_size_used != cfg.batch_size else "")
            + mark
        )
        if state.wait >= cfg.patience and state.wait > 0 and state.epochs_done < cfg.epochs:
            say(f"Early stopping: no improvement of {cfg.monitor} in {cfg.patience} epochs.")
            state.finished = True
        checkpoint.save(state, head)
    return state


def _fit_epoch(head, state: LoopState, cfg: TrainConfig, checkpoint: Checkpoint, train, val) -> dict[str, float]:
    """One epoch, as `head.fit(epochs=1)` would train it; out of memory restores the weights and retries it with
    half the batch (down to 1).

    The weights and optimizer state to restore are the checkpoint of the previous epoch,
    which `run_epochs` always has on disk, so no copy of them is kept in memory.

    The smaller batch is kept for the rest of the run (and a resumed run) and recorded in
    `state.batch_size_used`: it changes the numbers, so it must never go unnoticed.
    """
    batch = state.batch_size_used or cfg.batch_size
    epoch = state.epochs_done
    while True:
        try:
            logs = _epoch_steps(head).run(train, val, batch)
            break
        except Exception as e:
            if not is_oom(e) or batch == 1:
                raise
            smaller = max(1, batch // 2)
            warnings.warn(
                f"out of memory training epoch {epoch + 1} at batch size {batch}; retrying the epoch with "
                f"batch size {smaller}. The effective batch size changed (--batch-size {cfg.batch_size}), "
                "so the results differ from a run at that size; run.json records the batch size used.",
                stacklevel=3,
            )
            checkpoint.restore(head, epoch)  # undo the steps the failed attempt made
            batch = smaller
    state.batch_size_used = batch
    return logs


class EpochSteps:
    """Keras' own `train_step` and `test_step`, each compiled once per head, in `fit`'s order.

    `fit(epochs=1)` per epoch builds a tf.data adapter and iterators for the training and
    the validation arrays on every call: about 0.15 s, most of a warm cached run's 13
    epochs of a 40,970-parameter head. These steps are the ones `fit` runs (same loss,
    optimizer, metrics, batches in the given order, metrics reset before training and
    before validation), so the history is the same. Under a multi-replica strategy the
    epoch goes through `fit`, which splits batches and all-reduces gradients; so does an
    XLA-compiled head (GPUs), whose step this project could not check against `fit`.
    """

    def __init__(self, head) -> None:
        import tensorflow as tf

        self.head = head
        jit = bool(getattr(head, "jit_compile", False))  # XLA (Keras turns it on for GPUs): left to fit, untested here
        self.via_fit = head.distribute_strategy.num_replicas_in_sync > 1 or jit
        # Any batch size, one trace each: the last, smaller batch of an epoch does not trace again.
        spec = [tf.TensorSpec([None, *head.input_shape[1:]], tf.float32),
                tf.TensorSpec([None, *head.output_shape[1:]], tf.float32)]  # fmt: skip
        self._train = tf.function(lambda x, y: head.train_step((x, y)), input_signature=spec, jit_compile=jit)
        self._test = tf.function(lambda x, y: head.test_step((x, y)), input_signature=spec, jit_compile=jit)

    def _pass(self, step, x: np.ndarray, y: np.ndarray, batch: int) -> dict[str, float]:
        self.head.reset_metrics()
        for i in range(0, len(x), batch):
            step(x[i : i + batch], y[i : i + batch])
        return {k: float(v) for k, v in self.head.get_metrics_result().items()}  # what fit reports at epoch end

    def run(self, train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray], batch: int) -> dict:
        if self.via_fit:
            h = self.head.fit(*train, batch_size=batch, epochs=1, shuffle=False, verbose=0, validation_data=val)
            return {k: float(v[-1]) for k, v in h.history.items()}
        logs = self._pass(self._train, *(np.asarray(a, np.float32) for a in train), batch)
        val_logs = self._pass(self._test, *(np.asarray(a, np.float32) for a in val), batch)
        return dict(sorted({**logs, **{f"val_{k}": v for k, v in val_logs.items()}}.items()))  # fit's history order


def _epoch_steps(head) -> EpochSteps:
    steps = getattr(head, "_fastheads_steps", None)
    if steps is None:
        steps = EpochSteps(head)
        head._fastheads_steps = steps
    return steps


def _variables(head) -> list:
    if not head.optimizer.built:
        head.optimizer.build(head.trainable_variables)
    return [*head.trainable_weights, *head.optimizer.variables]
