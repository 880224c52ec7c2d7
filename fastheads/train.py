"""Training: the course's SGD/EarlyStopping/ModelCheckpoint loop over a feature source.

The head sees only features, so the same loop serves the uncached path (features computed
on the fly, every epoch) and the feature store. Each epoch trains as `head.fit(epochs=1)`
would (Keras' own train and test steps, see loop.EpochSteps) on that epoch's features in
a batch order drawn from (seed, epoch); EarlyStopping and the best
checkpoint follow Keras' rules (strict improvement, `patience` epochs without one).
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from fastheads import backbone, heads
from fastheads.config import TrainConfig, make_config
from fastheads.data import ImageSet, load_images
from fastheads.errors import UserError
from fastheads.loop import Checkpoint, config_fingerprint, run_epochs
from fastheads.pipeline import FeatureSource, OnTheFly
from fastheads.preprocess import RESIZE_METHOD, resize_images
from fastheads.runio import read_npz_into, save_model, versions, write_json, write_npz
from fastheads.split import stratified_split

HEAD_FILE = "head.weights.npz"  # --export best: the trained layers of a repeat without model.keras


@dataclass
class RunResult:
    out_dir: Path
    history: dict[str, list[float]]
    best_epoch: int  # 1-based, the epoch whose weights were exported
    best_value: float
    stopped_epoch: int  # last epoch trained (1-based)
    model_path: Path | None  # None: --export best and another repeat was better (see head.weights.npz)
    record: dict = field(repr=False)


@dataclass
class TrainResult:
    out: Path
    runs: list[RunResult]
    summary: dict

    @property
    def history(self) -> dict[str, list[float]]:
        return self.runs[0].history


def _existing_models(out: Path) -> list[Path]:
    found = [out / "model.keras", *sorted(out.glob("run_*/model.keras")), *sorted(out.glob(f"run_*/{HEAD_FILE}"))]
    return [p for p in found if p.exists()]


def check_out_dir(cfg: TrainConfig) -> Path:
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder.")
    existing = _existing_models(out)
    if existing and not (cfg.overwrite or cfg.resume):
        raise UserError(
            f"--out {out}: already holds {existing[0]}; pass --overwrite to replace it or choose another --out."
        )
    try:  # fail now, not after an hour of feature extraction
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".fastheads-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UserError(f"--out {out}: cannot write there ({e.strerror}); choose another folder.") from e
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
    bb = backbone.prepare(cfg.weights, cfg.arch, cfg.image_size, cfg.precision, cfg.xla, cfg.strategy)
    say(f"fastheads: {len(ds)} images, {ds.n_classes} classes from {ds.source}")
    say(f"fastheads: {bb.weights_desc}; frozen base at {bb.precision}, XLA {'on' if bb.xla else 'off'}"
        + ("" if bb.strategy_desc == "default x1" else f", strategy {bb.strategy_desc}"))  # fmt: skip
    resized = functools.cache(lambda: resize_images(ds.images, cfg.image_size))  # a store hit never needs it
    source: FeatureSource
    if cfg.cache:
        from fastheads.cache import store_for_training

        source = store_for_training(cfg, ds, resized, bb, say)
    else:
        dense = heads.frozen_dense_fn(bb.pristine_top, cfg.arch, cfg.train_layers)
        source = OnTheFly(bb.base_fn, resized(), cfg.augment, cfg.augment_seed, cfg.batch_size, dense)
    runs = []
    for r in range(cfg.repeats):
        run_dir = out if cfg.repeats == 1 else out / f"run_{r + 1:02d}"
        if cfg.repeats > 1:
            say(f"--- repeat {r + 1}/{cfg.repeats} (seed {cfg.seed + r})")
        done = finished_run(run_dir, cfg, cfg.seed + r) if cfg.resume else None
        if done is not None:
            say(f"fastheads: {run_dir} already finished; kept as it is")
            runs.append(done)
            continue
        runs.append(train_one(cfg, ds, bb, source, cfg.seed + r, run_dir, say))
    best = best_run(runs, cfg.monitor)
    for run in runs if cfg.export == "every" else [best]:  # --export best: only now is it known which repeat
        if run.model_path is None:  # (or a resumed set of repeats that an earlier --export best left head-only)
            run.model_path = export_from_head(cfg, bb, ds.n_classes, run)
            say(f"fastheads: {run.out_dir.name}: wrote {run.model_path}")
    summary = summarize(cfg, runs)
    if cfg.repeats > 1:
        write_json(out / "summary.json", summary)
        from fastheads.report import report_runs

        report_runs([r.out_dir for r in runs], out, title=describe(cfg))
        say(
            f"fastheads: {cfg.repeats} repeats: best {cfg.monitor} "
            f"{summary['best_value_mean']:.4f} ± {summary['best_value_std']:.4f}"
        )
    return TrainResult(out, runs, summary)


def finished_run(run_dir: Path, cfg: TrainConfig, seed: int) -> RunResult | None:
    """A run of this very configuration that completed earlier (for --resume with repeats)."""
    import json

    try:
        record = json.loads((run_dir / "run.json").read_text())
        history = json.loads((run_dir / "history.json").read_text())
    except (OSError, ValueError):
        return None
    model = run_dir / "model.keras"
    if record.get("fingerprint") != config_fingerprint(cfg, seed) or not (
        model.is_file() or (run_dir / HEAD_FILE).is_file()
    ):
        return None
    return RunResult(run_dir, history, record["best_epoch"], record["best_value"], record["stopped_epoch"],
                     model if model.is_file() else None, record)  # fmt: skip


def best_run(runs: list[RunResult], monitor: str) -> RunResult:
    """The repeat whose monitored value is best (lowest for a loss); the first of equals."""
    sign = -1.0 if monitor.endswith("loss") else 1.0
    return max(runs, key=lambda r: sign * r.best_value)


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
    """The new head, built and compiled inside the strategy's scope: Keras then splits each
    training batch across the replicas and all-reduces the gradients (see distribute.py)."""
    import contextlib

    import keras

    for name in sorted(bb.trained_top):  # an earlier run in this process trained them: back to the loaded weights
        bb.vgg.get_layer(name).set_weights(bb.pristine_top[name])
    bb.trained_top.clear()
    bb.trained_top.update(heads.trained_vgg_layers(cfg.arch, cfg.train_layers))  # before training: a crash counts
    multi = bb.strategy is not None and bb.strategy.num_replicas_in_sync > 1
    with bb.strategy.scope() if multi else contextlib.nullcontext():
        head = heads.build_head(bb.vgg, cfg.arch, cfg.train_layers, n_classes, seed)
        lr = keras.optimizers.schedules.InverseTimeDecay(cfg.lr, decay_steps=1, decay_rate=cfg.decay)
        head.compile(
            optimizer=keras.optimizers.SGD(learning_rate=lr, momentum=cfg.momentum, nesterov=cfg.nesterov),
            loss="categorical_crossentropy",
            metrics=["categorical_accuracy"],
        )
        if multi:
            head.optimizer.build(head.trainable_variables)  # its slots must be mirrored too
    return head


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
    y = keras.utils.to_categorical(ds.labels, ds.n_classes)
    head = make_head(cfg, bb, ds.n_classes, seed)
    checkpoint = Checkpoint(run_dir / "checkpoint", config_fingerprint(cfg, seed))
    state = run_epochs(cfg, head, source, (train_idx, val_idx), (y[train_idx], y[val_idx]), seed, checkpoint, say)
    best, best_epoch, stopped = state.best, state.best_epoch, state.epochs_done
    if best_epoch:
        checkpoint.restore_best(head, best_epoch)
    t_export = time.perf_counter()
    model_path: Path | None = None
    if cfg.export == "every" or cfg.repeats == 1:
        model_path = run_dir / "model.keras"
        save_model(heads.stitch_full_model(bb.vgg, head, cfg.arch, cfg.train_layers), model_path)
        (run_dir / HEAD_FILE).unlink(missing_ok=True)  # an earlier configuration's: never to be exported
    else:  # the trained layers only; the best repeat's full model is exported when all are done
        write_npz(run_dir / HEAD_FILE, "w", head.trainable_weights)
        (run_dir / "model.keras").unlink(missing_ok=True)  # an earlier configuration's: never to be mistaken for ours
    export_s = time.perf_counter() - t_export
    total_s = time.perf_counter() - t_start
    record = {
        "config": _config_dict(cfg),
        "seed": seed,
        "fingerprint": checkpoint.fingerprint,
        "data": {"source": ds.source, "n_images": len(ds), "class_names": ds.class_names},
        "split": {"train": train_idx.tolist(), "val": val_idx.tolist()},
        "training_images_per_epoch": state.n_train_used,
        "batch_size_used": state.batch_size_used or cfg.batch_size,
        "validation_images_per_epoch": state.n_val_used,
        "weights": bb.weights_desc,
        "precision": bb.precision,
        "xla": bb.xla,
        "strategy": bb.strategy_desc,
        "resize": RESIZE_METHOD,
        "feature_source": "cache" if cfg.cache else "on the fly",
        "best_epoch": best_epoch,
        "best_value": best,
        "stopped_epoch": stopped,
        "timings_s": {
            "total": total_s,
            "features": state.feature_s,
            "export": export_s,
            "head": total_s - state.feature_s - export_s,
        },  # fmt: skip
        "versions": versions(),
    }
    write_json(run_dir / "history.json", state.history)
    write_json(run_dir / "run.json", record)
    from fastheads.plots import plot_curves

    plot_curves(state.history, run_dir / "curves.png", title=describe(cfg), best_epoch=best_epoch)
    checkpoint.remove()
    wrote = model_path or run_dir / HEAD_FILE
    say(f"fastheads: best epoch {best_epoch}/{stopped} ({cfg.monitor} {best:.4f}); wrote {wrote} in {total_s:.1f}s")
    return RunResult(run_dir, state.history, best_epoch, best, stopped, model_path, record)


def export_from_head(cfg: TrainConfig, bb: backbone.Backbone, n_classes: int, run: RunResult) -> Path:
    """Write a run's full model.keras from the trained layers it kept in head.weights.npz."""
    head = make_head(cfg, bb, n_classes, run.record["seed"])
    read_npz_into(run.out_dir / HEAD_FILE, "w", head.trainable_weights)
    path = run.out_dir / "model.keras"
    save_model(heads.stitch_full_model(bb.vgg, head, cfg.arch, cfg.train_layers), path)
    return path


def describe(cfg: TrainConfig) -> str:
    head = "v2 (block4_pool + 4096-4096)" if cfg.arch == "v2" else f"train-layers {cfg.train_layers}"
    return f"VGG16 {head}, augment {cfg.augment.describe()}, {cfg.epochs} epochs, lr {cfg.lr:g}"


def _config_dict(cfg: TrainConfig) -> dict:
    d = asdict(cfg)
    d["augment"] = asdict(cfg.augment)
    return d
