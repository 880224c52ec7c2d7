"""Where the feature store lives: a local folder, or any URL fsspec knows (memory://, gs://, s3://).

The store needs very little from its storage: read and write small whole files (unit
markers, derived .npy), list a folder, delete, and a URL zarr
can open. `location(root)` returns a `pathlib.Path` for a local folder (a `file://` URL
included) and a `RemotePath` for anything else; both answer the same handful of
pathlib-style calls, so feature_store.py and cache.py do not care which they hold.

Local folders keep what they always had: an flock per builder and per entry, and files
written next to their target then renamed onto it (`runio.atomic_write`).

Remote stores get no lock (object stores have none that every builder could share), and
correctness holds without one:

- every unit's bytes are a deterministic function of the key (same images, weights,
  augmentation seed, precision, dtype, compressor), so two builders that compute the same
  unit write identical chunk and marker bytes; whoever writes last writes what was there;
- an object store writes each object whole (a PUT is atomic: readers see the old object
  or the new one, never half of one), which is what `os.replace` gives locally;
- a unit's marker is written only after all its chunks were written: a reader that sees
  the markers of every unit holding a view sees the view's chunks (gs:// and s3:// give
  read-after-write consistency);
- the array's metadata is written once and never changes, so builders that create it
  at the same time write the same bytes;
- readers only read views whose units are all marked and check every row against its
  CRC, so a chunk lost or damaged by anything (a racing `invalidate`, a bucket lifecycle
  rule) is rebuilt, never used.

What a lock still buys locally, and remote stores lack: two builders of the same shard
do not compute the same units twice. Remotely they may (wasted time, identical bytes);
give concurrent builders different `--shard i/n` to share the work.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from fastheads.errors import UserError
from fastheads.runio import atomic_write


def is_url(root: str | Path) -> bool:
    return isinstance(root, str) and "://" in root and not root.startswith("file://")


def location(root: str | Path) -> Path | RemotePath:
    """The store root as a local Path or, for an fsspec URL, a RemotePath."""
    if isinstance(root, (Path, RemotePath)):
        return root
    if root.startswith("file://"):
        return Path(root[len("file://") :])
    if not is_url(root):
        return Path(root)
    try:
        import fsspec
    except ImportError:
        raise UserError(f"--cache-dir {root}: URLs need fsspec (pip install fsspec, plus gcsfs or s3fs).") from None
    try:
        fs, path = fsspec.core.url_to_fs(root)
    except (ImportError, ValueError) as e:
        raise UserError(f"--cache-dir {root}: {e}".splitlines()[0]) from None
    return RemotePath(fs, path.rstrip("/"), root.split("://", 1)[0])


class RemotePath:
    """The pathlib.Path calls the store makes, on an fsspec filesystem (whole-object writes)."""

    def __init__(self, fs, path: str, protocol: str) -> None:
        self.fs, self.path, self.protocol = fs, path, protocol

    def __truediv__(self, name: str) -> RemotePath:
        return RemotePath(self.fs, f"{self.path}/{name}", self.protocol)

    def __str__(self) -> str:
        return f"{self.protocol}://{self.path}"

    def __repr__(self) -> str:
        return f"RemotePath({str(self)!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, RemotePath) and str(self) == str(other)

    def __lt__(self, other: RemotePath) -> bool:
        return str(self) < str(other)

    def __hash__(self) -> int:
        return hash(str(self))

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def stem(self) -> str:
        return self.name.rsplit(".", 1)[0]

    @property
    def parent(self) -> RemotePath:
        return RemotePath(self.fs, self.path.rsplit("/", 1)[0], self.protocol)

    def is_file(self) -> bool:
        return self.fs.isfile(self.path)

    def is_dir(self) -> bool:
        return self.fs.isdir(self.path)

    def exists(self) -> bool:
        return self.fs.exists(self.path)

    def mkdir(self, parents: bool = True, exist_ok: bool = True) -> None:
        self.fs.makedirs(self.path, exist_ok=True)  # a no-op on object stores, which have no folders

    def read_bytes(self) -> bytes:
        return self.fs.cat_file(self.path)

    def read_text(self) -> str:
        return self.read_bytes().decode()

    def write_bytes(self, data: bytes) -> None:
        self.fs.pipe_file(self.path, data)  # one PUT: the object appears whole or not at all

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode())

    def unlink(self, missing_ok: bool = False) -> None:
        try:
            self.fs.rm_file(self.path)
        except FileNotFoundError:
            if not missing_ok:
                raise

    def iterdir(self) -> Iterator[RemotePath]:
        if not self.is_dir():
            return iter(())
        return iter(RemotePath(self.fs, p.rstrip("/"), self.protocol) for p in self.fs.ls(self.path, detail=False))

    def glob(self, pattern: str) -> Iterator[RemotePath]:
        return iter(RemotePath(self.fs, p, self.protocol) for p in self.fs.glob(f"{self.path}/{pattern}"))


def lock(path: Path | RemotePath) -> contextlib.AbstractContextManager:
    """An exclusive flock for a local path; nothing for a remote one (see the module docstring)."""
    if isinstance(path, RemotePath):
        return contextlib.nullcontext()
    return _flock(path)


@contextlib.contextmanager
def _flock(path: Path) -> Iterator[None]:
    """An exclusive lock that the OS releases if the holder dies (flock)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def write_whole(path: Path | RemotePath, data: bytes, suffix: str = "") -> None:
    """Write a file that readers see complete or not at all: rename locally, one PUT remotely."""
    if isinstance(path, RemotePath):
        try:
            path.write_bytes(data)
        except OSError as e:
            raise UserError(f"{path}: writing failed ({e}).") from e
        return
    atomic_write(path, lambda p: p.write_bytes(data), suffix)


def save_npy(path: Path | RemotePath, arr: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    write_whole(path, buf.getvalue(), ".npy")


def load_npy(path: Path | RemotePath) -> np.ndarray:
    if isinstance(path, RemotePath):
        return np.load(io.BytesIO(path.read_bytes()), allow_pickle=False)
    return np.load(path, allow_pickle=False)


def size_bytes(path: Path | RemotePath) -> int:
    """Bytes of every file under `path`."""
    if isinstance(path, RemotePath):
        return int(path.fs.du(path.path, total=True)) if path.exists() else 0
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def rmtree(path: Path | RemotePath) -> None:
    if isinstance(path, RemotePath):
        path.fs.rm(path.path, recursive=True)
        return
    import shutil

    shutil.rmtree(path)
