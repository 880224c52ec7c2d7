"""The feature-store key: a hash over everything that changes the stored numbers.

A changed input must never be served stale features, and an unchanged one must always
hit; so the key is computed from content (file hashes, pixel hashes), never from paths,
names or timestamps. Things that do not change the numbers (labels, class names, the
split, the head, the learning rate, the number of epochs, the number of views a run
uses) are deliberately left out, so every repeat and every head of the course shares one
entry.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

FORMAT_VERSION = 2  # bump when the layout or the meaning of a view changes (2: views no longer in the key)
UNIT = 32  # build unit: (view, image) pairs per batch and per progress marker; fixed so resumes are bit-identical
MAX_VIEWS = 1024  # augmented views an entry can hold: the array's shape; views never built take no space


@dataclass(frozen=True)
class KeyInputs:
    weights: str  # "none", "imagenet" or "sha256:<file content hash>" (+ ":seed" for none)
    pixels: str  # sha256 of the images as loaded (before resizing)
    n_images: int
    image_size: int
    resize: str
    preprocessing: str
    cut: str
    augment: str  # AugmentSpec.canonical()
    augment_seed: int
    precision: str
    xla: bool
    dtype: str
    tensorflow: str  # major.minor: kernels (and so low bits) change between releases
    format: int = FORMAT_VERSION
    unit: int = UNIT

    def key(self) -> str:
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:20]


def pixels_hash(images) -> str:
    """Hash of the pixels only: relabelling images must not invalidate their features."""
    h = hashlib.sha256()
    h.update(str(len(images)).encode())
    for img in images:
        img = np.ascontiguousarray(img, dtype=np.float32)
        h.update(str(img.shape).encode())
        h.update(img.tobytes())
    return h.hexdigest()


def file_fingerprint(path: str | Path, memo_dir: str | Path | None = None) -> str:
    """sha256 of a file's content, memoised by (path, size, mtime) so a 528 MB weights file is hashed once."""
    path = Path(path).resolve()
    st = path.stat()
    memo_key = f"{path}|{st.st_size}|{st.st_mtime_ns}"
    memo_file = Path(memo_dir) / ".fingerprints.json" if memo_dir else None
    memo: dict = {}
    if memo_file is not None and memo_file.is_file():
        try:
            memo = json.loads(memo_file.read_text())
        except (OSError, ValueError):
            memo = {}
        if memo_key in memo:
            return memo[memo_key]
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    digest = "sha256:" + h.hexdigest()
    if memo_file is not None:
        memo[memo_key] = digest
        try:
            tmp = memo_file.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(memo, indent=1))
            os.replace(tmp, memo_file)
        except OSError:
            pass  # a read-only cache folder only costs the hashing time
    return digest


def weights_identity(weights: str, seed: int, memo_dir: str | Path | None) -> str:
    if weights == "none":
        return f"none:he-uniform:seed={seed}"  # a function of the init scheme and the seed
    if weights == "imagenet":
        return "imagenet"
    return file_fingerprint(weights, memo_dir)
