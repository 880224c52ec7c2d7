"""The `evaluate` and `report` commands, registered onto the `fastheads` Typer app by cli.py.

Kept apart from cli.py so the training CLI does not grow past reading size; `guarded` is
imported inside the command bodies because cli.py imports this module.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer


def _registered(app: typer.Typer, name: str) -> bool:
    return any((c.name or getattr(c.callback, "__name__", "")) == name for c in app.registered_commands)


def register(app: typer.Typer) -> None:
    """Add `evaluate` and `report` to `app`; calling it twice adds nothing the second time."""
    if _registered(app, "evaluate"):
        return

    @app.command()
    def evaluate(
        model: Annotated[
            Path,
            typer.Argument(
                help="The model to test: a .keras or .h5 file taking caffe-preprocessed HxWx3 images and giving class probabilities, from fastheads or the course notebook.",
            ),
        ],
        data: Annotated[
            Path,
            typer.Option(
                "--data",
                help="Holdout images: the course's HDF5 file (images, labels, optional filenames) or a folder of images with a file,label CSV.",
            ),
        ],
        classes: Annotated[
            Path | None,
            typer.Option(
                "--classes",
                help="Class-names file, one name per line, line i naming class i. Optional for a fastheads run, whose run.json has them.",
            ),
        ] = None,
        labels: Annotated[
            Path | None,
            typer.Option("--labels", help="For a folder of images: the labels CSV (columns file,label)."),
        ] = None,
        out: Annotated[
            Path | None,
            typer.Option(
                "--out",
                help="Folder for predictions.csv, metrics.json, confusion.png and errors.png. Default: eval_<holdout name> next to the model.",
            ),
        ] = None,
        gradcam: Annotated[
            bool,
            typer.Option(
                "--gradcam",
                help="Also write gradcam.png: where in each image the network found its evidence (misclassified images first).",
            ),
        ] = False,
        gradcam_layer: Annotated[
            str | None,
            typer.Option(
                "--gradcam-layer", help="Convolutional layer Grad-CAM looks at. Default: the last one (block5_conv3)."
            ),
        ] = None,
        quiet: Annotated[
            bool, typer.Option("--quiet", help="Print only the accuracy (and error messages), not every image.")
        ] = False,
    ) -> None:
        """Test a trained model on holdout images: per-image predictions, accuracy, confusion matrix, error pictures."""
        from fastheads.cli_common import guarded

        def body() -> None:
            from fastheads.evaluate import evaluate as run_evaluate

            target = out if out is not None else model.parent / f"eval_{data.stem}"
            result = run_evaluate(
                model, data, classes, out=target, gradcam=gradcam, verbose=not quiet,
                labels_csv=labels, gradcam_layer=gradcam_layer,
            )  # fmt: skip
            if quiet:
                typer.echo(f"accuracy: {result.accuracy:.4f}")

        guarded(body)

    @app.command()
    def report(
        run_dirs: Annotated[
            list[Path],
            typer.Argument(
                help="Run folders written by fastheads train (or the folder of a --repeats run, meaning all its run_* folders).",
            ),
        ],
        out: Annotated[
            Path | None,
            typer.Option(
                "--out",
                help="Folder for report.png, runs.md and runs.json. Default: the run folders' common parent.",
            ),
        ] = None,
        title: Annotated[
            str | None,
            typer.Option("--title", help="Title of the figure and the table. Default: the configuration of the runs."),
        ] = None,
    ) -> None:
        """Compare training runs: their curves on one figure (mean and band over repeats) and a table of their numbers."""
        from fastheads.cli_common import guarded

        def body() -> None:
            from fastheads.report import report_runs

            target = out if out is not None else _common_parent(run_dirs)
            result = report_runs(run_dirs, target, title or "")
            typer.echo(f"fastheads: {len(result['runs'])} runs; wrote " + ", ".join(result["files"].values()))

        guarded(body)


def _common_parent(dirs: list[Path]) -> Path:
    """One folder: itself; several: their deepest common folder (the current one if they share none)."""
    if len(dirs) == 1:
        return dirs[0]
    try:
        common = Path(os.path.commonpath([str(d.resolve()) for d in dirs]))
    except ValueError:  # different drives
        return Path(".")
    return common if common != Path(common.anchor) else Path(".")
