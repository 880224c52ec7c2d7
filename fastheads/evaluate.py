"""Evaluate any course-contract Keras model on a holdout set, as the course's test notebook does.

The contract: one input of H x W x 3 caffe-preprocessed pixels (RGB->BGR minus the ImageNet
means), one output of class probabilities. Models trained by the course notebooks (`.h5`)
qualify as well as ours (`.keras`), so nothing here may rely on fastheads having built the
model: the input size is read from the model, the last conv layer for Grad-CAM is found by type.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fastheads.data import ImageSet, load_class_names, load_images
from fastheads.errors import UserError
from fastheads.preprocess import RESIZE_METHOD, caffe_preprocess, resize_images
from fastheads.runio import atomic_write, write_json

MODEL_SUFFIXES = (".keras", ".h5", ".hdf5")
GRADCAM_MAX = 48  # Grad-CAM costs a backward pass per image and a grid cell: the misclassified first


@dataclass(frozen=True)
class Prediction:
    file: str
    true: str
    predicted: str
    probability: float
    top: tuple[tuple[str, float], ...]  # the 3 most probable classes, best first

    @property
    def correct(self) -> bool:
        return self.true == self.predicted


@dataclass
class EvalResult:
    accuracy: float
    predictions: list[Prediction]
    metrics: dict
    probabilities: np.ndarray = field(repr=False)  # (N, n_classes)
    paths: dict[str, Path] = field(default_factory=dict)  # what was written: csv, json, png


# --------------------------------------------------------------------------- model


def load_model(path: str | Path):
    """Load a `.keras` or legacy `.h5` model without compiling it: a Keras 2 optimizer must not stop us."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: model file not found.")
    if path.is_dir():
        raise UserError(f"{path}: is a folder (a SavedModel?); expected a .keras or .h5 Keras model file.")
    if path.suffix.lower() not in MODEL_SUFFIXES:
        raise UserError(
            f"{path}: expected a Keras model file ending in .keras or .h5, got {path.suffix or 'no suffix'}."
        )
    import zipfile

    import h5py
    import keras

    # Keras answers a non-zip .keras with "File not found"; name the real problem instead.
    if path.suffix.lower() == ".keras" and not zipfile.is_zipfile(path):
        raise UserError(f"{path}: not a Keras model (a .keras file is a zip archive; this one is not).")
    if path.suffix.lower() != ".keras" and not h5py.is_hdf5(path):
        raise UserError(f"{path}: not a Keras model (a .h5 model is an HDF5 file; this one is not).")
    try:
        return keras.models.load_model(path, compile=False)
    except Exception as e:  # Keras raises half a dozen types for "not a model"; all mean the same to the user
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise UserError(f"{path}: not a loadable Keras model ({e.__class__.__name__}: {first}).") from e


def model_contract(model, n_classes: int, where: str) -> tuple[int, int]:
    """Check one HxWx3 input and one n_classes output; return (H, W) (224 when the model accepts any size)."""
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise UserError(
            f"{where}: the model has {len(model.inputs)} inputs and {len(model.outputs)} outputs; expected 1 and 1."
        )
    shape = tuple(model.inputs[0].shape)
    if len(shape) != 4 or shape[-1] != 3:
        raise UserError(f"{where}: the model's input has shape {shape}; expected (batch, height, width, 3) images.")
    out = tuple(model.outputs[0].shape)
    if len(out) != 2:
        raise UserError(f"{where}: the model's output has shape {out}; expected (batch, classes) probabilities.")
    if out[-1] != n_classes:
        raise UserError(f"{where}: the model predicts {out[-1]} classes but {n_classes} class names were given.")
    return (shape[1] or 224, shape[2] or 224)


def preprocess(images, size: tuple[int, int]) -> np.ndarray:
    """The course notebook's steps: resize to the model's input, then caffe preprocessing."""
    h, w = size
    if h == w:
        resized = resize_images(images, h)
    else:
        import tensorflow as tf

        resized = np.stack(
            [tf.image.resize(np.asarray(im, np.float32), (h, w), antialias=True).numpy() for im in images]
        )
    return caffe_preprocess(resized)


def predict(model, images, size: tuple[int, int], batch_size: int = 32) -> np.ndarray:
    """Probabilities (N, classes), preprocessing one batch at a time so a large holdout fits in memory."""
    out = []
    for start in range(0, len(images), batch_size):
        x = preprocess(images[start : start + batch_size], size)
        out.append(np.asarray(model.predict_on_batch(x), np.float64))
    return np.concatenate(out)


# --------------------------------------------------------------------------- metrics


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Rows: true class, columns: predicted class."""
    cm = np.zeros((n_classes, n_classes), np.int64)
    np.add.at(cm, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return cm


def per_class_scores(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall, F1 and support per class; 0 where undefined (no prediction / no image of it)."""
    tp = np.diag(cm).astype(float)
    predicted, support = cm.sum(axis=0), cm.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support}


def metrics_dict(labels: np.ndarray, probs: np.ndarray, class_names: Sequence[str]) -> dict:
    k = len(class_names)
    pred = probs.argmax(axis=1)
    cm = confusion_matrix(labels, pred, k)
    s = per_class_scores(cm)
    top_k = min(3, k)
    in_top = (np.argsort(-probs, axis=1)[:, :top_k] == labels[:, None]).any(axis=1)
    present = s["support"] > 0  # macro averages over the classes the holdout has
    return {
        "n_images": len(labels),
        "accuracy": float((pred == labels).mean()),
        "correct": int((pred == labels).sum()),
        f"top{top_k}_accuracy": float(in_top.mean()),
        "class_names": list(class_names),
        "per_class": [
            {
                "class": name,
                "precision": float(s["precision"][i]),
                "recall": float(s["recall"][i]),
                "f1": float(s["f1"][i]),
                "support": int(s["support"][i]),
            }
            for i, name in enumerate(class_names)
        ],  # fmt: skip
        "macro": {m: float(s[m][present].mean()) for m in ("precision", "recall", "f1")},
        "confusion_matrix": cm.tolist(),
        "confusion_matrix_axes": "rows: true class, columns: predicted class",
    }


# --------------------------------------------------------------------------- evaluate


def evaluate(
    model_path: str | Path,
    data: str | Path | ImageSet,
    classes: str | Path | Sequence[str] | None,
    out: str | Path | None = None,
    gradcam: bool = False,
    verbose: bool = True,
    labels_csv: str | Path | None = None,
    gradcam_layer: str | None = None,
) -> EvalResult:
    """Predict every holdout image, print them as the course notebook does, and write the report to `out`.

    `classes`: a class-names file, a list of names, or None to take them from the run.json
    next to a model trained by fastheads. Without `out` nothing is written.
    """
    say = print if verbose else (lambda s: None)
    model_path = Path(model_path)
    names = _class_names(classes, model_path)
    if gradcam and out is None:
        raise UserError("Grad-CAM needs an output folder (out=...) to write gradcam.png into.")
    model = load_model(model_path)
    size = model_contract(model, len(names), str(model_path))
    if gradcam:
        from fastheads.gradcam import find_last_conv

        find_last_conv(model, gradcam_layer)  # fail before the long part, not after it
    ds = data if isinstance(data, ImageSet) else load_images(data, None, labels_csv)
    from fastheads.data import check_labels

    labels = check_labels(ds.labels, len(ds), ds.source, len(names))
    say(
        f"fastheads: {model_path.name} (input {size[0]}x{size[1]}x3, {len(names)} classes), {len(ds)} images from {ds.source}"
    )
    probs = predict(model, ds.images, size)
    preds = _predictions(ds.names, labels, probs, names)
    metrics = metrics_dict(labels, probs, names)
    _check_probabilities(probs, say)
    _print_predictions(preds, say)
    say(f"accuracy: {metrics['accuracy']:.4f} ({metrics['correct']}/{len(labels)})")
    metrics.update(
        model=str(model_path), data=ds.source, input_size=list(size), preprocessing="caffe", resize=RESIZE_METHOD
    )
    result = EvalResult(metrics["accuracy"], preds, metrics, probs)
    if out is not None:
        title = _title(model_path, ds.source)
        result.paths.update(_write_report(Path(out), result, ds, labels, title))
        if gradcam:
            cam_args = (model, ds, labels, probs, names, size, gradcam_layer, title)
            result.paths["gradcam"] = _write_gradcam(Path(out), *cam_args)
        say("fastheads: wrote " + ", ".join(str(p) for p in result.paths.values()))
    return result


def _class_names(classes, model_path: Path) -> list[str]:
    if classes is None:
        import json

        run = model_path.parent / "run.json"
        names = json.loads(run.read_text()).get("data", {}).get("class_names") if run.is_file() else None
        if not names:
            raise UserError(
                f"{model_path}: no class names; pass --classes FILE (one name per line, line i naming class i)."
            )
        return list(names)
    if isinstance(classes, (str, Path)):
        return load_class_names(classes)
    return [str(c) for c in classes]


def _predictions(files: Sequence[str], labels: np.ndarray, probs: np.ndarray, names: Sequence[str]) -> list[Prediction]:
    order = np.argsort(-probs, axis=1, kind="stable")[:, :3]
    return [
        Prediction(
            file=files[i],
            true=names[labels[i]],
            predicted=names[order[i, 0]],
            probability=float(probs[i, order[i, 0]]),
            top=tuple((names[j], float(probs[i, j])) for j in order[i]),
        )  # fmt: skip
        for i in range(len(labels))
    ]


def _check_probabilities(probs: np.ndarray, say) -> None:
    sums = probs.sum(axis=1)
    if (probs < -1e-6).any() or not np.allclose(sums, 1.0, atol=1e-3):
        say("fastheads: warning: the model's outputs do not sum to 1 (no softmax?); 'probability' is its raw output.")


def _print_predictions(preds: list[Prediction], say) -> None:
    wf = max(len(p.file) for p in preds)
    wc = max(len(p.true) for p in preds)
    for p in preds:
        mark = "" if p.correct else "   <- wrong"
        say(f"{p.file:<{wf}}  true: {p.true:<{wc}}  predicted: {p.predicted:<{wc}}  {p.probability:.4f}{mark}")


def _title(model_path: Path, source: str) -> str:
    """Which model on which data; for a fastheads run, its configuration too."""
    from fastheads.report import describe_run

    config = describe_run(model_path.parent)
    head = f"{model_path.parent.name}/{model_path.name}" + (f" ({config})" if config else "")
    return f"{head} on {Path(source).name}"


def _write_report(out: Path, r: EvalResult, ds: ImageSet, labels: np.ndarray, title: str) -> dict[str, Path]:
    from fastheads import figures

    m = r.metrics
    paths = {"predictions": out / "predictions.csv", "metrics": out / "metrics.json"}
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["file", "true", "predicted", "probability", "top3"])
    for p in r.predictions:
        w.writerow([p.file, p.true, p.predicted, f"{p.probability:.6f}", "; ".join(f"{n} {q:.4f}" for n, q in p.top)])
    atomic_write(paths["predictions"], lambda f: f.write_text(buf.getvalue(), encoding="utf-8"))
    write_json(paths["metrics"], m)
    acc = f"accuracy {m['accuracy']:.1%} ({m['correct']}/{m['n_images']})"
    cm = np.asarray(m["confusion_matrix"])
    paths["confusion"] = figures.plot_confusion(cm, m["class_names"], out / "confusion.png", f"{title}\n{acc}")
    wrong = [i for i, p in enumerate(r.predictions) if not p.correct]
    shown = wrong[: figures.MAX_GRID]
    more = f", first {len(shown)} shown" if len(shown) < len(wrong) else ""
    head = f"{len(wrong)} misclassified of {len(labels)}{more}: true → predicted (probability)"
    paths["errors"] = figures.image_grid(
        [ds.image(i) for i in shown],
        [figures.caption(r.predictions[i].true, r.predictions[i].predicted, r.predictions[i].probability) for i in shown],
        out / "errors.png", f"{title}\n{head}", colours=["firebrick"] * len(shown),
    )  # fmt: skip
    return paths


def _write_gradcam(out: Path, model, ds: ImageSet, labels, probs, names, size, layer: str | None, title: str) -> Path:
    from fastheads import figures
    from fastheads.gradcam import find_last_conv, gradcam, upsample

    pred = probs.argmax(axis=1)
    picked = _gradcam_selection(labels, pred)
    x = preprocess([ds.image(i) for i in picked], size)
    cams = gradcam(model, x, pred[picked], layer)
    images = [ds.image(i) for i in picked]
    heat = [upsample(c, *np.asarray(im).shape[:2]) for c, im in zip(cams, images, strict=True)]
    caps = [figures.caption(names[labels[i]], names[pred[i]], float(probs[i, pred[i]])) for i in picked]
    colours = ["darkgreen" if pred[i] == labels[i] else "firebrick" for i in picked]
    conv = find_last_conv(model, layer)[-1].name
    note = f"Grad-CAM on {conv} for the predicted class (red: where it looked); green caption correct, red wrong"
    if len(picked) < len(labels):
        note += f"; {len(picked)} of {len(labels)} images, mostly misclassified ones"
    return figures.image_grid(images, caps, out / "gradcam.png", f"{title}\n{note}", colours, heat)


def _gradcam_selection(labels: np.ndarray, pred: np.ndarray) -> list[int]:
    """Up to GRADCAM_MAX images: the misclassified (at most two thirds), then correct ones spread over the set.

    Correct images stay in the grid because a map only means something next to ones that worked.
    """
    wrong = np.flatnonzero(pred != labels)
    right = np.flatnonzero(pred == labels)
    n_wrong = min(len(wrong), max(GRADCAM_MAX - len(right), 2 * GRADCAM_MAX // 3))
    n_right = min(len(right), GRADCAM_MAX - n_wrong)
    spread = right[np.linspace(0, len(right) - 1, n_right).round().astype(int)] if n_right else right[:0]
    return sorted(int(i) for i in np.concatenate([wrong[:n_wrong], spread]))
