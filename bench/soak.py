"""Soak test, run by hand: kill fastheads at random moments and check that rerunning loses nothing.

    python bench/soak.py                 # 50 kill points, about 10 minutes on 2 cores
    python bench/soak.py --kills 9 --seed 3

For each kill point: start a real process (`fastheads cache build`, `fastheads train`, or
`fastheads train --cache`), SIGKILL it after a random delay, rerun it to completion (the
same build; `train --resume`), and compare with a clean, uninterrupted reference:

- cache build: the zarr chunk files and the decoded array byte for byte, and the units' CRCs;
- training: history.json equal, model.keras's 'predictions' weights equal (and, for
  `train --cache`, its feature-store entry equal to the cache reference's).

The data are tiny (fastheads' demo set, 30 images at 64x64, random weights, fp32, no
XLA) so that each kill point costs a few seconds. Not collected by pytest; CI does not
run it. Exit code 1 if any result differs or any rerun fails.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

EPOCHS = 5
KINDS = ("cache", "train", "train-cached")
COMMON = ["--weights", "none", "--image-size", "64", "--precision", "fp32", "--xla", "off", "--quiet"]


@dataclass
class Setup:
    work: Path
    h5: Path
    classes: Path

    def command(self, kind: str, folder: Path, resume: bool = False) -> list[str]:
        base = [sys.executable, "-m", "fastheads"]
        if kind == "cache":
            return [*base, "cache", "build", "--data", str(self.h5), "--epochs", str(EPOCHS), "--views", str(EPOCHS),
                    "--cache-dir", str(folder / "cache"), *COMMON]  # fmt: skip
        cmd = [*base, "train", "--data", str(self.h5), "--classes", str(self.classes), "--epochs", str(EPOCHS),
               "--patience", str(EPOCHS), "--batch-size", "8", "--out", str(folder / "run"), *COMMON]  # fmt: skip
        if kind == "train-cached":
            cmd += ["--cache", "--cache-dir", str(folder / "cache")]
        return cmd + (["--resume"] if resume else [])


@dataclass
class Progress:
    """What a (killed) run left on disk."""

    units: int = 0  # finished feature-store units
    n_units: int = 0
    complete: bool = False  # every unit of the EPOCHS + 1 views the soak uses is built
    epochs: int = 0  # epochs in the checkpoint
    model: bool = False  # model.keras written
    run_json: bool = False  # run.json written (the run is finished)
    temporaries: list[str] = field(default_factory=list)


def progress(folder: Path) -> Progress:
    p = Progress()
    entries = [e for e in (folder / "cache").glob("*") if (e / "features").is_dir()]
    if entries:
        e = entries[0]
        p.units = len(list((e / "units").glob("u*.json")))
        try:
            meta = json.loads((e / "features" / "zarr.json").read_text())["attributes"]["fastheads"]["key_inputs"]
            p.n_units = -(-meta["n_images"] * (1 + EPOCHS) // 32)  # views 0..EPOCHS
        except (OSError, ValueError, KeyError):
            pass
        p.complete = p.n_units > 0 and p.units >= p.n_units
    run = folder / "run"
    try:
        p.epochs = json.loads((run / "checkpoint" / "state.json").read_text())["epochs_done"]
    except (OSError, ValueError, KeyError):
        pass
    p.model = (run / "model.keras").is_file()
    p.run_json = (run / "run.json").is_file()
    if p.run_json:
        p.epochs = EPOCHS
    p.temporaries = [str(q.relative_to(folder)) for q in folder.rglob("*") if q.is_file() and _temporary(q.name)]
    return p


def _temporary(name: str) -> bool:
    """Left by an interrupted write: fastheads' atomic writes (.name.XXXX) or zarr's chunk writes (*.partial)."""
    return (name.startswith(".") and not name.startswith(".lock")) or name.endswith(".partial")


def where(kind: str, killed: bool, p: Progress) -> tuple[str, str]:
    """(category, detail): where in the work the kill landed."""
    if not killed:
        return "after", "the process had already finished"
    if kind == "cache":
        if p.complete:
            return "after", "entry complete, process still exiting"
        if p.units == 0:
            return "before", "startup or first unit"
        return "mid", f"{p.units}/{p.n_units} units built"
    if p.run_json:
        return "after", "run written, process still exiting"
    if p.model:
        return "mid", f"exporting (model.keras written after {p.epochs}/{EPOCHS} epochs)"
    if p.epochs:
        return "mid", f"{p.epochs}/{EPOCHS} epochs checkpointed"
    if kind == "train-cached" and p.complete:
        return "mid", "feature store views built, an epoch running"
    if kind == "train-cached" and p.units:
        return "mid", f"building the feature store, {p.units}/{p.n_units} units"
    return "before", "startup or first epoch"


def run_timed(setup: Setup, kind: str, folder: Path) -> tuple[float, float]:
    """An uninterrupted run; returns (seconds to its first persisted progress, seconds to the end)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(setup.command(kind, folder), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first = None
    while proc.poll() is None:
        p = progress(folder)
        if first is None and (p.units or p.epochs):
            first = time.perf_counter() - t0
        time.sleep(0.05)
    total = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"soak: the reference {kind} run failed:\n{proc.stderr.read().decode()[-3000:]}")
    return (first if first is not None else total / 2), total


def entry_bytes(folder: Path) -> dict[str, bytes]:
    """The chunk files, the decoded views 0..EPOCHS and their row CRCs of the one entry under folder/cache."""
    import zarr

    from fastheads.cache import stored_entry

    (entry,) = [e for e in (folder / "cache").glob("*") if (e / "features").is_dir()]
    out = {"key": entry.name.encode(), "crcs": stored_entry(entry).crc_table(EPOCHS).tobytes()}
    array = zarr.open_array(str(entry / "features"), mode="r")[:, : EPOCHS + 1]
    out["array"] = np.ascontiguousarray(array).tobytes()
    for chunk in sorted((entry / "features" / "c").rglob("*")):
        if chunk.is_file() and not chunk.name.endswith(".partial"):  # zarr's own half-written temporaries
            out[str(chunk.relative_to(entry))] = chunk.read_bytes()
    return out


def differences(a: dict[str, bytes], b: dict[str, bytes]) -> str:
    keys = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    return f"{len(keys)} differ: {', '.join(keys[:4])}"


def run_result(folder: Path) -> dict:
    import keras

    run = folder / "run"
    model = keras.models.load_model(run / "model.keras", compile=False)
    return {
        "history": json.loads((run / "history.json").read_text()),
        "predictions": [np.asarray(w) for w in model.get_layer("predictions").get_weights()],
    }


def same_run(a: dict, b: dict) -> bool:
    return a["history"] == b["history"] and all(
        x.shape == y.shape and np.array_equal(x, y) for x, y in zip(a["predictions"], b["predictions"], strict=True)
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=50, help="number of kill points (default 50)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill delays")
    ap.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated subset of {','.join(KINDS)}")
    ap.add_argument("--work", type=Path, default=None, help="working folder (default: a temporary one, removed)")
    ap.add_argument("--json", type=Path, default=None, help="also write the per-kill results here")
    args = ap.parse_args()
    kinds = [k for k in args.kinds.split(",") if k]
    if not kinds or set(kinds) - set(KINDS) or args.kills < 1:
        ap.error(f"--kinds must name some of {', '.join(KINDS)}; --kills must be >= 1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    work = args.work or Path(tempfile.mkdtemp(prefix="fastheads-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    from fastheads.demo import write_demo_files

    h5, classes = write_demo_files(work / "data", per_class=3, size=64)
    setup = Setup(work, h5, classes)
    rng = np.random.default_rng(args.seed)
    t_start = time.perf_counter()

    refs, windows = {}, {}
    for kind in kinds:
        folder = work / f"ref-{kind}"
        first, total = run_timed(setup, kind, folder)
        windows[kind] = (0.8 * first, total + 0.3)  # from late startup to just past the end
        refs[kind] = {"entry": entry_bytes(folder) if kind != "train" else None,
                      "run": run_result(folder) if kind != "cache" else None}  # fmt: skip
        print(f"soak: reference {kind}: first progress after {first:.1f}s, done after {total:.1f}s", flush=True)
    if "cache" in refs and "train-cached" in refs:
        assert refs["cache"]["entry"]["key"] == refs["train-cached"]["entry"]["key"], "cache and train differ in key"

    results = []
    for i in range(args.kills):
        kind = kinds[i % len(kinds)]
        folder = work / f"kill-{i:03d}"
        delay = float(rng.uniform(*windows[kind]))
        proc = subprocess.Popen(setup.command(kind, folder), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            proc.wait(timeout=delay)
            killed = False
        except subprocess.TimeoutExpired:
            proc.kill()  # SIGKILL: no handler, no cleanup
            proc.wait()
            killed = True
        category, detail = where(kind, killed, progress(folder))
        t0 = time.perf_counter()
        rerun = subprocess.run(setup.command(kind, folder, resume=True), capture_output=True, text=True)
        rerun_s = time.perf_counter() - t0
        ok, why = rerun.returncode == 0, ""
        if not ok:
            why = f"rerun exit {rerun.returncode}: {rerun.stderr.strip().splitlines()[-1:] if rerun.stderr else ''}"
        else:
            if kind != "train" and (got := entry_bytes(folder)) != refs[kind]["entry"]:
                ok, why = (
                    False,
                    "feature-store entry differs from the reference: " + differences(got, refs[kind]["entry"]),
                )
            if kind != "cache" and not same_run(run_result(folder), refs[kind]["run"]):
                ok, why = False, "history.json or predictions weights differ from the reference"
        temporaries = progress(folder).temporaries
        kinds_left = sorted(
            {"zarr .partial" if t.endswith(".partial") else "atomic-write temporary" for t in temporaries}
        )
        results.append({"kill": i, "kind": kind, "delay_s": round(delay, 2), "killed": killed, "where": category,
                        "detail": detail, "rerun_s": round(rerun_s, 1), "match": ok, "problem": why,
                        "temporaries_left": temporaries})  # fmt: skip
        print(f"soak: {i + 1:3d}/{args.kills} {kind:<12} kill at {delay:5.1f}s: {category:<6} ({detail}); "
              f"rerun {rerun_s:4.1f}s: {'match' if ok else 'MISMATCH: ' + why}"
              + (f"; left behind: {len(temporaries)} {', '.join(kinds_left)} file(s)" if temporaries else ""),
              flush=True)  # fmt: skip
        if ok or args.work is None:
            shutil.rmtree(folder, ignore_errors=True)  # a mismatch is kept for inspection when --work is given

    n = len(results)
    count = {c: sum(r["where"] == c for r in results) for c in ("before", "mid", "after")}
    matched = sum(r["match"] for r in results)
    temps = sum(len(r["temporaries_left"]) for r in results)
    partial = sum(t.endswith(".partial") for r in results for t in r["temporaries_left"])
    per_kind = ", ".join(f"{sum(r['kind'] == k for r in results)} {k}" for k in kinds)
    print()
    print(f"soak: {n} kill points ({per_kind}) in {time.perf_counter() - t_start:.0f}s")
    print(f"soak: landed before any progress was saved: {count['before']}, mid-work: {count['mid']}, "
          f"after the work was done: {count['after']}")  # fmt: skip
    print(f"soak: results identical to the uninterrupted reference: {matched}/{n}")
    if temps:
        print(f"soak: note: interrupted writes left {temps} temporary file(s) behind ({partial} zarr .partial chunk "
              f"file(s) in feature-store entries, {temps - partial} fastheads atomic-write temporaries); none is "
              "ever read, but nothing removes them")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"results": results, "summary": {"kills": n, **count, "matched": matched}},
                                        indent=2) + "\n")  # fmt: skip
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if matched == n else 1


if __name__ == "__main__":
    sys.exit(main())
