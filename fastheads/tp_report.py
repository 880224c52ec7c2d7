"""report.md for `fastheads tp`: one section per question, every number read from the runs' files.

No explanations are invented: each section states how the configuration differs from the
base, tabulates what was measured (over repeats: mean ± std, min, max), shows the curves
and the holdout results, and lists plain measured observations (train/validation gap,
stopping epochs, how many validation images stand behind each validation accuracy). The
hypotheses are the reader's job.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path

import numpy as np

from fastheads.augment import AugmentSpec
from fastheads.config import TrainConfig
from fastheads.runio import atomic_write, write_json

BASE = TrainConfig()
SKIP = {"data", "classes", "weights", "out", "overwrite", "resume", "verbose", "cache", "cache_dir", "repeats",
        "image_size", "precision", "labels_csv", "views", "export"}  # fmt: skip


def run_row(run_dir: Path) -> dict:
    """The numbers of one run, straight from its run.json and history.json."""
    rec = json.loads((run_dir / "run.json").read_text())
    hist = json.loads((run_dir / "history.json").read_text())
    tr, va = hist["categorical_accuracy"][-1], hist["val_categorical_accuracy"][-1]
    return {
        "run": run_dir.name, "seed": rec["seed"], "best_epoch": rec["best_epoch"],
        "stopped_epoch": rec["stopped_epoch"], "monitor": rec["config"]["monitor"],
        "best_value": rec["best_value"], "best_val_acc": max(hist["val_categorical_accuracy"]),
        "final_train_acc": tr, "final_val_acc": va, "gap": tr - va,
        "val_images": rec["validation_images_per_epoch"], "train_images": rec["training_images_per_epoch"],
    }  # fmt: skip


def stats(values: list[float]) -> dict:
    a = np.asarray(values, float)
    return {"mean": float(a.mean()), "std": float(a.std()), "min": float(a.min()), "max": float(a.max())}


def differences(cfg: TrainConfig) -> str:
    """How a configuration differs from the notebook's base run, in the course's words."""
    parts = []
    for k, v in asdict(cfg).items():
        if k in SKIP or v == asdict(BASE)[k]:
            continue
        if k == "augment":
            parts.append(f"augment = {AugmentSpec.from_dict(v).describe()}")
        else:
            parts.append(f"{k} = {v}")
    return ", ".join(parts) or "none (the notebook's run)"


def _fmt(x: float) -> str:
    return f"{x:.4f}"


def runs_table(rows: list[dict]) -> list[str]:
    lines = ["| run | seed | best epoch | stopped | best val acc | final train acc | final val acc | gap | val images |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in rows:
        lines.append(
            f"| {r['run']} | {r['seed']} | {r['best_epoch']} | {r['stopped_epoch']} | {_fmt(r['best_val_acc'])} | "
            f"{_fmt(r['final_train_acc'])} | {_fmt(r['final_val_acc'])} | {_fmt(r['gap'])} | {r['val_images']} |"
        )
    if len(rows) > 1:
        s = stats([r["best_val_acc"] for r in rows])
        lines.append(f"| mean ± std (min, max) | | | | {_fmt(s['mean'])} ± {_fmt(s['std'])} "
                     f"({_fmt(s['min'])}, {_fmt(s['max'])}) | | | | |")  # fmt: skip
    return lines


def observations(rows: list[dict]) -> list[str]:
    gaps = stats([r["gap"] for r in rows])
    return [
        f"- Final train − validation accuracy gap: mean {_fmt(gaps['mean'])} (min {_fmt(gaps['min'])}, "
        f"max {_fmt(gaps['max'])}).",
        f"- Stopped after epoch(s) {[r['stopped_epoch'] for r in rows]}; kept epoch(s) "
        f"{[r['best_epoch'] for r in rows]} (by {rows[0]['monitor']}).",
        f"- Each validation accuracy is measured on {rows[0]['val_images']} images; each epoch trains on "
        f"{rows[0]['train_images']} images.",
    ]


def write_report(results: dict, plan: list, opt) -> Path:
    """Write out/report.md (+ report.json with the same numbers) and the per-question curves."""
    from fastheads.report import report_runs

    out = Path(opt.out)
    exps = results["experiments"]
    doc = ["# fastheads tp: the practical work, measured", "",
           f"Data: {opt.data}; weights: {opt.weights}; holdout: {opt.holdout or 'none'}. "
           f"Training time of the experiments: {sum(e['seconds'] for e in exps.values()):.0f} s "
           f"(the last invocation took {results['total_s']:.0f} s, estimated {results['estimate_s']:.0f} s)."
           + (" QUICK MODE: tiny budgets, for a first look only." if opt.quick else ""), ""]  # fmt: skip
    data: dict = {}
    for exp, cfg in plan:
        if exp.group == "ablation" or exp.qid not in exps:
            continue
        dirs = [Path(d) for d in exps[exp.qid]["runs"]]
        rows = [run_row(d) for d in dirs]
        pic = report_runs(dirs, out / exp.qid / "figures", title=f"{exp.qid}: {exp.title}")
        data[exp.qid] = {"rows": rows, "eval": exps[exp.qid].get("eval")}
        doc += [f"## {exp.qid}. {exp.title}", "", f"Difference from the base run: {differences(cfg)}. "
                f"Time: {exps[exp.qid]['seconds']:.1f} s.", ""]  # fmt: skip
        doc += runs_table(rows) + [""] + observations(rows) + [""]
        doc.append(f"![curves]({Path(pic['files']['report']).relative_to(out)})")
        if exp.model_name and "course_model" in exps[exp.qid]:
            doc.append(f"Model saved as `{Path(exps[exp.qid]['course_model']).relative_to(out)}` (the best repeat).")
        ev = exps[exp.qid].get("eval")
        if ev:
            doc += ["", f"Holdout accuracy of the kept model: **{_fmt(ev['accuracy'])}** "
                    f"(`{Path(ev['dir']).relative_to(out)}`)."]  # fmt: skip
        doc.append("")
        if exp.qid == "Q4" and ev:
            doc += q5_section(ev, opt, out, data)
        if exp.qid == "Q8" and "Q1" in data:
            q1 = data["Q1"]["rows"]
            doc += ["Versus Q1 (same seeds, stopping on validation accuracy): Q1 stopped after "
                    f"{[r['stopped_epoch'] for r in q1]} and kept {[r['best_epoch'] for r in q1]}.", ""]  # fmt: skip
    abl = [(e, c) for e, c in plan if e.group == "ablation" and e.qid in exps]
    if abl:
        doc += ablation_section(abl, exps, data)
    write_json(out / "report.json", data)
    path = out / "report.md"
    text = "\n".join(doc) + "\n"
    atomic_write(path, lambda p: p.write_text(text))
    return path


def q5_section(ev: dict, opt, out: Path, data: dict) -> list[str]:
    """Question 5: the Q4 model on the holdout, with same-flower pairs side by side."""
    edir = Path(ev["dir"])
    metrics = json.loads((edir / "metrics.json").read_text())
    data["Q5"] = {"accuracy": metrics["accuracy"]}
    lines = ["## Q5. The question-4 model on the holdout", "",
             f"Accuracy {_fmt(metrics['accuracy'])} on {int(np.sum(metrics['confusion_matrix']))} images "
             f"(validation accuracy of the same run: see Q4).", "",
             f"![confusion]({(edir / 'confusion.png').relative_to(out)})", "",
             f"![errors]({(edir / 'errors.png').relative_to(out)})", ""]  # fmt: skip
    pairs = same_flower_pairs(edir / "predictions.csv")
    data["Q5"]["pairs"] = pairs
    if pairs:
        lines += ["Same flower, different file (e.g. another background): predictions side by side.", "",
                  "| file A | predicted (p) | file B | predicted (p) | true |", "|---|---|---|---|---|"]  # fmt: skip
        for a, b in pairs:
            lines.append(f"| {a['file']} | {a['predicted']} ({a['probability']}) | {b['file']} | "
                         f"{b['predicted']} ({b['probability']}) | {a['true']} |")  # fmt: skip
        lines.append("")
    return lines


def same_flower_pairs(predictions_csv: Path) -> list[tuple[dict, dict]]:
    """Rows whose file names differ only in a trailing number (viola_2.png / viola_3.png)."""
    import csv

    with open(predictions_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    groups: dict[str, list[dict]] = {}
    for r in rows:
        m = re.match(r"(.+?)_?(\d+)\.\w+$", r["file"])
        if m and not m.group(1).isdigit():
            groups.setdefault(m.group(1), []).append(r)
    return [(g[i], g[i + 1]) for g in groups.values() if len(g) > 1 for i in range(len(g) - 1)]


def _views_note(cfg: TrainConfig) -> list[str]:
    if cfg.n_views >= cfg.epochs:
        return []
    k = cfg.n_views
    return [f"**Deviation from the notebook (--ablation-views {k}):** each configuration trains on {k} "
            f"augmented view(s) per image, so over {cfg.epochs} epochs a training image sees {k} distinct "
            f"augmentation(s) instead of {cfg.epochs} (epoch e uses view 1 + (e mod {k})). The reference row (Q1) has "
            f"one view per epoch, so its Δ column mixes the transformation's effect with that of fewer views.",
            ""]  # fmt: skip


def ablation_section(abl: list, exps: dict, data: dict) -> list[str]:
    ref = data.get("Q1", {}).get("rows", [])
    n = max(len(exps[e.qid]["runs"]) for e, _ in abl)
    ref = ref[:n]
    lines = ["## Q7 ablation: which transformations matter", "",
             f"Each configuration trained {n} time(s) with seeds 0..{n - 1}; the reference is Q1's first {len(ref)} "
             "run(s) (all the notebook's transformations, same seeds).", "", *_views_note(abl[0][1]),
             "| configuration | augment | best val acc mean ± std | min | max | Δ mean vs all |",
             "|---|---|---:|---:|---:|---:|"]  # fmt: skip
    ref_mean = stats([r["best_val_acc"] for r in ref])["mean"] if ref else float("nan")
    if ref:
        s = stats([r["best_val_acc"] for r in ref])
        lines.append(
            f"| all (Q1) | tp | {_fmt(s['mean'])} ± {_fmt(s['std'])} | {_fmt(s['min'])} | {_fmt(s['max'])} | |"
        )
    table = {}
    for exp, cfg in abl:
        rows = [run_row(Path(d)) for d in exps[exp.qid]["runs"]]
        s = stats([r["best_val_acc"] for r in rows])
        table[exp.qid] = {"rows": rows, **s}
        lines.append(f"| {exp.title} | {cfg.augment.describe()} | {_fmt(s['mean'])} ± {_fmt(s['std'])} | "
                     f"{_fmt(s['min'])} | {_fmt(s['max'])} | {s['mean'] - ref_mean:+.4f} |")  # fmt: skip
    data["Q7-ablation"] = table
    return lines + [""]
