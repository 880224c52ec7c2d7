"""The feature store: frozen-base outputs of every image, a clean view and augmented views, in zarr.

One entry per key (see cache_key.py) under the cache root:

    <root>/<key>/features      zarr array (N, 1 + MAX_VIEWS, *feature_shape), one chunk per (image, view)
    <root>/<key>/units/        one marker per finished build unit, with a CRC32 per stored row

View v of an image is a pure function of (augmentation seed, image, v), so the number of
views a run uses (K, `--views`) is not part of the key: a 13-epoch and a 26-epoch run
share views 0..13, and a run that needs more views adds them. The array is shaped for
MAX_VIEWS; chunks that were never written take no space.

Work is cut into fixed units of 32 (image, view) pairs in view-major order, so a build
that is killed resumes with the units it had not finished and produces exactly the bytes
an uninterrupted build would. Training builds lazily (`build(views=...)`): a view is
computed when an epoch first needs it, so a run that stops early never pays for the
views it would not have used. The units are the same whatever order they are built in
(each batch is one unit), so an entry grown view by view holds the same bytes as one
built in one go. A view is read only when every unit holding its rows is marked done. A
file lock serialises builders of one entry; readers check every row's CRC and rebuild
what is damaged instead of using it.

The root may be a local folder or an fsspec URL (gs://, s3://, memory://): see
store_io.py for what changes remotely (no locks) and why the guarantees still hold.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np

from fastheads.augment import AugmentSpec
from fastheads.cache_key import MAX_VIEWS, UNIT, KeyInputs
from fastheads.errors import UserError
from fastheads.pipeline import extract_features
from fastheads.store_io import RemotePath, location, lock, rmtree, write_whole


class DamagedEntry(Exception):
    def __init__(self, units: set[int]) -> None:
        super().__init__(f"damaged units {sorted(units)[:8]}")
        self.units = units


def contiguous_runs(pairs: np.ndarray) -> list[tuple[int, int]]:
    """[lo, hi) ranges of `pairs` (image, view) with one view and consecutive images."""
    breaks = np.flatnonzero((np.diff(pairs[:, 1]) != 0) | (np.diff(pairs[:, 0]) != 1)) + 1
    edges = [0, *breaks.tolist(), len(pairs)]
    return list(zip(edges[:-1], edges[1:], strict=True))


def crc_rows(rows: np.ndarray) -> list[int]:
    return [zlib.crc32(np.ascontiguousarray(r).tobytes()) for r in rows]


class FeatureStore:
    """One entry of the store. Create with `open_entry`; build with `build`; read with `read`."""

    def __init__(self, path: Path | RemotePath, inputs: KeyInputs, feature_shape: tuple[int, ...]) -> None:
        self.path, self.inputs, self.feature_shape = path, inputs, tuple(feature_shape)
        # Capacity: view 0 (clean) + augmented ones. MAX_VIEWS is the array's shape: changing it needs a format bump.
        self.n_images, self.n_views = inputs.n_images, 1 + MAX_VIEWS
        self.total = self.n_images * self.n_views
        self._array = None
        self._view_crcs: dict[int, np.ndarray] = {}

    # ------------------------------------------------------------------ layout
    @property
    def key(self) -> str:
        return self.path.name

    def unit_pairs(self, unit: int) -> np.ndarray:
        flat = np.arange(unit * UNIT, min((unit + 1) * UNIT, self.total))
        return np.stack([flat % self.n_images, flat // self.n_images], axis=1).astype(np.int64)

    def units_of_view(self, view: int) -> range:
        lo = view * self.n_images
        return range(lo // UNIT, (lo + self.n_images - 1) // UNIT + 1)

    def view_ready(self, view: int, done: set[int] | None = None) -> bool:
        """Every unit holding a row of this view is written and marked."""
        done = self.done_units() if done is None else done
        return all(u in done for u in self.units_of_view(view))

    def ready(self, views: int) -> bool:
        """The clean view and augmented views 1..views can all be read."""
        return self.views_ready() > views

    def views_ready(self) -> int:
        """How many views, from view 0 on, can be read (for `cache ls`)."""
        done = self.done_units()
        return next(v for v in range(self.n_views + 1) if v == self.n_views or not self.view_ready(v, done))

    def built_views(self, done: set[int] | None = None) -> list[int]:
        """Every view that can be read, in order (a lazily grown entry has no gaps, a sharded build may)."""
        done = self.done_units() if done is None else done
        touched = sorted({int(v) for u in done for v in np.unique(self.unit_pairs(u)[:, 1])})
        return [v for v in touched if self.view_ready(v, done)]

    def _marker(self, unit: int) -> Path:
        return self.path / "units" / f"u{unit:06d}.json"

    def done_units(self) -> set[int]:
        d = self.path / "units"
        return {int(p.stem[1:]) for p in d.glob("u*.json")} if d.is_dir() else set()

    def array(self, mode: str = "r"):
        import zarr

        if self._array is None or mode != "r":
            self._array = zarr.open_array(str(self.path / "features"), mode=mode)  # a path or an fsspec URL
        return self._array

    def _create(self) -> None:
        import zarr

        if (self.path / "features" / "zarr.json").is_file():
            return
        try:
            self._create_array()
        except zarr.errors.ContainsArrayError:
            pass  # a remote builder created it first: the same metadata, byte for byte

    def _create_array(self) -> None:
        import zarr

        zarr.create_array(
            store=str(self.path / "features"),
            shape=(self.n_images, self.n_views, *self.feature_shape),
            chunks=(1, 1, *self.feature_shape),
            dtype=self.inputs.dtype,
            compressors=zarr.codecs.ZstdCodec(level=3),  # ReLU/max-pool outputs are mostly zeros
            fill_value=0,
            attributes={"fastheads": {"key_inputs": asdict(self.inputs)}},  # never changes: remote builders agree
        )

    # ------------------------------------------------------------------ building
    def build(
        self,
        base_fn: Callable,
        images: np.ndarray,
        spec: AugmentSpec,
        views: list[int],
        shard: tuple[int, int] = (0, 1),
        progress: Callable[[int, int], None] | None = None,
    ) -> bool:
        """Compute the missing units of these views (this shard's share); True when all of them can be read."""
        i, n = shard
        if max(views) >= self.n_views:
            raise UserError(
                f"--views: an entry holds at most {self.n_views - 1} augmented views, asked for {max(views)}."
            )
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            with lock(self.path / ".lock-create"):
                self._create()
        except OSError as e:
            raise UserError(f"--cache-dir {self.path.parent}: cannot create the feature store ({e.strerror}).") from e
        wanted = sorted({u for v in views for u in self.units_of_view(v)})
        with lock(self.path / f".lock-build-{i}of{n}"):
            done = self.done_units()
            todo = [u for u in wanted if u % n == i and u not in done]
            if todo:
                self._compute(todo, base_fn, images, spec, progress)
        done = self.done_units()
        return all(u in done for u in wanted)

    def _compute(self, todo: list[int], base_fn, images, spec, progress) -> None:
        arr = self.array("r+")
        pairs = np.concatenate([self.unit_pairs(u) for u in todo])
        dtype = np.dtype(self.inputs.dtype)
        buf: list[np.ndarray] = []
        state = {"unit": 0}  # index into todo of the next unit to write

        def on_batch(start: int, feats: np.ndarray) -> None:
            buf.append(feats.astype(dtype))
            have = sum(len(b) for b in buf)
            while state["unit"] < len(todo):
                u = todo[state["unit"]]
                up = self.unit_pairs(u)
                if have < len(up):
                    break
                rows = np.concatenate(buf)
                unit_rows, rest = rows[: len(up)], rows[len(up) :]
                for lo, hi in contiguous_runs(up):  # one zarr call per run: its chunks are written concurrently
                    arr[int(up[lo, 0]) : int(up[hi - 1, 0]) + 1, int(up[lo, 1])] = unit_rows[lo:hi]
                crcs = crc_rows(unit_rows)
                write_whole(self._marker(u), json.dumps({"crc": crcs}).encode())  # after the unit's chunks
                buf[:] = [rest] if len(rest) else []
                have -= len(up)
                state["unit"] += 1
                if progress:
                    progress(len(up), len(pairs))

        try:
            # One unit per replica per batch: each device sees the batch shape a single-device build uses.
            batch = UNIT * getattr(base_fn, "replicas", 1)
            extract_features(base_fn, images, pairs, spec, self.inputs.augment_seed, batch, on_batch)
        except OSError as e:
            raise UserError(f"{self.path}: writing features failed ({e.strerror}); rerun to resume.") from e

    # ------------------------------------------------------------------ reading
    def crcs_of_view(self, view: int) -> np.ndarray:
        """The CRC32 of each image's row in this view, from the markers of the units that hold it."""
        if view in self._view_crcs:
            return self._view_crcs[view]
        crcs = np.zeros(self.n_images, np.uint32)
        for u in self.units_of_view(view):
            try:
                unit_crcs = json.loads(self._marker(u).read_text())["crc"]
            except (OSError, ValueError, KeyError):  # a marker gone (a concurrent repair) or unreadable: rebuild it
                raise DamagedEntry({u}) from None
            pairs = self.unit_pairs(u)
            if len(unit_crcs) != len(pairs):
                raise DamagedEntry({u})
            for (img, v), c in zip(pairs, unit_crcs, strict=True):
                if v == view:
                    crcs[img] = c
        self._view_crcs[view] = crcs
        return crcs

    def read(self, indices: np.ndarray, view: int) -> np.ndarray:
        """Rows (image, view) as float32, every one checked against its CRC; raises DamagedEntry."""
        expected_all = self.crcs_of_view(view)  # raises if the view is not built yet
        indices = np.asarray(indices, np.int64)
        arr = self.array()
        try:
            rows = arr.get_orthogonal_selection((indices, view))
        except Exception:
            rows = None  # a chunk that does not decode: find which, row by row
        if rows is None:
            rows = np.zeros((len(indices), *self.feature_shape), np.dtype(self.inputs.dtype))
            bad = set()
            for j, i in enumerate(indices):
                try:
                    rows[j] = arr[int(i), view]
                except Exception:
                    bad.add(self.unit_of(int(i), view))
            if bad:
                raise DamagedEntry(bad)
        expected = expected_all[indices]
        got = np.array(crc_rows(rows), np.uint32)
        if not np.array_equal(got, expected):
            bad_rows = indices[got != expected]
            raise DamagedEntry({self.unit_of(int(i), view) for i in bad_rows})
        return rows.astype(np.float32)

    def unit_of(self, image: int, view: int) -> int:
        return (view * self.n_images + image) // UNIT

    def crc_table(self, views: int) -> np.ndarray:
        """(N, 1 + views) CRC32 of the rows of views 0..views (for comparing two entries)."""
        return np.stack([self.crcs_of_view(v) for v in range(views + 1)], axis=1)

    def invalidate(self, units: set[int]) -> None:
        """Forget damaged units so the next build recomputes exactly those."""
        with lock(self.path / ".lock-create"):
            for u in units:
                self._marker(u).unlink(missing_ok=True)
            self._view_crcs.clear()
            self._array = None

    def verify(self, views: list[int] | None = None) -> list[tuple[int, int]]:
        """Re-read every row of these views (default: every built one); return the (image, view) pairs
        whose bytes do not match."""
        bad = []
        for view in self.built_views() if views is None else views:
            for i in range(self.n_images):
                try:
                    self.read(np.array([i]), view)
                except DamagedEntry:
                    bad.append((i, view))
        return bad


def list_entries(root: str | Path) -> list[Path | RemotePath]:
    root = location(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and (p / "features").is_dir())


def remove_entry(root: str | Path, key: str) -> Path | RemotePath:
    path = location(root) / key
    if not (path / "features").is_dir():
        raise UserError(f"no feature-store entry {key!r} under {root} (see `fastheads cache ls`).")
    rmtree(path)
    return path
