"""`fastheads bench`: fastheads against the notebook's pipeline and against the floor, side by side.

Everything is measured in one process, one phase after the other, on the same data, split
and weights (the course's question-1 run), because absolute times drift on shared
machines while ratios measured together hold. The floor is the frozen VGG16 forward pass
alone: the work no version of the experiment can skip.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import re
import shutil
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from fastheads.errors import UserError


@dataclass(frozen=True)
class BenchPlan:
    data: str | None = None  # None: the built-in demo set
    classes: str | None = None
    weights: str = "none"
    image_size: int = 224
    epochs: int = 13
    repeats: int = 5  # question 1's five runs
    patience: int | None = None  # None: no early stopping, so every phase trains the same epochs
    floor_batches: int = 4  # batches of 32 timed per floor measurement
    precisions: tuple[str, ...] = ()  # empty: fp32, plus bf16/fp16 where the hardware has them
    quick: bool = False

    @classmethod
    def quick_plan(cls, **kw) -> BenchPlan:
        base = dict(image_size=128, epochs=3, repeats=2, floor_batches=2, quick=True)
        return cls(**{**base, **kw})


class PeakRSS:
    """Peak resident memory of this process during a block (sampled every 20 ms from /proc)."""

    def __enter__(self) -> PeakRSS:
        self.peak, self._stop = self._rss(), threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self._rss())

    @staticmethod
    def _rss() -> int:
        try:
            return int(Path("/proc/self/statm").read_text().split()[1]) * 4096
        except (OSError, IndexError, ValueError):
            return 0


def machine_name() -> str:
    """e.g. 'cpu-amd-epyc-2c-avx512bf16' or 'gpu-nvidia-h200': names the results file.

    The bf16 flags are in the name because they decide the bf16 speed: AMX tiles run the
    convolutions several times faster than AVX512-BF16 alone."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        name = tf.config.experimental.get_device_details(gpus[0]).get("device_name", "gpu")
        return (
            "gpu-" + re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") + (f"-x{len(gpus)}" if len(gpus) > 1 else "")
        )
    model, flags = platform.processor() or "cpu", ""
    try:
        info = Path("/proc/cpuinfo").read_text()
        model = re.search(r"model name\s*:\s*(.*)", info).group(1)
        flags = "".join(f"-{f.replace('_', '')}" for f in ("avx512_bf16", "amx_bf16") if f in info)
    except (OSError, AttributeError):
        pass
    slug = re.sub(r"[^a-z0-9]+", "-", model.lower()).strip("-")[:24]
    return f"cpu-{slug}-{os.cpu_count()}c{flags}"


def _load_baseline():
    path = Path(__file__).resolve().parents[1] / "bench" / "notebook_baseline.py"
    if not path.is_file():
        raise UserError(f"fastheads bench needs a source checkout: the reference pipeline {path} is missing.")
    spec = importlib.util.spec_from_file_location("notebook_baseline", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _precisions(plan: BenchPlan) -> list[str]:
    if plan.precisions:
        return list(plan.precisions)
    from fastheads.backbone import resolve_precision

    fast = resolve_precision("auto")
    return ["fp32"] + ([fast] if fast != "fp32" else [])


def floor_throughput(vgg, images: np.ndarray, precision: str, xla: bool, batches: int) -> float:
    """Images/s of the frozen base alone (block5_pool), after one warm-up batch."""
    from fastheads.backbone import frozen_fn
    from fastheads.preprocess import caffe_preprocess

    fn = frozen_fn(vgg, "block5_pool", precision, xla)
    x = caffe_preprocess(images[np.arange(32) % len(images)])
    fn(x).numpy()
    t0 = time.perf_counter()
    for _ in range(batches):
        fn(x).numpy()
    return 32 * batches / (time.perf_counter() - t0)


def run_bench(plan: BenchPlan, out: str | Path = "bench/results", say=print) -> dict:
    """Run every phase and write <machine>_<date>.json/.md under `out`; return the results dict."""
    work = Path(tempfile.mkdtemp(prefix="fastheads-bench-"))
    try:
        return _run_phases(plan, work, Path(out), say)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # every phase's stores and models: about 7 GB at 224 px


def _run_phases(plan: BenchPlan, work: Path, out: Path, say) -> dict:
    from fastheads import backbone
    from fastheads.data import load_images
    from fastheads.demo import write_demo_files
    from fastheads.preprocess import resize_images
    from fastheads.split import stratified_split
    from fastheads.train import train

    baseline = _load_baseline()
    data, classes = plan.data, plan.classes
    if data is None:
        h5, cls = write_demo_files(work / "data", per_class=10 if plan.quick else 21)
        data, classes = str(h5), str(cls)
    ds = load_images(data, classes)
    images = resize_images(ds.images, plan.image_size)
    split = stratified_split(ds.labels, 0.3, seed=0)
    patience = plan.patience if plan.patience is not None else plan.epochs
    common = dict(data=data, classes=classes, weights=plan.weights, image_size=plan.image_size, epochs=plan.epochs,
                  patience=patience, verbose=False, overwrite=True, xla="auto")  # fmt: skip
    results: dict = {
        "plan": asdict(plan), "machine": machine_name(), "date": time.strftime("%Y-%m-%d %H:%M"),
        "n_images": len(ds), "n_train": len(split[0]), "n_val": len(split[1]),
        "data": "built-in demo set" if plan.data is None else plan.data, "phases": [],
    }  # fmt: skip
    phases = results["phases"]

    def phase(name: str, precision: str, fn, **extra) -> dict:
        say(f"bench: {name} at {precision} ...")
        # The previous phase's model files go to disk now, not while this phase writes its own.
        getattr(os, "sync", lambda: None)()
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            value = fn()
            seconds = time.perf_counter() - t0
        row = {"phase": name, "precision": precision, "seconds": seconds, "peak_rss_gb": mem.peak / 1e9, **extra}
        if isinstance(value, dict):
            row.update(value)
        phases.append(row)
        say(f"bench: {name} at {precision}: {seconds:.1f} s")
        return row

    bb = backbone.prepare(plan.weights, "vgg16", plan.image_size, "fp32", "off")
    weights = bb.vgg.get_weights()
    for p in _precisions(plan):
        for xla in (False, True):
            phase(f"floor (xla {'on' if xla else 'off'})", p,
                  lambda p=p, x=xla: {"images_per_s": floor_throughput(bb.vgg, images, p, x, plan.floor_batches)})  # fmt: skip
        b = phase("baseline: notebook pipeline, 1 run", p, lambda p=p: baseline.notebook_run(
            images, ds.labels, ds.n_classes, weights, split, epochs=plan.epochs, patience=patience,
            precision=p))  # fmt: skip
        b["val_acc_best"] = max(b["history"]["val_categorical_accuracy"])
        phase("fastheads uncached, 1 run", p, lambda p=p: _run(train, common, p, work / f"u-{p}"))
        cache_dir = work / f"cache-{p}"
        phase("fastheads cache build", p, lambda p=p, c=cache_dir: _build(common, p, c),
              images_built=len(ds) * (1 + plan.epochs))  # fmt: skip
        phase(f"fastheads cached, {plan.repeats} runs (store built)", p,
              lambda p=p, c=cache_dir: _run(train, common, p, work / f"r-{p}", cache=True, cache_dir=str(c),
                                            repeats=plan.repeats))  # fmt: skip
        phase(
            "fastheads warm cached, 1 run",
            p,
            lambda p=p, c=cache_dir: _run(train, common, p, work / f"w-{p}", cache=True, cache_dir=str(c)),
        )
    results["summary"] = summarize(results)
    return write_results(results, out)


def _run(train, common: dict, precision: str, out: Path, **kw) -> dict:
    r = train(**common, precision=precision, out=str(out), **kw)
    accs = [r_.best_value for r_ in r.runs]
    export_s = sum(r_.record["timings_s"]["export"] for r_ in r.runs)  # writing model.keras: disk-bound
    return {"val_acc_best": float(np.mean(accs)), "epochs_run": int(np.mean([r_.stopped_epoch for r_ in r.runs])),
            "export_s": export_s}  # fmt: skip


def _build(common: dict, precision: str, cache_dir: Path) -> dict:
    from fastheads.cache import build_cache
    from fastheads.config import make_config

    keep = {k: v for k, v in common.items() if k != "overwrite"}
    build_cache(make_config(**keep, precision=precision, cache=True, cache_dir=str(cache_dir)))
    return {}


def summarize(results: dict) -> dict:
    """The ratios the issue asks for, per precision, from the measured phases."""
    rows = {(r["phase"], r["precision"]): r for r in results["phases"]}
    plan = results["plan"]
    out = {}
    for p in sorted({r["precision"] for r in results["phases"]}):
        base = rows[("baseline: notebook pipeline, 1 run", p)]["seconds"]
        warm_row = rows[("fastheads warm cached, 1 run", p)]
        warm, uncached = warm_row["seconds"], rows[("fastheads uncached, 1 run", p)]["seconds"]
        build = rows[("fastheads cache build", p)]
        runs = rows[(f"fastheads cached, {plan['repeats']} runs (store built)", p)]["seconds"]
        floor = max(rows[(f"floor (xla {x})", p)]["images_per_s"] for x in ("off", "on"))
        build_rate = build["images_built"] / build["seconds"]
        cold_total = build["seconds"] + runs
        out[p] = {
            "baseline_run_s": base,
            "uncached_run_s": uncached,
            "warm_run_s": warm,
            "warm_export_s": warm_row["export_s"],
            "warm_speedup_vs_baseline": base / warm,
            "warm_speedup_vs_uncached": uncached / warm,
            "warm_speedup_vs_uncached_before_export": uncached / (warm - warm_row["export_s"]),
            "q1_repeats": plan["repeats"],
            "q1_cold_total_s": cold_total,
            "q1_baseline_total_s": plan["repeats"] * base,
            "q1_speedup": plan["repeats"] * base / cold_total,
            "build_images_per_s": build_rate,
            "floor_images_per_s": floor,
            "build_pct_of_floor": 100 * build_rate / floor,
            "runs_to_pay_off": _pay_off(base, build["seconds"], runs / plan["repeats"]),
        }
    return out


def _pay_off(baseline_s: float, build_s: float, cached_run_s: float) -> int:
    """Smallest number of runs n with build + n * cached < n * baseline."""
    if cached_run_s >= baseline_s:
        return -1
    return int(build_s // (baseline_s - cached_run_s)) + 1


def table(results: dict) -> str:
    """The markdown table printed on the terminal and written next to the JSON."""
    plan = results["plan"]
    lines = [
        f"fastheads bench on {results['machine']}, {results['date']}: {results['n_images']} images "
        f"({results['data']}), {plan['image_size']}x{plan['image_size']}, {plan['epochs']} epochs, "
        f"weights {plan['weights']}, early stopping "
        + ("off (every phase trains every epoch)" if plan["patience"] is None else f"patience {plan['patience']}")
        + (" -- QUICK MODE: smaller images, fewer epochs and repeats" if plan["quick"] else ""),
        "",
        "| phase | precision | time (s) | images/s | val acc | peak RSS (GB) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in results["phases"]:
        rate = r.get("images_per_s") or (r["images_built"] / r["seconds"] if "images_built" in r else None)
        acc = r.get("val_acc_best")
        lines.append(
            f"| {r['phase']} | {r['precision']} | {r['seconds']:.1f} | {'' if rate is None else f'{rate:.1f}'} | "
            f"{'' if acc is None else f'{acc:.3f}'} | {r['peak_rss_gb']:.2f} |"
        )
    lines += ["", "| precision | warm run vs uncached (without its export) | warm run vs baseline | "
              "Q1 repeats, cold, vs baseline | build % of floor | pays off after |",
              "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for p, s in results["summary"].items():
        pays = "never" if s["runs_to_pay_off"] < 0 else f"{s['runs_to_pay_off']} run(s)"
        lines.append(
            f"| {p} | {s['warm_speedup_vs_uncached']:.1f}x ({s['warm_speedup_vs_uncached_before_export']:.0f}x) | "
            f"{s['warm_speedup_vs_baseline']:.1f}x | {s['q1_speedup']:.1f}x ({s['q1_repeats']} runs) | "
            f"{s['build_pct_of_floor']:.0f}% | {pays} |"
        )
    return "\n".join(lines) + "\n"


def write_results(results: dict, out: Path) -> dict:
    from fastheads.runio import atomic_write, write_json

    stem = f"{results['machine']}_{results['date'][:10]}" + ("_quick" if results["plan"]["quick"] else "")
    base, n = stem, 2
    while (out / f"{stem}.json").exists() or (out / f"{stem}.md").exists():  # a second bench the same day
        stem, n = f"{base}_{n}", n + 1
    results["files"] = {"json": str(out / f"{stem}.json"), "markdown": str(out / f"{stem}.md")}
    write_json(out / f"{stem}.json", results)
    text = table(results)
    atomic_write(out / f"{stem}.md", lambda p: p.write_text(text))
    results["table"] = text
    return results
