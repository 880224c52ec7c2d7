"""`fastheads tp` (every experiment of the practical work) and `fastheads bench`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fastheads.cli_common import CacheDir, Classes, Data, ImageSize, Precision, Weights, guarded
from fastheads.errors import UserError


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
    ablation_views: Annotated[
        int | None,
        typer.Option(
            "--ablation-views",
            help="Augmented views per image the question-7 ablation runs train on (default: one per epoch, as "
            "the notebook sees). Fewer views make the ten ablation stores much cheaper; epoch e then reuses "
            "view 1 + (e mod N), a deviation from the notebook that the report states.",
        ),
    ] = None,
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

        for name, n in (("--repeats", repeats), ("--ablation-repeats", ablation_repeats),
                        ("--ablation-views", 1 if ablation_views is None else ablation_views)):  # fmt: skip
            if n < 1:
                raise UserError(f"{name} must be at least 1, got {n}.")
        opt = options_from_root(
            str(root) if root else None, data=str(data) if data else None, classes=str(classes) if classes else None,
            weights=weights, holdout=str(holdout) if holdout else None, out=str(out), repeats=repeats,
            ablation_repeats=ablation_repeats, ablation_views=ablation_views, quick=quick, only=tuple(s.strip() for s in (only or "").split(",") if s.strip()),
            image_size=image_size, cache_dir=cache_dir, precision=precision,
        )  # fmt: skip
        run_tp(opt)

    guarded(body)


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
