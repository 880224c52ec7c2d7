"""The feature store: frozen-base outputs of every image, clean and K augmented views, in zarr.

One entry per key (see cache_key.py) under the cache root:

    <root>/<key>/features      zarr array (N, 1 + K, *feature_shape), one chunk per (image, view)
    <root>/<key>/units/        one marker per finished build unit, with a CRC32 per stored row
    <root>/<key>/checksums.npy CRC32 of every (image, view) row, written when the last unit is done
    <root>/<key>/COMPLETE      written last, atomically: only then is the entry ever read

Work is cut into fixed units of 32 (image, view) pairs in view-major order, so a build
that is killed resumes with the units it had not finished and produces exactly the bytes
an uninterrupted build would. A file lock serialises builders of one entry; readers
check every row's CRC and rebuild what is damaged instead of using it.

Training builds lazily: a view is computed when an epoch first needs it (`build(views=...)`),
so a run that stops early never pays for the views it would not have used. A view is
read only when every unit it spans is marked done; the units are the same whatever order
they are built in, so a lazily built entry holds the same bytes as one built in one go.

The root may be a local folder or an fsspec URL (gs://, s3://, memory://): see
store_io.py for what changes remotely (no locks) and why the guarantees still hold.
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
from fastheads.cache_key import UNIT, KeyInputs
from fastheads.errors import UserError
from fastheads.pipeline import extract_features
from fastheads.store_io import RemotePath, load_npy, location, lock, rmtree, save_npy, write_whole


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
        self.n_images, self.n_views = inputs.n_images, 1 + inputs.views
        self.total = self.n_images * self.n_views
        self.n_units = -(-self.total // UNIT)
        self._array = None
        self._checksums: np.ndarray | None = None
        self._view_crcs: dict[int, np.ndarray] = {}

    # ------------------------------------------------------------------ layout
    @property
    def key(self) -> str:
        return self.path.name

    @property
    def complete(self) -> bool:
        return (self.path / "COMPLETE").is_file()

    def unit_pairs(self, unit: int) -> np.ndarray:
        flat = np.arange(unit * UNIT, min((unit + 1) * UNIT, self.total))
        return np.stack([flat % self.n_images, flat // self.n_images], axis=1).astype(np.int64)

    def units_of_view(self, view: int) -> range:
        lo = view * self.n_images
        return range(lo // UNIT, (lo + self.n_images - 1) // UNIT + 1)

    def view_ready(self, view: int) -> bool:
        """Every unit holding a row of this view is written and marked."""
        if self.complete:
            return True
        done = self.done_units()
        return all(u in done for u in self.units_of_view(view))

    def views_ready(self) -> int:
        """How many views, from view 0 on, can be read (for `cache ls`)."""
        done = self.done_units()
        return next((v for v in range(self.n_views) if any(u not in done for u in self.units_of_view(v))), self.n_views)

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
            attributes={"fastheads": {"key_inputs": asdict(self.inputs), "complete": False}},
        )

    # ------------------------------------------------------------------ building
    def build(
        self,
        base_fn: Callable,
        images: np.ndarray,
        spec: AugmentSpec,
        shard: tuple[int, int] = (0, 1),
        progress: Callable[[int, int], None] | None = None,
        views: list[int] | None = None,
    ) -> bool:
        """Compute the missing units of this shard (of these views only, if given); True when the entry is complete."""
        i, n = shard
        wanted = None if views is None else {u for v in views for u in self.units_of_view(v)}
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            with lock(self.path / ".lock-create"):
                self._create()
        except OSError as e:
            raise UserError(f"--cache-dir {self.path.parent}: cannot create the feature store ({e.strerror}).") from e
        with lock(self.path / f".lock-build-{i}of{n}"):
            if self.complete:
                return True
            done = self.done_units()
            todo = [u for u in range(self.n_units) if u % n == i and u not in done and (wanted is None or u in wanted)]
            if todo:
                self._compute(todo, base_fn, images, spec, progress)
        return self._finish_if_done()

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

    def _finish_if_done(self) -> bool:
        with lock(self.path / ".lock-create"):
            if self.complete:
                return True
            if len(self.done_units()) < self.n_units:
                return False
            sums = np.zeros((self.n_images, self.n_views), np.uint32)
            for u in range(self.n_units):
                crcs = json.loads(self._marker(u).read_text())["crc"]
                for (img, view), c in zip(self.unit_pairs(u), crcs, strict=True):
                    sums[img, view] = c
            save_npy(self.path / "checksums.npy", sums)
            arr = self.array("r+")
            meta = dict(arr.attrs.get("fastheads", {}))
            meta["complete"] = True
            arr.attrs["fastheads"] = meta
            summary = {"key": self.key, "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
            write_whole(self.path / "COMPLETE", (json.dumps(summary) + "\n").encode())  # last
            self._array = None
            return True

    # ------------------------------------------------------------------ reading
    def checksums(self) -> np.ndarray:
        if self._checksums is None:
            self._checksums = load_npy(self.path / "checksums.npy")
        return self._checksums

    def crcs_of_view(self, view: int) -> np.ndarray:
        """The CRC32 of each image's row in this view: from checksums.npy, or the unit markers of a partial entry."""
        if view in self._view_crcs:
            return self._view_crcs[view]
        if self.complete:
            crcs = self.checksums()[:, view]
        else:
            crcs = np.zeros(self.n_images, np.uint32)
            for u in self.units_of_view(view):
                try:
                    unit_crcs = json.loads(self._marker(u).read_text())["crc"]
                except FileNotFoundError:
                    raise RuntimeError(
                        f"feature store entry {self.key}: view {view} read before it was built"
                    ) from None
                except (OSError, ValueError, KeyError):
                    raise DamagedEntry({u}) from None
                for (img, v), c in zip(self.unit_pairs(u), unit_crcs, strict=True):
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

    def invalidate(self, units: set[int]) -> None:
        """Forget damaged units (and completeness) so the next build recomputes exactly those."""
        with lock(self.path / ".lock-create"):
            for p in (self.path / "COMPLETE", self.path / "checksums.npy"):
                p.unlink(missing_ok=True)
            for u in units:
                self._marker(u).unlink(missing_ok=True)
            self._checksums = None
            self._view_crcs.clear()
            self._array = None

    def verify(self) -> list[tuple[int, int]]:
        """Re-read every row of every built view; return the (image, view) pairs whose bytes do not match."""
        bad = []
        for view in range(self.n_views):
            if not self.view_ready(view):
                continue  # a lazily built entry: views no run has needed yet
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
