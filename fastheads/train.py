"""Training: the course's SGD/EarlyStopping/ModelCheckpoint loop over a feature source.

The head sees only features, so the same loop serves the uncached path (features computed
on the fly, every epoch) and the feature store. Each epoch is `head.fit(epochs=1)` on that
epoch's features in a batch order drawn from (seed, epoch); EarlyStopping and the best
checkpoint follow Keras' rules (strict improvement, `patience` epochs without one).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from fastheads import backbone, heads
from fastheads.config import TrainConfig, make_config
from fastheads.data import ImageSet, load_images
from fastheads.errors import UserError
from fastheads.pipeline import FeatureSource, OnTheFly
from fastheads.preprocess import RESIZE_METHOD, resize_images
from fastheads.runio import save_model, versions, write_json
from fastheads.split import stratified_split


@dataclass
class RunResult:
    out_dir: Path
    history: dict[str, list[float]]
    best_epoch: int  # 1-based, the epoch whose weights were exported
    best_value: float
    stopped_epoch: int  # last epoch trained (1-based)
    model_path: Path
    record: dict = field(repr=False)


@dataclass
class TrainResult:
    out: Path
    runs: list[RunResult]
    summary: dict

    @property
    def history(self) -> dict[str, list[float]]:
        return self.runs[0].history


def _improved(monitor: str, current: float, best: float) -> bool:
    return current < best if monitor.endswith("loss") else current > best


def _existing_models(out: Path) -> list[Path]:
    return [p for p in [out / "model.keras", *sorted(out.glob("run_*/model.keras"))] if p.exists()]


def check_out_dir(cfg: TrainConfig) -> Path:
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder.")
    existing = _existing_models(out)
    if existing and not (cfg.overwrite or cfg.resume):
        raise UserError(
            f"--out {out}: already holds {existing[0]}; pass --overwrite to replace it or choose another --out."
        )
    return out


def train(config: TrainConfig | None = None, **kwargs) -> TrainResult:
    """Train the configured head (repeats included) and export each run. Notebook entry point.

    `fastheads.train(data="flowers.h5", weights="vgg16_weights.h5", train_layers=2)`
    """
    cfg = (config.replace(**kwargs) if kwargs else config) if config else make_config(**kwargs)
    cfg.validate()
    say: Callable[[str], None] = print if cfg.verbose else (lambda s: None)
    ds = load_images(cfg.data, cfg.classes, cfg.labels_csv)
    out = check_out_dir(cfg)
    bb = backbone.prepare(cfg.weights, cfg.arch, cfg.image_size, cfg.precision, cfg.xla)
    say(f"fastheads: {len(ds)} images, {ds.n_classes} classes from {ds.source}")
    say(f"fastheads: {bb.weights_desc}; frozen base at {bb.precision}, XLA {'on' if bb.xla else 'off'}")
    images = resize_images(ds.images, cfg.image_size)
    source: FeatureSource
    if cfg.cache:
        from fastheads.cache import store_for_training

        source = store_for_training(cfg, ds, images, bb, say)
    else:
        source = OnTheFly(bb.base_fn, images, cfg.augment, cfg.augment_seed, cfg.batch_size)
    runs = []
    for r in range(cfg.repeats):
        run_dir = out if cfg.repeats == 1 else out / f"run_{r + 1:02d}"
        if cfg.repeats > 1:
            say(f"--- repeat {r + 1}/{cfg.repeats} (seed {cfg.seed + r})")
        runs.append(train_one(cfg, ds, bb, source, cfg.seed + r, run_dir, say))
    summary = summarize(cfg, runs)
    if cfg.repeats > 1:
        write_json(out / "summary.json", summary)
        say(
            f"fastheads: {cfg.repeats} repeats: best {cfg.monitor} "
            f"{summary['best_value_mean']:.4f} ± {summary['best_value_std']:.4f}"
        )
    return TrainResult(out, runs, summary)


def summarize(cfg: TrainConfig, runs: list[RunResult]) -> dict:
    vals = np.array([r.best_value for r in runs])
    return {
        "monitor": cfg.monitor,
        "runs": [str(r.out_dir) for r in runs],
        "best_epochs": [r.best_epoch for r in runs],
        "best_values": vals.tolist(),
        "best_value_mean": float(vals.mean()),
        "best_value_std": float(vals.std()),
    }


def make_head(cfg: TrainConfig, bb: backbone.Backbone, n_classes: int, seed: int):
    import keras

    for name, w in bb.pristine_top.items():
        bb.vgg.get_layer(name).set_weights(w)
    head = heads.build_head(bb.vgg, cfg.arch, cfg.train_layers, n_classes, seed)
    lr = keras.optimizers.schedules.InverseTimeDecay(cfg.lr, decay_steps=1, decay_rate=cfg.decay)
    head.compile(
        optimizer=keras.optimizers.SGD(learning_rate=lr, momentum=cfg.momentum, nesterov=cfg.nesterov),
        loss="categorical_crossentropy",
        metrics=["categorical_accuracy"],
    )
    return head


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


def train_one(
    cfg: TrainConfig,
    ds: ImageSet,
    bb: backbone.Backbone,
    source: FeatureSource,
    seed: int,
    run_dir: Path,
    say: Callable[[str], None],
) -> RunResult:
    import keras

    t_start = time.perf_counter()
    train_idx, val_idx = stratified_split(ds.labels, cfg.val_split, seed)
    n_classes = ds.n_classes
    y = keras.utils.to_categorical(ds.labels, n_classes)
    y_tr, y_val = y[train_idx], y[val_idx]
    head = make_head(cfg, bb, n_classes, seed)
    t_feat = time.perf_counter()
    x_val = source.clean(val_idx)
    feat_s = time.perf_counter() - t_feat
    history: dict[str, list[float]] = {}
    best, best_epoch, best_weights, wait, stopped = math.inf, 0, None, 0, 0
    if not cfg.monitor.endswith("loss"):
        best = -math.inf
    n_val_used, n_train_used = len(val_idx), len(train_idx)
    for epoch in range(cfg.epochs):
        t0 = time.perf_counter()
        x_tr = source.augmented(train_idx, epoch)
        t1 = time.perf_counter()
        feat_s += t1 - t0
        order, val_sel = epoch_batches(cfg, seed, epoch, len(train_idx), len(val_idx))
        n_val_used, n_train_used = len(val_sel), len(order)
        h = head.fit(
            x_tr[order], y_tr[order], batch_size=cfg.batch_size, epochs=1, shuffle=False, verbose=0,
            validation_data=(x_val[val_sel], y_val[val_sel]),
        )  # fmt: skip
        logs = {k: float(v[-1]) for k, v in h.history.items()}
        for k, v in logs.items():
            history.setdefault(k, []).append(v)
        stopped = epoch + 1
        current = logs[cfg.monitor]
        mark = ""
        if _improved(cfg.monitor, current, best):
            best, best_epoch, wait, mark = current, epoch + 1, 0, "  (best so far: checkpoint)"
            best_weights = [w.numpy().copy() for w in head.trainable_weights]
        else:
            wait += 1
        say(
            f"Epoch {epoch + 1}/{cfg.epochs} - {time.perf_counter() - t0:.1f}s - "
            + " - ".join(f"{k}: {v:.4f}" for k, v in logs.items())
            + mark
        )
        if wait >= cfg.patience and wait > 0 and epoch + 1 < cfg.epochs:
            say(f"Early stopping: no improvement of {cfg.monitor} in {cfg.patience} epochs.")
            break
    if best_weights is not None:
        for var, w in zip(head.trainable_weights, best_weights, strict=True):
            var.assign(w)
    full = heads.stitch_full_model(bb.vgg, head, cfg.arch)
    model_path = run_dir / "model.keras"
    save_model(full, model_path)
    total_s = time.perf_counter() - t_start
    record = {
        "config": _config_dict(cfg),
        "seed": seed,
        "data": {"source": ds.source, "n_images": len(ds), "class_names": ds.class_names},
        "split": {"train": train_idx.tolist(), "val": val_idx.tolist()},
        "training_images_per_epoch": n_train_used,
        "validation_images_per_epoch": n_val_used,
        "weights": bb.weights_desc,
        "precision": bb.precision,
        "xla": bb.xla,
        "resize": RESIZE_METHOD,
        "feature_source": "cache" if cfg.cache else "on the fly",
        "best_epoch": best_epoch,
        "best_value": best,
        "stopped_epoch": stopped,
        "timings_s": {"total": total_s, "features": feat_s, "head": total_s - feat_s},
        "versions": versions(),
    }
    write_json(run_dir / "history.json", history)
    write_json(run_dir / "run.json", record)
    from fastheads.plots import plot_curves

    plot_curves(history, run_dir / "curves.png", title=describe(cfg), best_epoch=best_epoch)
    say(
        f"fastheads: best epoch {best_epoch}/{stopped} ({cfg.monitor} {best:.4f}); wrote {model_path} in {total_s:.1f}s"
    )
    return RunResult(run_dir, history, best_epoch, best, stopped, model_path, record)


def describe(cfg: TrainConfig) -> str:
    head = "v2 (block4_pool + 4096-4096)" if cfg.arch == "v2" else f"train-layers {cfg.train_layers}"
    return f"VGG16 {head}, augment {cfg.augment.describe()}, {cfg.epochs} epochs, lr {cfg.lr:g}"


def _config_dict(cfg: TrainConfig) -> dict:
    d = asdict(cfg)
    d["augment"] = asdict(cfg.augment)
    return d
