"""Glue between a training configuration and the feature store: key, build with progress, read.

`StoreSource` is the cached twin of `pipeline.OnTheFly`: the training loop cannot tell
them apart, except that epoch e reads view 1 + (e mod K) instead of computing view 1 + e.
K (`--views`, default `--epochs`) belongs to the run, not to the entry: the entry holds
whichever views runs have needed so far.
"""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np

from fastheads.augment import AugmentSpec
from fastheads.backbone import cut_layer
from fastheads.cache_key import FORMAT_VERSION, KeyInputs, pixels_hash, weights_identity
from fastheads.config import TrainConfig
from fastheads.data import ImageSet
from fastheads.errors import UserError
from fastheads.feature_store import DamagedEntry, FeatureStore
from fastheads.preprocess import RESIZE_METHOD
from fastheads.store_io import RemotePath, is_url, load_npy, location, save_npy, size_bytes, write_whole


def key_inputs(cfg: TrainConfig, ds: ImageSet, precision: str, xla: bool) -> KeyInputs:
    import tensorflow as tf

    return KeyInputs(
        weights=weights_identity(cfg.weights, 0, None if is_url(cfg.cache_dir) else location(cfg.cache_dir)),
        pixels=pixels_hash(ds.images),
        n_images=len(ds),
        image_size=cfg.image_size,
        resize=RESIZE_METHOD,
        preprocessing="caffe",
        cut=cut_layer(cfg.arch),
        augment=cfg.augment.canonical(),
        augment_seed=cfg.augment_seed,
        precision=precision,
        xla=xla,
        dtype=cfg.cache_dtype,
        tensorflow=".".join(tf.__version__.split(".")[:2]),
    )


def open_entry(cfg: TrainConfig, ds: ImageSet, vgg, precision: str, xla: bool) -> FeatureStore:
    root = location(cfg.cache_dir)  # a local folder, or a URL (gs://, s3://, memory://): see store_io.py
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"--cache-dir {root}: cannot create it ({e.strerror}).") from e
    inputs = key_inputs(cfg, ds, precision, xla)
    shape = tuple(int(d) for d in vgg.get_layer(inputs.cut).output.shape[1:])
    return FeatureStore(root / inputs.key(), inputs, shape)


def run_views(cfg: TrainConfig) -> int:
    """K: the augmented views a run with `cfg` reads (0 without augmentation: every epoch is the clean view)."""
    return 0 if cfg.augment.is_identity else cfg.n_views


def build_entry(
    entry: FeatureStore,
    base_fn: Callable,
    images: np.ndarray,
    cfg: TrainConfig,
    views: list[int],
    say: Callable[[str], None],
    shard: tuple[int, int] = (0, 1),
) -> bool:
    """Build (or resume) these views of an entry, with a progress bar showing images/s and the time left."""
    if not cfg.verbose:
        return entry.build(base_fn, images, cfg.augment, views, shard)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    label = "features" if len(views) > 1 else ("clean view" if views == [0] else f"view {views[0]}")
    t0 = time.perf_counter()
    with Progress(
        TextColumn(label), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:.1f} img/s"), TimeRemainingColumn(), transient=False,
    ) as bar:  # fmt: skip
        task = bar.add_task("build", total=None, rate=0.0)
        seen = {"n": 0}

        def progress(n: int, total: int) -> None:
            seen["n"] += n
            rate = seen["n"] / max(time.perf_counter() - t0, 1e-9)
            bar.update(task, advance=n, total=total, rate=rate)

        return entry.build(base_fn, images, cfg.augment, views, shard, progress)


class StoreSource:
    """Features for training, read from the entry; each view is built when first needed, damaged rows are
    rebuilt, never used.

    With a `dense` function (frozen fc layers, see heads.py) each view is pushed through
    it once and kept under <entry>/derived/<head cut>/, so repeats and later runs of the
    same head read 4096 numbers per image instead of recomputing fc1 every epoch.
    """

    def __init__(self, entry: FeatureStore, k: int, ensure: Callable[[int], None],
                 dense: Callable[[np.ndarray], np.ndarray] | None = None, dense_name: str = "") -> None:  # fmt: skip
        self.entry, self.k, self.ensure, self.dense, self.dense_name = entry, k, ensure, dense, dense_name
        self._derived: dict[int, np.ndarray] = {}

    def _read(self, indices: np.ndarray, view: int) -> np.ndarray:
        for _ in range(3):
            self.ensure(view)
            try:
                return self.entry.read(indices, view)
            except DamagedEntry as e:
                print(f"fastheads: warning: feature store {self.entry.key}: {len(e.units)} damaged unit(s); rebuilding")
                self.entry.invalidate(e.units)
        raise UserError(f"{self.entry.path}: still damaged after rebuilding; remove it with `fastheads cache rm`.")

    def _head_input(self, indices: np.ndarray, view: int) -> np.ndarray:
        if self.dense is None:
            return self._read(indices, view)
        if view not in self._derived:
            self.ensure(view)  # a damaged view is rebuilt on use even when its derived file is intact
            self._derived[view] = self._derive(view)
        return self._derived[view][indices]

    def _derive(self, view: int) -> np.ndarray:
        path = self.entry.path / "derived" / self.dense_name / f"v{view:04d}.npy"
        if path.is_file():
            try:
                arr = load_npy(path)
                crc = json.loads((path.parent / f"{path.stem}.json").read_text())["crc"]
                if zlib.crc32(arr.tobytes()) == crc:
                    return arr
            except (OSError, ValueError, KeyError):
                pass  # damaged or half-written: recompute below
        arr = self.dense(self._read(np.arange(self.entry.n_images), view)).astype(np.float32)
        try:
            save_npy(path, arr)
            write_whole(path.parent / f"{path.stem}.json", json.dumps({"crc": zlib.crc32(arr.tobytes())}).encode())
        except UserError:
            pass  # a read-only shared store: keep it in memory only
        return arr

    def clean(self, indices: np.ndarray) -> np.ndarray:
        return self._head_input(indices, 0)

    def augmented(self, indices: np.ndarray, epoch: int) -> np.ndarray:
        if self.k == 0:
            return self.clean(indices)
        return self._head_input(indices, 1 + epoch % self.k)


def store_for_training(
    cfg: TrainConfig, ds: ImageSet, images: Callable[[], np.ndarray], bb, say: Callable[[str], None]
) -> StoreSource:
    """The source a cached run trains from; `images` (resized) are only computed if a view needs building."""
    entry = open_entry(cfg, ds, bb.vgg, bb.precision, bb.xla)
    k = run_views(cfg)
    have = entry.views_ready()
    if have > k:
        say(f"fastheads: feature store hit: {entry.path}")
    else:
        say(f"fastheads: feature store {entry.path}: {have} of the {k + 1} views this run may read are ready; "
            "the others are computed when an epoch first needs them")  # fmt: skip

    def ensure(view: int) -> None:
        for _ in range(3):  # a concurrent repair may forget a unit this build just wrote: build again
            if entry.view_ready(view) or build_entry(entry, bb.base_fn, images(), cfg, [view], say):
                return
        raise UserError(f"{entry.path}: view {view} could not be built")

    from fastheads.heads import frozen_dense_fn, head_cut

    dense = frozen_dense_fn(bb.pristine_top, cfg.arch, cfg.train_layers)
    return StoreSource(entry, k, ensure, dense, head_cut(cfg.arch, cfg.train_layers))


def build_cache(cfg: TrainConfig, shard: tuple[int, int] = (0, 1)) -> FeatureStore:
    """Build (or resume, or find) the entry a training run with `cfg` would use; nothing is trained."""
    from fastheads.backbone import prepare
    from fastheads.data import load_images
    from fastheads.preprocess import resize_images

    cfg = cfg.replace(cache=True)  # what is validated is a store's configuration (--views' limit included)
    cfg.validate()
    i, n = shard
    if not (n >= 1 and 0 <= i < n):
        raise UserError(f"--shard must be i/n with 0 <= i < n, got {i}/{n}.")
    say: Callable[[str], None] = print if cfg.verbose else (lambda s: None)
    ds = load_images(cfg.data, cfg.classes, cfg.labels_csv)
    bb = prepare(cfg.weights, cfg.arch, cfg.image_size, cfg.precision, cfg.xla, cfg.strategy)
    entry = open_entry(cfg, ds, bb.vgg, bb.precision, bb.xla)
    k = run_views(cfg)
    if entry.ready(k):
        say(f"fastheads: feature store hit: {entry.path} (views 0..{k} ready)")
        return entry
    done = len(entry.done_units())
    say(f"fastheads: building feature store {entry.path} ({entry.n_images} images x {k + 1} views"
        + (f", {done} units of 32 already there" if done else "") + ")")  # fmt: skip
    images = resize_images(ds.images, cfg.image_size)
    complete = build_entry(entry, bb.base_fn, images, cfg, list(range(k + 1)), say, shard)
    say(f"fastheads: entry {entry.key} " + (f"has views 0..{k}" if complete else f"has its shard {i}/{n} done"))
    return entry


def stored_entry(path: Path | RemotePath) -> FeatureStore | None:
    """An existing entry, rebuilt from its own metadata (None when that is missing, unreadable or of an older format)."""
    try:
        meta = json.loads((path / "features" / "zarr.json").read_text())
        inputs = KeyInputs(**meta["attributes"]["fastheads"]["key_inputs"])
        return FeatureStore(path, inputs, tuple(meta["shape"][2:])) if inputs.format == FORMAT_VERSION else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def describe_entry(path: Path | RemotePath) -> dict:
    """A human summary of one entry for `fastheads cache ls`."""
    entry = stored_entry(path)
    meta = asdict(entry.inputs) if entry else {}
    try:
        aug_text = AugmentSpec.from_dict(json.loads(meta["augment"])).describe()
    except (KeyError, TypeError, ValueError):
        aug_text = "?"
    if entry is None:
        status, views = "unreadable or older format: remove it with `fastheads cache rm`", "?"
    else:
        done = entry.done_units()  # one listing of the markers (a remote store pays per listing)
        built = entry.built_views(done)
        views = "none" if not built else f"clean + {len(built) - 1}" if built[0] == 0 else f"{len(built)} (no clean)"
        whole = {u for v in built for u in entry.units_of_view(v)}
        status = "ready" if done <= whole else "partial"  # units of a view not finished yet
    return {
        "key": path.name,
        "status": status,
        "images": meta.get("n_images"),
        "views": views,
        "cut": meta.get("cut"),
        "size": meta.get("image_size"),
        "precision": meta.get("precision"),
        "dtype": meta.get("dtype"),
        "weights": _short(str(meta.get("weights", "?"))),
        "augment": aug_text,
        "bytes": size_bytes(path),
    }


def _short(weights_id: str) -> str:
    """A file's content digest is shortened; "none:he-uniform:seed=0" and "imagenet" are shown whole."""
    return weights_id if len(weights_id) <= 28 else weights_id[:16] + "…"


def verify_entry(path: Path | RemotePath) -> str:
    """'ok (n views)', 'not checked: ...', or 'DAMAGED: n rows' (then its damaged units are forgotten)."""
    entry = stored_entry(path)
    if entry is None:
        return "not checked: unreadable metadata or an older format"
    views = entry.built_views()
    bad = entry.verify(views)
    if not bad:
        return f"ok ({len(views)} views)"
    entry.invalidate({entry.unit_of(i, v) for i, v in bad})
    return f"DAMAGED: {len(bad)} rows; they will be rebuilt on next use"
