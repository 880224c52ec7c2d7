"""The bench's smallest mode on tiny data: the table's structure, not its timings."""

from __future__ import annotations

import json
import tempfile

from fastheads.bench import BenchPlan, run_bench, write_results

from conftest import SIZE


def test_bench_smallest_mode_writes_its_table(tmp_path, tiny_h5, tiny_classes, monkeypatch):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    plan = BenchPlan.quick_plan(data=str(tiny_h5), classes=str(tiny_classes), image_size=SIZE, epochs=2,
                                repeats=2, floor_batches=1, precisions=("fp32",))  # fmt: skip
    res = run_bench(plan, tmp_path / "results", say=lambda s: None)
    assert not list(scratch.glob("fastheads-bench-*"))  # its stores and models are gone (GBs at 224 px)
    phases = [(r["phase"], r["precision"]) for r in res["phases"]]
    assert phases == [
        ("floor (xla off)", "fp32"),
        ("floor (xla on)", "fp32"),
        ("baseline: notebook pipeline, 1 run", "fp32"),
        ("fastheads uncached, 1 run", "fp32"),
        ("fastheads cache build", "fp32"),
        ("fastheads cached, 2 runs (store built)", "fp32"),
        ("fastheads warm cached, 1 run", "fp32"),
    ]
    for r in res["phases"]:
        assert r["seconds"] > 0 and r["peak_rss_gb"] > 0
    baseline = res["phases"][2]
    assert 1 <= baseline["epochs_run"] <= 2 and 0 <= baseline["val_acc_best"] <= 1  # it really trained
    warm = res["phases"][-1]
    assert 0 < warm["export_s"] < warm["seconds"]  # the export is timed inside the run, not beside it
    s = res["summary"]["fp32"]
    for key in (
        "warm_speedup_vs_baseline",
        "warm_speedup_vs_uncached",
        "q1_speedup",
        "build_pct_of_floor",
        "runs_to_pay_off",
    ):
        assert key in s
    assert s["q1_baseline_total_s"] == 2 * s["baseline_run_s"]
    stored = json.loads(open(res["files"]["json"]).read())
    assert stored["summary"] == json.loads(json.dumps(res["summary"]))
    md = open(res["files"]["markdown"]).read()
    assert "QUICK MODE" in md and "| phase | precision | time (s) |" in md and "build % of floor" in md
    rows = [line for line in md.splitlines() if line.startswith("| ")]
    assert len(rows) == 1 + len(phases) + 1 + 1  # phase header, phases, ratio header, one precision
    # a second bench the same day is written beside the first, never over it
    first, before = dict(res["files"]), open(res["files"]["json"]).read()
    again = write_results(dict(res), tmp_path / "results")
    assert again["files"]["json"].endswith("_quick_2.json") and open(first["json"]).read() == before
