"""What the `fastheads` sub-commands share: the user-error path and the option types.

Options used by several commands are `Annotated` aliases here, so each is defined (and
its help written) once.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer

from fastheads.errors import UserError

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
    int | None,
    typer.Option(
        "--views",
        help="Augmented views per image the run trains on, epoch e on view 1 + (e mod K) (default: --epochs).",
    ),
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


def course_defaults(
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
