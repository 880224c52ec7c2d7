"""Images and labels in: the course's HDF5 files, a folder of images + CSV, a course folder.

Everything is checked here, once, so the rest of the pipeline can trust its input:
every problem becomes a `UserError` that names the file and what is wrong with it.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fastheads.errors import UserError


@dataclass(frozen=True)
class ImageSet:
    """A labelled image set at its native resolution (pixels 0-255, RGB, NHWC).

    `images` is a list when the sizes differ (a folder with a 208x208 stray), else one array.
    """

    images: np.ndarray | list[np.ndarray]
    labels: np.ndarray  # (N,) int64
    names: list[str]  # one file name (or a number) per image
    source: str
    class_names: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def n_classes(self) -> int:
        return len(self.class_names) if self.class_names else int(self.labels.max()) + 1

    def image(self, i: int) -> np.ndarray:
        return self.images[i]

    def content_hash(self) -> str:
        """Hash of the pixels and labels: part of the feature-cache key."""
        h = hashlib.sha256()
        h.update(np.ascontiguousarray(self.labels, dtype=np.int64).tobytes())
        for i in range(len(self)):
            img = np.ascontiguousarray(self.image(i), dtype=np.float32)
            h.update(str(img.shape).encode())
            h.update(img.tobytes())
        return h.hexdigest()


def _check_images(arr: np.ndarray, where: str) -> None:
    if arr.ndim != 4:
        raise UserError(f"{where}: 'images' must have shape (N, H, W, 3), got shape {arr.shape} (rank {arr.ndim}).")
    if arr.shape[0] == 0:
        raise UserError(f"{where}: 'images' holds zero images.")
    if arr.shape[-1] != 3:
        raise UserError(f"{where}: images must have 3 colour channels (RGB), got {arr.shape[-1]} (shape {arr.shape}).")
    if arr.shape[1] < 8 or arr.shape[2] < 8:
        raise UserError(f"{where}: images of {arr.shape[1]}x{arr.shape[2]} pixels are too small.")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise UserError(f"{where}: 'images' has dtype {arr.dtype}; expected uint8 or float.")
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).any(axis=(1, 2, 3)).argmax())
        raise UserError(f"{where}: image {bad} has NaN or infinite pixel values.")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < 0 or hi > 255:
        raise UserError(
            f"{where}: pixel values must lie in 0..255, found {lo:g}..{hi:g} "
            "(images scaled to 0..1 or already preprocessed are not accepted)."
        )
    if 0 < hi <= 1:
        raise UserError(
            f"{where}: every pixel value lies in 0..1 (largest {hi:g}): these images look scaled to 0..1; "
            "fastheads expects 0..255 (multiply them by 255)."
        )


MAX_CLASSES_WITHOUT_NAMES = 10_000  # larger labels without --classes are a broken file, not 10k+ classes


def check_labels(labels: np.ndarray, n_images: int, where: str, n_classes: int | None) -> np.ndarray:
    """Return labels as (N,) int64 after checking shape, integrality and range."""
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise UserError(f"{where}: 'labels' must have shape (N,) or (N, 1), got {labels.shape}.")
    if len(labels) != n_images:
        raise UserError(f"{where}: {len(labels)} labels for {n_images} images; they must match.")
    if len(labels) == 0:
        raise UserError(f"{where}: no labels.")
    if np.issubdtype(labels.dtype, np.floating):
        if not np.isfinite(labels).all() or not np.all(labels == np.round(labels)):
            raise UserError(f"{where}: labels must be whole numbers (class indices).")
    elif not np.issubdtype(labels.dtype, np.integer):
        raise UserError(f"{where}: labels have dtype {labels.dtype}; expected integers.")
    # range checks before the cast to int64, which would wrap 2**63 or 1e30 into garbage
    lo, hi = labels.min(), labels.max()
    if lo < 0:
        raise UserError(f"{where}: label {int(lo)} is negative.")
    if n_classes is not None and hi >= n_classes:
        raise UserError(
            f"{where}: label {int(hi)} is out of range for {n_classes} class names (valid: 0..{n_classes - 1})."
        )
    if n_classes is None and hi >= MAX_CLASSES_WITHOUT_NAMES:
        raise UserError(
            f"{where}: label {int(hi)} without a class-names file; pass --classes FILE (one name per line) "
            "or check the labels."
        )
    return labels.astype(np.int64)


def _open_h5(path: Path):
    import h5py

    if not path.exists():
        raise UserError(f"{path}: file not found.")
    if path.is_dir():
        raise UserError(f"{path}: is a folder; expected an HDF5 file.")
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise UserError(f"{path}: not a readable HDF5 file ({e.__class__.__name__}).") from e


def _read_dataset(f, key: str, path: Path, required: bool = True) -> np.ndarray | None:
    """`f[key]` as an array; a missing key, a group, a dangling link or unreadable data is a UserError."""
    import h5py

    try:
        if key not in f:
            if not required:
                return None
            raise UserError(f"{path}: no '{key}' dataset (found: {', '.join(sorted(f.keys())) or 'nothing'}).")
        obj = f[key]
        if not isinstance(obj, h5py.Dataset):
            raise UserError(f"{path}: '{key}' is a {type(obj).__name__.lower()}, not a dataset.")
        value = obj[()]
    except UserError:
        raise
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as e:  # h5py's ways of saying "broken"
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else e.__class__.__name__
        raise UserError(f"{path}: cannot read '{key}' ({first}); the file may be truncated or damaged.") from e
    if isinstance(value, h5py.Empty):
        raise UserError(f"{path}: '{key}' is an empty dataset (no data space).")
    return np.asarray(value)


def load_h5(path: str | Path, class_names: list[str] | None = None) -> ImageSet:
    """Read the course layout: `images` (N,H,W,3) 0-255, `labels` (N,) or (N,1), optional `filenames`."""
    path = Path(path)
    with _open_h5(path) as f:
        images = _read_dataset(f, "images", path)
        labels = _read_dataset(f, "labels", path)
        raw_names = _read_dataset(f, "filenames", path, required=False)
    raw_names = None if raw_names is None else raw_names.reshape(-1)
    _check_images(images, str(path))
    n_cls = len(class_names) if class_names else None
    labels = check_labels(labels, len(images), str(path), n_cls)
    if raw_names is not None:
        if len(raw_names) != len(images):
            raise UserError(f"{path}: {len(raw_names)} filenames for {len(images)} images; they must match.")
        names = [n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n) for n in raw_names]
    else:
        names = [f"{i:04d}" for i in range(len(images))]
    return ImageSet(images, labels, names, str(path), list(class_names or []))


def _read_image(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)  # drops alpha
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
        # PIL reports damaged files as any of these (SyntaxError: "broken PNG file")
        raise UserError(f"{path}: cannot read this image ({e.__class__.__name__}).") from e


def load_folder(
    folder: str | Path, labels_csv: str | Path | None = None, class_names: list[str] | None = None
) -> ImageSet:
    """A folder of images plus a `file,label` CSV (default: the only *.csv in the folder)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: folder not found.")
    if labels_csv is None:
        csvs = sorted(folder.glob("*label*.csv")) or sorted(folder.parent.glob("*label*.csv"))
        csvs = csvs or sorted(p for p in folder.glob("*.csv") if p.name != "predictions.csv")
        if not csvs:
            raise UserError(f"{folder}: no labels CSV found; pass --labels FILE.csv (columns file,label).")
        if len(csvs) > 1:
            names = ", ".join(p.name for p in csvs[:4])
            raise UserError(f"{folder}: several CSV files could hold the labels ({names}); pass --labels FILE.csv.")
        labels_csv = csvs[0]
    labels_csv = Path(labels_csv)
    if not labels_csv.is_file():
        raise UserError(f"{labels_csv}: labels CSV not found.")
    rows = []
    try:
        with open(labels_csv, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None or not {"file", "label"} <= set(reader.fieldnames):
                raise UserError(f"{labels_csv}: expected a header with columns 'file,label', got {reader.fieldnames}.")
            for row in reader:
                if row["file"] is None or row["label"] is None:  # a short line
                    raise UserError(
                        f"{labels_csv}: line {reader.line_num} has no {'file' if row['file'] is None else 'label'}."
                    )
                rows.append((row["file"], row["label"]))
    except UnicodeDecodeError:
        raise UserError(f"{labels_csv}: not a UTF-8 text file (expected a CSV with columns file,label).") from None
    except csv.Error as e:
        raise UserError(f"{labels_csv}: not a readable CSV ({e}).") from None
    if not rows:
        raise UserError(f"{labels_csv}: no rows.")
    images, labels = [], []
    for name, label in rows:
        p = folder / name
        if not p.is_file():
            raise UserError(f"{p}: listed in {labels_csv.name} but not found.")
        try:
            value = int(label)
        except ValueError:
            raise UserError(f"{labels_csv}: label {label!r} of {name} is not an integer.") from None
        if not -(2**62) < value < 2**62:  # numpy would hold it as an object, not a class index
            raise UserError(f"{labels_csv}: label {label.strip()} of {name} is out of any class range.")
        labels.append(value)
        images.append(_read_image(p))
    labels_arr = check_labels(np.array(labels), len(images), str(labels_csv), len(class_names) if class_names else None)
    shapes = {im.shape for im in images}
    stacked: np.ndarray | list[np.ndarray] = np.stack(images) if len(shapes) == 1 else images
    return ImageSet(stacked, labels_arr, [r[0] for r in rows], str(folder), list(class_names or []))


def load_class_names(path: str | Path) -> list[str]:
    """One name per line; line i names class i. Blank trailing lines are ignored."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: class-names file not found.")
    try:
        names = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a text file (expected one class name per line).") from None
    while names and not names[-1]:
        names.pop()
    if len(names) < 2:
        raise UserError(f"{path}: needs at least two class names, one per line; found {len(names)}.")
    return names


def load_images(data: str | Path, classes: str | Path | None = None, labels_csv: str | Path | None = None) -> ImageSet:
    """Dispatch on what `data` is: an HDF5 file or a folder of images."""
    names = load_class_names(classes) if classes else None
    p = Path(data)
    if p.is_dir():
        ds = load_folder(p, labels_csv, names)
    else:
        ds = load_h5(p, names)
    if names is None:
        n = int(ds.labels.max()) + 1
        ds = ImageSet(ds.images, ds.labels, ds.names, ds.source, [f"class_{i}" for i in range(n)])
    return ds


@dataclass(frozen=True)
class CourseFiles:
    """The files of the course folder, found by name so the user need not list them."""

    train: Path
    classes: Path | None
    weights: Path | None
    holdout: Path | None


def find_course_files(root: str | Path) -> CourseFiles:
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: course folder not found.")

    def first(*candidates: str) -> Path | None:
        for c in candidates:
            hits = sorted(root.glob(c))
            if hits:
                return hits[0]
        return None

    train = first(
        "flowers_dataset/10FlowerColorImages.h5",
        "imagenet_dataset/10FlowerColorImages.h5",
        "**/10FlowerColorImages.h5",
        "**/FlowerColorImages.h5",
    )
    if train is None:
        raise UserError(
            f"{root}: no 10FlowerColorImages.h5 under flowers_dataset/ or imagenet_dataset/; pass --data explicitly."
        )
    return CourseFiles(
        train=train,
        classes=first("flowers_dataset/flower_class_index.txt", "**/flower_class_index.txt"),
        weights=first("imagenet_dataset/vgg16_weights.h5", "**/vgg16_weights*.h5"),
        holdout=first("flowers_dataset/data/test/flowers_holdout.h5", "**/flowers_holdout.h5"),
    )
