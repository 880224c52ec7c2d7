"""`fastheads cache build | ls | rm | verify`."""

from __future__ import annotations

from typing import Annotated

import typer

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
from fastheads.errors import UserError

cache_app = typer.Typer(no_args_is_help=True, help="Build, list, check and remove feature-store entries.")


@cache_app.command("build")
def cache_build(
    data: Data = None,
    course: Course = None,
    classes: Classes = None,
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
        d, c, w = course_defaults(course, data, classes, weights)
        cfg = make_config(
            data=d, classes=c, labels_csv=str(labels) if labels else None, weights=w, arch=arch, image_size=image_size,
            augment=augment, augment_seed=augment_seed, epochs=epochs, views=views, precision=precision,
            xla=xla, strategy=strategy, cache_dir=cache_dir, cache_dtype=cache_dtype, verbose=not quiet,
        )  # fmt: skip
        build_cache(cfg, (i, n))

    guarded(body)


@cache_app.command("ls")
def cache_ls(cache_dir: CacheDir = "cache") -> None:
    """List the entries: key, what they hold (images, views built), size on disk, ready or partial."""

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
                f"{d['key']}  {d['status']:<8} {d['images']} images, {d['views']} views at {d['cut']}, "
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
    """Re-read every built view of every entry and check each row against its checksum; damaged rows are rebuilt on next use."""

    def body() -> None:
        from fastheads.cache import verify_entry
        from fastheads.feature_store import list_entries

        damaged = 0
        for path in list_entries(cache_dir):
            status = verify_entry(path)
            damaged += status.startswith("DAMAGED")
            typer.echo(f"{path.name}  {status}")
        if damaged:
            raise typer.Exit(1)

    guarded(body)
