"""Files that must never be left half-written: write next to the target, then rename."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from fastheads.errors import UserError


def atomic_write(path: str | Path, write: Callable[[Path], None], suffix: str = "") -> None:
    """Call `write(tmp)` on a temporary path in the same folder, then rename it onto `path`."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or ".tmp", dir=path.parent)
        os.close(fd)
    except OSError as e:
        raise UserError(f"{path.parent}: cannot write here ({e.strerror}).") from e
    try:
        write(Path(tmp))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would hide results from other users
        os.replace(tmp, path)
    except OSError as e:
        raise UserError(f"{path}: writing failed ({e.strerror}); the previous file, if any, is untouched.") from e
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: str | Path, obj) -> None:
    text = json.dumps(obj, indent=2, sort_keys=False, default=_jsonable) + "\n"
    atomic_write(path, lambda p: p.write_text(text))


def write_npz(path: str | Path, prefix: str, variables: list) -> None:
    """Arrays (or Keras variables) as <prefix>0, <prefix>1, ... in np.savez's layout, one in memory at a time.

    A v2 head's kernel is 1.6 GB: collecting every array first, as np.savez needs, would
    hold a second copy of the whole head (and its optimizer state) for the write.
    """
    import zipfile

    import numpy as np

    def write(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w") as zf:
            for i, var in enumerate(variables):
                arr = np.asarray(var.numpy() if hasattr(var, "numpy") else var)
                with zf.open(f"{prefix}{i}.npy", "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, arr, allow_pickle=False)

    atomic_write(path, write, ".npz")


def read_npz_into(path: str | Path, prefix: str, variables: list) -> None:
    """Assign <prefix>0, <prefix>1, ... (as `write_npz` wrote them) to `variables`, one array loaded at a time."""
    import numpy as np

    with np.load(path) as z:
        for i, var in enumerate(variables):
            var.assign(z[f"{prefix}{i}"])


def save_model(model, path: str | Path) -> None:
    atomic_write(path, lambda p: model.save(str(p)), suffix=".keras")


def _jsonable(o):
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (set, tuple)):
        return list(o)
    return str(o)


def versions() -> dict[str, str]:
    import platform

    import h5py
    import keras
    import numpy
    import tensorflow as tf
    import zarr

    import fastheads

    return {
        "fastheads": fastheads.__version__, "tensorflow": tf.__version__, "keras": keras.__version__,
        "numpy": numpy.__version__, "h5py": h5py.__version__, "zarr": zarr.__version__,
        "python": platform.python_version(), "machine": platform.machine(),
    }  # fmt: skip
