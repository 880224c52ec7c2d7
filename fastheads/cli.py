"""The `fastheads` command: a thin Typer layer over the Python API.

`train` and `demo` live here; `cache`, `tp`/`bench` and `evaluate`/`report` in their own
cli_*.py modules; the shared options and the user-error path in cli_common.py.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from fastheads import cli_common
from fastheads.cli_cache import cache_app
from fastheads.cli_common import (
    Arch,
    Augment,
    AugmentSeed,
    CacheDir,
    CacheDtype,
    Classes,
    Course,
    Data,
    Epochs,
    ImageSize,
    Labels,
    Precision,
    Quiet,
    Strategy,
    Views,
    Weights,
    Xla,
    course_defaults,
    guarded,
)
from fastheads.cli_evaluate import register as register_evaluate
from fastheads.cli_experiments import bench, tp

__all__ = ["app", "guarded", "main"]

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Transfer learning on a frozen VGG16, fast, correct and reproducible.",
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show the full traceback of errors.")] = False,
) -> None:
    cli_common._state["debug"] = debug


@app.command()
def train(
    data: Data = None,
    course: Course = None,
    classes: Classes = None,
    labels: Labels = None,
    weights: Weights = None,
    arch: Arch = "vgg16",
    train_layers: Annotated[
        int, typer.Option("--train-layers", help="1: only the new output layer; 2: also fc2; 3: also fc1.")
    ] = 1,
    image_size: ImageSize = 224,
    augment: Augment = "tp",
    augment_seed: AugmentSeed = 0,
    lr: Annotated[float, typer.Option("--lr", help="SGD learning rate.")] = 0.001,
    momentum: Annotated[float, typer.Option("--momentum", help="SGD momentum.")] = 0.7,
    nesterov: Annotated[bool, typer.Option("--nesterov/--no-nesterov", help="Nesterov momentum.")] = True,
    decay: Annotated[float, typer.Option("--decay", help="Keras 2 SGD decay: lr / (1 + decay * iterations).")] = 1e-6,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per training step.")] = 32,
    epochs: Epochs = 13,
    patience: Annotated[
        int, typer.Option("--patience", help="EarlyStopping: epochs without improvement of --monitor before stopping.")
    ] = 3,
    monitor: Annotated[
        str,
        typer.Option(
            "--monitor",
            help="Metric for EarlyStopping and the best checkpoint: val_categorical_accuracy (the notebook's) or categorical_accuracy (question 8), val_loss, loss.",
        ),
    ] = "val_categorical_accuracy",
    val_split: Annotated[
        float, typer.Option("--val-split", help="Fraction of images held out for validation (stratified).")
    ] = 0.3,
    seed: Annotated[
        int, typer.Option("--seed", help="Seed of the split, the new layers' initial weights and the batch order.")
    ] = 0,
    repeats: Annotated[
        int, typer.Option("--repeats", help="Number of runs, each with its own split and seed (seed, seed+1, ...).")
    ] = 1,
    faithful: Annotated[
        bool,
        typer.Option(
            "--faithful",
            help="Reproduce the notebook's quirks: steps_per_epoch = n_train // batch and validation on n_val // batch batches.",
        ),
    ] = False,
    precision: Precision = "auto",
    xla: Xla = "auto",
    strategy: Strategy = "auto",
    cache: Annotated[
        bool,
        typer.Option(
            "--cache", help="Read features from the feature store (built first if needed): later runs take seconds."
        ),
    ] = False,
    views: Views = None,
    cache_dir: CacheDir = "cache",
    cache_dtype: CacheDtype = "float16",
    out: Annotated[
        Path, typer.Option("--out", help="Folder for model.keras, history.json, run.json, curves.png.")
    ] = Path("runs/latest"),
    export: Annotated[
        str,
        typer.Option(
            "--export",
            help="With --repeats: every run writes its full model.keras (every), or only the best run does (best); "
            "the others keep head.weights.npz, the trained layers alone.",
        ),
    ] = "every",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a model already in --out.")] = False,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue an interrupted run in --out from its last finished epoch.")
    ] = False,
    quiet: Quiet = False,
) -> None:
    """Retrain VGG16's last layer(s) on your images, as the course notebook does, and export model.keras."""

    def body() -> None:
        from fastheads.config import make_config
        from fastheads.train import train as run_train

        d, c, w = course_defaults(course, data, classes, weights)
        cfg = make_config(
            data=d, classes=c, labels_csv=str(labels) if labels else None, weights=w, arch=arch,
            train_layers=train_layers, image_size=image_size, augment=augment, augment_seed=augment_seed,
            lr=lr, momentum=momentum, nesterov=nesterov, decay=decay, batch_size=batch_size, epochs=epochs,
            patience=patience, monitor=monitor, val_split=val_split, seed=seed, repeats=repeats,
            faithful=faithful, precision=precision, xla=xla, strategy=strategy, cache=cache, views=views, cache_dir=cache_dir,
            cache_dtype=cache_dtype, out=str(out), export=export, overwrite=overwrite, resume=resume, verbose=not quiet,
        )  # fmt: skip
        run_train(cfg)

    guarded(body)


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", help="Folder for the demo's data and run.")] = Path("runs/demo"),
    cache: Annotated[
        bool,
        typer.Option("--cache/--no-cache", help="Train from the feature store (built on the first run)."),
    ] = True,
) -> None:
    """Run the whole pipeline offline on a built-in drawn flower set with RANDOM VGG16 weights (about a minute)."""

    def body() -> None:
        from fastheads.demo import write_demo_files
        from fastheads.train import train as run_train

        typer.echo(
            "fastheads demo: a PIPELINE DEMO on drawn images with RANDOM VGG16 weights; "
            "its accuracy is not a measure of anything."
        )
        h5, classes = write_demo_files(out / "data")
        run_train(
            data=str(h5), classes=str(classes), weights="none", image_size=64, epochs=6, views=6,
            out=str(out / "run"), overwrite=True, cache=cache, cache_dir=str(out / "cache"),
        )  # fmt: skip
        typer.echo(f"fastheads demo: done; see {out / 'run'} (model.keras, history.json, run.json, curves.png).")

    guarded(body)


app.add_typer(cache_app, name="cache")
app.command()(tp)
app.command()(bench)
register_evaluate(app)


def main() -> None:
    app(prog_name="fastheads")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
