"""Several training runs side by side: one figure of their curves and one table of their numbers.

A single run's curve says little (the notebook's validation set is small, the head's start
is random), so runs that share a configuration are drawn as one mean line with a band, and
configurations are told apart by what differs between them, not by their folder names.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np

from fastheads.errors import UserError
from fastheads.figures import ACCURACY_KEYS, plot_runs
from fastheads.runio import atomic_write, write_json

# Settings that do not change what is learned: runs differing only in these are repeats.
BOOKKEEPING = ("seed", "out", "overwrite", "resume", "verbose", "repeats", "cache_dir", "xla", "export")


def _augment_name(aug) -> str:
    from fastheads.augment import PRESETS, AugmentSpec

    if not isinstance(aug, dict):
        return str(aug)
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in aug.items()}  # JSON made tuples lists
    for name, preset in PRESETS.items():
        if asdict(preset) == fields:
            return name
    try:
        return AugmentSpec(**fields).describe()
    except TypeError:
        return "custom"


def _setting(key: str, value) -> str:
    if key == "augment":
        return f"augment {_augment_name(value)}"
    if key == "train_layers":
        return f"train-layers {value}"
    if key == "arch":
        return "v2 (block4_pool + 4096-4096)" if value == "v2" else f"arch {value}"
    if key == "data":
        return f"data {Path(str(value)).name}"
    return f"{key.replace('_', '-')} {value:g}" if isinstance(value, float) else f"{key.replace('_', '-')} {value}"


def describe_config(config: dict) -> str:
    """The settings a reader compares runs by, in the words of the CLI options."""
    head = (
        _setting("arch", "v2")
        if config.get("arch") == "v2"
        else _setting("train_layers", config.get("train_layers", 1))
    )
    parts = [f"VGG16 {head}"]
    parts += [_setting(k, config[k]) for k in ("augment", "lr", "epochs") if k in config]
    return ", ".join(parts)


def describe_run(run_dir: str | Path) -> str:
    """`describe_config` of a fastheads run folder; '' for a model from elsewhere."""
    run = Path(run_dir) / "run.json"
    try:
        return describe_config(json.loads(run.read_text())["config"]) if run.is_file() else ""
    except (ValueError, KeyError, TypeError):
        return ""


def expand_run_dirs(dirs: list[Path]) -> list[Path]:
    """A run folder, or the folder of a `train --repeats` (its run_* folders)."""
    found: list[Path] = []
    for d in map(Path, dirs):
        if (d / "history.json").is_file():
            found.append(d)
        elif d.is_dir() and sorted(d.glob("run_*/history.json")):
            found += [p.parent for p in sorted(d.glob("run_*/history.json"))]
        elif not d.exists():
            raise UserError(f"{d}: run folder not found.")
        else:
            raise UserError(
                f"{d}: not a training run (no history.json, no run_*/history.json); pass folders written by fastheads train."
            )
    if not found:
        raise UserError("no run folders given.")
    return found


def _read_json(path: Path) -> dict:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: not readable JSON ({e.__class__.__name__}).") from e
    if not isinstance(obj, dict):
        raise UserError(f"{path}: expected a JSON object.")
    return obj


def _holdout(run_dir: Path) -> tuple[float | None, str | None]:
    """Accuracy from the newest metrics.json of `fastheads evaluate` in the run folder or one below it."""
    hits = [p for p in [run_dir / "metrics.json", *run_dir.glob("*/metrics.json")] if p.is_file()]
    for p in sorted(hits, key=lambda p: p.stat().st_mtime, reverse=True):
        try:
            acc = json.loads(p.read_text(encoding="utf-8")).get("accuracy")
        except (OSError, ValueError, AttributeError):
            continue  # a broken or foreign metrics.json must not stop the report
        if isinstance(acc, (int, float)):
            return float(acc), str(p)
    return None, None


def _last(history: dict, keys, prefix: str = "") -> float | None:
    for k in keys:
        if history.get(prefix + k):
            return float(history[prefix + k][-1])
    return None


def load_run(run_dir: Path) -> dict:
    """One row of the table, plus the history for the figure."""
    history = _read_json(run_dir / "history.json")
    record = _read_json(run_dir / "run.json") if (run_dir / "run.json").is_file() else {}
    config = record.get("config") or {}
    monitor = config.get("monitor", "val_categorical_accuracy")
    best_epoch, best_value = record.get("best_epoch"), record.get("best_value")
    if best_epoch is None and history.get(monitor):  # a history from elsewhere: Keras' rule, first best
        vals = np.asarray(history[monitor], float)
        i = int(vals.argmin() if monitor.endswith("loss") else vals.argmax())
        best_epoch, best_value = i + 1, float(vals[i])
    holdout, holdout_file = _holdout(run_dir)
    return {
        "run": str(run_dir),
        "seed": record.get("seed"),
        "monitor": monitor,
        "best_epoch": best_epoch,
        "best_value": best_value,
        "stopped_epoch": record.get("stopped_epoch", len(history.get("loss", []))),
        "final_train_accuracy": _last(history, ACCURACY_KEYS),
        "final_val_accuracy": _last(history, ACCURACY_KEYS, "val_"),
        "holdout_accuracy": holdout,
        "holdout_metrics": holdout_file,
        "_config": config,
        "_history": history,
    }


def _group(runs: list[dict]) -> list[dict]:
    """Runs with the same configuration (bookkeeping aside) form one group, labelled by what differs."""
    groups: dict[str, dict] = {}
    for r in runs:
        cfg = {k: v for k, v in r["_config"].items() if k not in BOOKKEEPING}
        key = json.dumps(cfg, sort_keys=True, default=str) if cfg else r["run"]
        groups.setdefault(key, {"config": cfg, "runs": []})["runs"].append(r)
    out = list(groups.values())
    configs = [g["config"] for g in out]
    keys = sorted({k for c in configs for k in c})
    differing = [k for k in keys if len({json.dumps(c.get(k), default=str) for c in configs}) > 1]
    for g in out:
        if not g["config"]:
            g["label"] = Path(g["runs"][0]["run"]).name
        elif differing:
            g["label"] = ", ".join(_setting(k, g["config"].get(k)) for k in differing)
        else:
            g["label"] = describe_config(g["config"])
        for r in g["runs"]:
            r["configuration"] = g["label"]
    return out


def _default_title(groups: list[dict], n_runs: int) -> str:
    """What the runs share, then how many there are: the figure's title when none is given."""
    configs = [g["config"] for g in groups if g["config"]]
    count = f"{n_runs} run{'s' if n_runs > 1 else ''}"
    if not configs:
        return count
    if len(groups) == 1:
        return f"{describe_config(configs[0])}: {count}"
    shared = [k for k in ("arch", "train_layers", "augment", "lr", "epochs")
              if all(k in c and c[k] == configs[0][k] for c in configs)]  # fmt: skip
    common = ", ".join(_setting(k, configs[0][k]) for k in shared if k != "arch" or configs[0][k] == "v2")
    return f"VGG16{', ' + common if common else ''}: {len(groups)} configurations, {count}"


def _stats(values: list) -> dict:
    vals = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not vals:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(np.mean(vals)), "std": float(np.std(vals)), "n": len(vals)}


def report_runs(run_dirs: list[Path], out: Path, title: str) -> dict:
    """Write report.png, runs.md and runs.json into `out`; return what runs.json holds."""
    runs = [load_run(d) for d in expand_run_dirs(list(run_dirs))]
    groups = _group(runs)
    out = Path(out)
    title = title or _default_title(groups, len(runs))
    summary = [
        {"configuration": g["label"], "runs": len(g["runs"]),
         **{f"{m}_{s}": v for m in ("best_value", "final_val_accuracy", "holdout_accuracy")
            for s, v in _stats([r[m] for r in g["runs"]]).items()}}
        for g in groups
    ]  # fmt: skip
    rows = [{k: v for k, v in r.items() if not k.startswith("_")} for r in runs]
    plot_runs(
        [{"label": g["label"], "histories": [r["_history"] for r in g["runs"]]} for g in groups],
        out / "report.png",
        title,
    )
    result = {"title": title, "runs": rows, "configurations": summary}
    write_json(out / "runs.json", result)
    text = _markdown(title, rows, summary)
    atomic_write(out / "runs.md", lambda p: p.write_text(text, encoding="utf-8"))
    result["files"] = {"report": str(out / "report.png"), "table": str(out / "runs.md"), "json": str(out / "runs.json")}
    return result


def _fmt(v, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _cell(text) -> str:
    return str(text).replace("|", "\\|")


def _markdown(title: str, rows: list[dict], summary: list[dict]) -> str:
    monitors = {r["monitor"] for r in rows}
    single = len(monitors) == 1
    best = f"best {next(iter(monitors))}" if single else "best value (monitor)"
    head = ["run", "configuration", "seed", "best epoch", best, "stopped epoch",
            "final train acc", "final val acc", "holdout acc"]  # fmt: skip
    lines = [f"# {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        value = _fmt(r["best_value"]) + ("" if single else f" ({r['monitor']})")
        cells = [r["run"], r["configuration"], _fmt(r["seed"]), _fmt(r["best_epoch"]), value, _fmt(r["stopped_epoch"]),
                 _fmt(r["final_train_accuracy"]), _fmt(r["final_val_accuracy"]), _fmt(r["holdout_accuracy"])]  # fmt: skip
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    if len(rows) > 1:
        lines += ["", "## Per configuration (mean ± std over its runs)", "",
                  f"| configuration | runs | {best} | final val acc | holdout acc |", "|---|---|---|---|---|"]  # fmt: skip
        for s in summary:
            cells = [s["configuration"], s["runs"]] + [
                _mean_std(s[f"{m}_mean"], s[f"{m}_std"], s[f"{m}_n"], s["runs"])
                for m in ("best_value", "final_val_accuracy", "holdout_accuracy")
            ]
            lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def _mean_std(mean: float | None, std: float | None, n: int, runs: int) -> str:
    if mean is None:
        return "–"
    text = f"{mean:.4f}" if n == 1 else f"{mean:.4f} ± {std:.4f}"
    return text if n == runs else f"{text} ({n} of {runs} runs)"
