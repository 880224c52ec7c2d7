"""`fastheads tp`: every experiment of the practical work in one command, then a report.

The runner prints the plan (runs, feature-store entries to build or reuse, a time
estimate), runs each experiment through `fastheads.train` with `resume=True` (so a rerun
after a Colab disconnect skips what is finished and continues what is not), evaluates
the models that the questions test on the holdout, and hands the results to tp_report.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from fastheads.config import TrainConfig
from fastheads.data import find_course_files
from fastheads.errors import UserError
from fastheads.tp_plan import Experiment, select


@dataclass(frozen=True)
class TpOptions:
    data: str
    classes: str | None
    weights: str
    holdout: str | None
    out: str = "tp"
    repeats: int = 5  # question 1's (and 8's) runs
    ablation_repeats: int = 3  # runs per configuration of the question-7 ablation
    ablation_views: int | None = None  # views the ablation runs train on; None: one per epoch (the notebook's count)
    quick: bool = False
    only: tuple[str, ...] = ()
    image_size: int = 224
    cache_dir: str = "cache"
    precision: str = "auto"


def options_from_root(root: str | None, **kw) -> TpOptions:
    """Fill data/classes/weights/holdout from the course folder where not given explicitly."""
    if root:
        found = find_course_files(root)
        kw["data"] = kw.get("data") or str(found.train)
        kw["classes"] = kw.get("classes") or (str(found.classes) if found.classes else None)
        kw["weights"] = kw.get("weights") or (str(found.weights) if found.weights else None)
        kw["holdout"] = kw.get("holdout") or (str(found.holdout) if found.holdout else None)
    if not kw.get("data"):
        raise UserError("give the course folder (ROOT) or --data.")
    if not kw.get("weights"):
        raise UserError("no vgg16_weights.h5 found in the course folder; pass --weights (imagenet, none or a file).")
    return TpOptions(**{k: v for k, v in kw.items() if v is not None or k in ("classes", "holdout")})


def config_for(exp: Experiment, opt: TpOptions) -> TrainConfig:
    base = TrainConfig(
        data=opt.data, classes=opt.classes, weights=opt.weights, image_size=opt.image_size, cache=True,
        cache_dir=opt.cache_dir, precision=opt.precision, out=str(Path(opt.out) / exp.qid), overwrite=True,
        resume=True, verbose=False, export="best",
    )  # fmt: skip
    repeats = {"plan": opt.repeats, "ablation": opt.ablation_repeats, "one": 1}[exp.repeats]
    changes = dict(exp.changes)
    if opt.quick:  # a smoke version: every question, tiny budgets
        changes["epochs"] = 4 if changes.get("epochs", 13) > 13 else 2  # Q4 keeps "twice as long"
        changes["views"] = 2
        repeats = min(repeats, 2)
    if exp.group == "ablation" and opt.ablation_views is not None:
        changes["views"] = opt.ablation_views
    return base.replace(repeats=repeats, **changes)


def plan_lines(plan: list[tuple[Experiment, TrainConfig]], opt: TpOptions) -> tuple[list[str], float]:
    """The plan as text (runs, entries built/reused, time estimate) and the estimate in seconds."""
    from fastheads.backbone import prepare
    from fastheads.cache import open_entry, run_views
    from fastheads.data import load_images

    ds = load_images(opt.data, opt.classes)
    bb = prepare(opt.weights, "vgg16", opt.image_size, opt.precision, "auto")
    rate = _images_per_second(bb.base_fn, opt.image_size)
    entries: dict[str, tuple] = {}  # key -> (entry, the most views any experiment on it may read)
    lines = []
    n_runs = 0
    for exp, cfg in plan:
        entry = open_entry(cfg, ds, bb.vgg, bb.precision, bb.xla)
        k = max(run_views(cfg), entries.get(entry.key, (entry, 0))[1])
        entries[entry.key] = (entry, k)
        n_runs += cfg.repeats
        lines.append(f"  {exp.qid:<18} {cfg.repeats} run(s) x {cfg.epochs} epochs, store {entry.key[:8]}  {exp.title}")
    missing = {}
    for key, (e, k) in entries.items():
        done = e.done_units()  # one listing per entry
        missing[key] = sum(not e.view_ready(v, done) for v in range(k + 1)) * e.n_images
    to_build = sum(missing.values())
    estimate = to_build / rate + n_runs * 6.0
    # Not a bound: a build runs at 75-100% of the bare base's rate, and a v2 head (411M
    # parameters) trained for 124 s on one 2-core CPU and 236 s on another.
    v2 = ", plus the v2 head's training (minutes on a CPU)" if any(c.arch == "v2" for _, c in plan) else ""
    head = [
        f"fastheads tp: {len(plan)} experiments, {n_runs} training runs, {len(entries)} feature-store entries "
        f"({sum(n > 0 for n in missing.values())} to build or extend: up to {to_build} images through VGG16 at "
        f"~{rate:.0f}/s; views no epoch reaches are never built), estimated roughly {estimate / 60:.0f} min{v2}",
    ]
    return head + lines, estimate


def _images_per_second(fn, size: int) -> float:
    """A quick floor measurement for the estimate (one warm-up batch, one timed)."""
    import numpy as np

    x = np.zeros((8, size, size, 3), np.float32)
    fn(x)
    t0 = time.perf_counter()
    fn(x).numpy()
    return 8 / max(time.perf_counter() - t0, 1e-6)


def run_tp(opt: TpOptions, say=print) -> dict:
    """Run the plan; return {qid: {"runs": [...], "eval": ...}} plus timings, and write the report."""
    from fastheads.evaluate import evaluate
    from fastheads.tp_report import write_report
    from fastheads.train import best_run, train

    out = Path(opt.out)
    experiments = select(list(opt.only))
    plan = [(e, config_for(e, opt)) for e in experiments]
    lines, estimate = plan_lines(plan, opt)
    for line in lines:
        say(line)
    results: dict = {"experiments": {}, "estimate_s": estimate}
    t_start = time.perf_counter()
    for i, (exp, cfg) in enumerate(plan, 1):
        say(f"[{i}/{len(plan)}] {exp.qid}: {exp.title}")
        t0 = time.perf_counter()
        res = train(cfg)
        entry = {"config": cfg, "runs": [r.out_dir for r in res.runs], "seconds": time.perf_counter() - t0}
        if exp.model_name:
            entry["course_model"] = _name_model(res, cfg, out / "models" / exp.model_name)
        if exp.holdout and opt.holdout:
            best = best_run(res.runs, cfg.monitor)
            ev = evaluate(best.model_path, opt.holdout, opt.classes, out=best.out_dir / "holdout", verbose=False)
            entry["eval"] = {"accuracy": ev.accuracy, "dir": best.out_dir / "holdout", "model": best.model_path}
            say(f"    holdout accuracy {ev.accuracy:.4f}")
        results["experiments"][exp.qid] = entry
        say(f"    done in {entry['seconds']:.1f}s")
    results["total_s"] = time.perf_counter() - t_start
    times = _merge_times(out, {q: e["seconds"] for q, e in results["experiments"].items() if e["seconds"] > 0.5})
    whole = [(e, config_for(e, opt)) for e in select([])]
    for exp, cfg in whole:  # the report covers every finished experiment, not only this invocation's
        if exp.qid not in results["experiments"]:
            earlier = _finished(exp, cfg, out)
            if earlier is not None:
                results["experiments"][exp.qid] = earlier
    for qid, entry in results["experiments"].items():
        entry["seconds"] = times.get(qid, entry["seconds"])
    report = write_report(results, whole, opt)
    say(f"fastheads tp: report written to {report}")
    results["report"] = report
    return results


def _finished(exp: Experiment, cfg: TrainConfig, out: Path) -> dict | None:
    """An experiment finished by an earlier invocation with this very configuration, else None."""
    from fastheads.train import best_run, finished_run

    dirs = [Path(cfg.out)] if cfg.repeats == 1 else [Path(cfg.out) / f"run_{r + 1:02d}" for r in range(cfg.repeats)]
    runs = [finished_run(d, cfg, cfg.seed + r) for r, d in enumerate(dirs)]
    if any(r is None for r in runs):
        return None
    entry: dict = {"config": cfg, "runs": dirs, "seconds": 0.0}
    if exp.model_name and (out / "models" / exp.model_name).is_file():
        entry["course_model"] = out / "models" / exp.model_name
    best = best_run(runs, cfg.monitor)
    metrics = best.out_dir / "holdout" / "metrics.json"
    if exp.holdout and metrics.is_file():
        import json

        acc = json.loads(metrics.read_text())["accuracy"]
        entry["eval"] = {"accuracy": acc, "dir": best.out_dir / "holdout", "model": best.model_path}
    return entry


def _merge_times(out: Path, new: dict[str, float]) -> dict[str, float]:
    """Seconds per experiment, kept across invocations in out/tp_times.json."""
    import json

    from fastheads.runio import write_json

    path = out / "tp_times.json"
    try:
        times = json.loads(path.read_text())
    except (OSError, ValueError):
        times = {}
    times.update(new)
    write_json(path, times)
    return times


def _name_model(res, cfg: TrainConfig, target: Path) -> Path:
    """Give the course's file name to the kept model (the best repeat's), as a hard link where possible."""
    from fastheads.train import best_run

    src = best_run(res.runs, cfg.monitor).model_path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.unlink(missing_ok=True)
    try:
        os.link(src, target)
    except OSError:
        shutil.copyfile(src, target)
    return target
