"""The `fastheads` command: a thin Typer layer over the Python API."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer

from fastheads.errors import UserError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Transfer learning on a frozen VGG16, fast, correct and reproducible.",
    pretty_exceptions_enable=False,
)
_state = {"debug": False}
T = TypeVar("T")


def guarded(fn: Callable[[], T]) -> T:
    """Run a command body: a UserError becomes one line on stderr and exit code 2."""
    try:
        return fn()
    except UserError as e:
        if _state["debug"]:
            raise
        typer.echo(f"fastheads: error: {e}", err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        typer.echo("fastheads: interrupted; finished files are intact, rerun to continue.", err=True)
        raise typer.Exit(130) from None


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show the full traceback of errors.")] = False,
) -> None:
    _state["debug"] = debug


# --------------------------------------------------------------------------- train

Data = Annotated[
    Path | None,
    typer.Option(
        "--data",
        help="Training images: an HDF5 file (images, labels) or a folder of images with a file,label CSV.",
    ),
]
Course = Annotated[
    Path | None,
    typer.Option(
        "--course",
        help="The course folder (with imagenet_dataset/ and flowers_dataset/); finds the data, class names and weights in it.",
    ),
]
Classes = Annotated[
    Path | None, typer.Option("--classes", help="Class-names file, one name per line, line i naming class i.")
]


def _course_defaults(
    course: Path | None, data: Path | None, classes: Path | None, weights: str | None
) -> tuple[str, str | None, str]:
    if course is not None:
        from fastheads.data import find_course_files

        found = find_course_files(course)
        data = data or found.train
        classes = classes or found.classes
        if weights is None and found.weights is not None:
            weights = str(found.weights)
    if data is None:
        raise UserError("--data (or --course) is required: the training images.")
    return str(data), (str(classes) if classes else None), weights or "imagenet"


Labels = Annotated[
    Path | None, typer.Option("--labels", help="For a folder of images: the labels CSV (columns file,label).")
]
Weights = Annotated[
    str | None,
    typer.Option(
        "--weights",
        help="imagenet (downloads), none (random: tests and demos only), or a path to vgg16_weights.h5 / a Keras 3 .weights.h5 file.",
    ),
]
Arch = Annotated[
    str,
    typer.Option(
        "--arch",
        help="vgg16: the course's heads on fc2; v2: block5 removed, new 4096-4096 head on block4_pool (question 3).",
    ),
]
ImageSize = Annotated[
    int,
    typer.Option("--image-size", help="Images are resized (antialiased bilinear) to this square size; VGG16's is 224."),
]
Augment = Annotated[
    str,
    typer.Option(
        "--augment",
        help='Preset (tp, tp-q7, none) or ImageDataGenerator arguments, e.g. "rotation_range=10,zoom_range=[0.8,1.4],horizontal_flip=true".',
    ),
]
AugmentSeed = Annotated[
    int,
    typer.Option(
        "--augment-seed", help="Seed of the augmentation draws; kept across repeats so they share a feature store."
    ),
]
Epochs = Annotated[int, typer.Option("--epochs", help="Maximum number of epochs.")]
Precision = Annotated[
    str,
    typer.Option(
        "--precision",
        help="Precision of the frozen base: auto, fp32, bf16, fp16. auto is bf16 where the hardware has it.",
    ),
]
Xla = Annotated[str, typer.Option("--xla", help="XLA-compile the frozen base: auto (on for GPUs), on, off.")]
Strategy = Annotated[
    str,
    typer.Option(
        "--strategy",
        help="Devices to spread the work over: auto (a TPU if present, else all local GPUs, else one device), default (one device), mirrored (all local GPUs), multiworker (machines in TF_CONFIG) or tpu.",
    ),
]
Views = Annotated[
    int | None, typer.Option("--views", help="Augmented views per image in the feature store (default: --epochs).")
]
CacheDir = Annotated[
    str,
    typer.Option(
        "--cache-dir",
        help="Root of the feature store: a folder, or a URL fsspec knows (gs://bucket/cache, s3://..., memory://) to share one store between machines.",
    ),
]
CacheDtype = Annotated[str, typer.Option("--cache-dtype", help="float16 (default, half the size) or float32.")]
Quiet = Annotated[bool, typer.Option("--quiet", help="Print only errors.")]


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

        d, c, w = _course_defaults(course, data, classes, weights)
        cfg = make_config(
            data=d, classes=c, labels_csv=str(labels) if labels else None, weights=w, arch=arch,
            train_layers=train_layers, image_size=image_size, augment=augment, augment_seed=augment_seed,
            lr=lr, momentum=momentum, nesterov=nesterov, decay=decay, batch_size=batch_size, epochs=epochs,
            patience=patience, monitor=monitor, val_split=val_split, seed=seed, repeats=repeats,
            faithful=faithful, precision=precision, xla=xla, strategy=strategy, cache=cache, views=views, cache_dir=cache_dir,
            cache_dtype=cache_dtype, out=str(out), overwrite=overwrite, resume=resume, verbose=not quiet,
        )  # fmt: skip
        run_train(cfg)

    guarded(body)


# --------------------------------------------------------------------------- cache

cache_app = typer.Typer(no_args_is_help=True, help="Build, list, check and remove feature-store entries.")
app.add_typer(cache_app, name="cache")


@cache_app.command("build")
def cache_build(
    data: Data = None,
    course: Course = None,
    labels: Labels = None,
    weights: Weights = None,
    arch: Arch = "vgg16",
    image_size: ImageSize = 224,
    augment: Augment = "tp",
    augment_seed: AugmentSeed = 0,
    epochs: Epochs = 13,
    views: Views = None,
    precision: Precision = "auto",
    xla: Xla = "auto",
    strategy: Strategy = "auto",
    cache_dir: CacheDir = "cache",
    cache_dtype: CacheDtype = "float16",
    shard: Annotated[
        str,
        typer.Option(
            "--shard", help="Build only share i of n (as i/n) of the entry, e.g. on n machines sharing one store."
        ),
    ] = "0/1",
    quiet: Quiet = False,
) -> None:
    """Compute the features a `train --cache` run with the same options would use, without training."""

    def body() -> None:
        from fastheads.cache import build_cache
        from fastheads.config import make_config

        try:
            i, n = (int(x) for x in shard.split("/"))
        except ValueError:
            raise UserError(f"--shard must look like i/n (e.g. 0/4), got {shard!r}.") from None
        d, _, w = _course_defaults(course, data, None, weights)
        cfg = make_config(
            data=d, labels_csv=str(labels) if labels else None, weights=w, arch=arch, image_size=image_size,
            augment=augment, augment_seed=augment_seed, epochs=epochs, views=views, precision=precision,
            xla=xla, strategy=strategy, cache_dir=cache_dir, cache_dtype=cache_dtype, verbose=not quiet,
        )  # fmt: skip
        build_cache(cfg, (i, n))

    guarded(body)


@cache_app.command("ls")
def cache_ls(cache_dir: CacheDir = "cache") -> None:
    """List the entries: key, what they hold, size on disk, complete or partial."""

    def body() -> None:
        from fastheads.cache import describe_entry
        from fastheads.feature_store import list_entries

        entries = list_entries(cache_dir)
        if not entries:
            typer.echo(f"no feature-store entries under {cache_dir}")
            return
        for path in entries:
            d = describe_entry(path)
            typer.echo(
                f"{d['key']}  {d['status']:<22} {d['images']} images x {d['views']} views at {d['cut']}, "
                f"{d['size']}px, {d['precision']}/{d['dtype']}, weights {d['weights']}, augment {d['augment']}, "
                f"{d['bytes'] / 1e6:.1f} MB"
            )

    guarded(body)


@cache_app.command("rm")
def cache_rm(
    key: Annotated[str | None, typer.Argument(help="The entry's key, as `fastheads cache ls` prints it.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Remove every entry.")] = False,
    cache_dir: CacheDir = "cache",
) -> None:
    """Remove one entry, or all of them."""

    def body() -> None:
        from fastheads.feature_store import list_entries, remove_entry

        if all_ == (key is not None):
            raise UserError("give either a KEY or --all.")
        keys = [p.name for p in list_entries(cache_dir)] if all_ else [key]
        for k in keys:
            typer.echo(f"removed {remove_entry(cache_dir, k)}")

    guarded(body)


@cache_app.command("verify")
def cache_verify(cache_dir: CacheDir = "cache") -> None:
    """Re-read every complete entry and check each row against its checksum; damaged ones are marked for rebuild."""

    def body() -> None:
        from fastheads.cache import verify_entry
        from fastheads.feature_store import list_entries

        damaged = 0
        for path in list_entries(cache_dir):
            status = verify_entry(path)
            damaged += status != "ok"
            typer.echo(f"{path.name}  {status}")
        if damaged:
            raise typer.Exit(1)

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


# --------------------------------------------------------------------------- tp


@app.command()
def tp(
    root: Annotated[
        Path | None, typer.Argument(help="The course folder (imagenet_dataset/, flowers_dataset/); or give --data etc.")
    ] = None,
    data: Data = None,
    classes: Classes = None,
    weights: Weights = None,
    holdout: Annotated[
        Path | None, typer.Option("--holdout", help="The holdout HDF5 (flowers_holdout.h5) for questions 5-7.")
    ] = None,
    out: Annotated[
        Path, typer.Option("--out", help="Folder for every run, the course's model files and report.md.")
    ] = Path("tp"),
    repeats: Annotated[
        int, typer.Option("--repeats", help="Runs of questions 1 and 8, each with its own split and seed.")
    ] = 5,
    ablation_repeats: Annotated[
        int, typer.Option("--ablation-repeats", help="Runs per configuration of the question-7 ablation.")
    ] = 3,
    quick: Annotated[
        bool, typer.Option("--quick", help="A smoke version: every question with 2 epochs, 2 views, at most 2 repeats.")
    ] = False,
    only: Annotated[
        str | None, typer.Option("--only", help="Comma-separated questions to run, e.g. Q1,Q5 (Q5 brings Q4).")
    ] = None,
    image_size: ImageSize = 224,
    cache_dir: CacheDir = "cache",
    precision: Precision = "auto",
) -> None:
    """Run every experiment of the practical work (questions 1-8), sharing feature stores, and write report.md."""

    def body() -> None:
        from fastheads.tp import options_from_root, run_tp

        for name, n in (("--repeats", repeats), ("--ablation-repeats", ablation_repeats)):
            if n < 1:
                raise UserError(f"{name} must be at least 1, got {n}.")
        opt = options_from_root(
            str(root) if root else None, data=str(data) if data else None, classes=str(classes) if classes else None,
            weights=weights, holdout=str(holdout) if holdout else None, out=str(out), repeats=repeats,
            ablation_repeats=ablation_repeats, quick=quick, only=tuple(s.strip() for s in (only or "").split(",") if s.strip()),
            image_size=image_size, cache_dir=cache_dir, precision=precision,
        )  # fmt: skip
        run_tp(opt)

    guarded(body)


# --------------------------------------------------------------------------- bench


@app.command()
def bench(
    data: Annotated[
        Path | None,
        typer.Option("--data", help="Images to time on (default: the built-in demo set), e.g. 10FlowerColorImages.h5."),
    ] = None,
    classes: Classes = None,
    weights: Annotated[
        str, typer.Option("--weights", help="Weights for every phase; timing does not depend on them, accuracy does.")
    ] = "none",
    quick: Annotated[
        bool,
        typer.Option(
            "--quick", help="A first look in under 3 minutes on 2 cores: 128x128 images, 3 epochs, 2 repeats."
        ),
    ] = False,
    image_size: Annotated[
        int | None, typer.Option("--image-size", help="Override the image size (default 224, 128 with --quick).")
    ] = None,
    epochs: Annotated[
        int | None, typer.Option("--epochs", help="Override the epochs per run (default 13, 3 with --quick).")
    ] = None,
    repeats: Annotated[
        int | None, typer.Option("--repeats", help="Override question 1's number of runs (default 5, 2 with --quick).")
    ] = None,
    precision: Annotated[
        list[str] | None,
        typer.Option(
            "--precision",
            help="Precisions to measure (repeatable); default fp32 plus bf16/fp16 where the hardware has them.",
        ),
    ] = None,
    out: Annotated[Path, typer.Option("--out", help="Folder for <machine>_<date>.json and .md.")] = Path(
        "bench/results"
    ),
) -> None:
    """Time the notebook's pipeline, fastheads uncached, cold and warm cache, and the frozen-base floor, side by side."""

    def body() -> None:
        from fastheads.bench import BenchPlan, run_bench

        over = {k: v for k, v in dict(image_size=image_size, epochs=epochs, repeats=repeats).items() if v is not None}
        common = dict(data=str(data) if data else None, classes=str(classes) if classes else None, weights=weights,
                      precisions=tuple(precision or ()), **over)  # fmt: skip
        plan = BenchPlan.quick_plan(**common) if quick else BenchPlan(**common)
        results = run_bench(plan, out)
        typer.echo(results["table"])
        typer.echo(f"wrote {results['files']['json']} and {results['files']['markdown']}")

    guarded(body)


try:
    from fastheads.cli_evaluate import register as _register_evaluate

    _register_evaluate(app)
except ImportError:  # pragma: no cover
    pass


def main() -> None:
    app(prog_name="fastheads")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
