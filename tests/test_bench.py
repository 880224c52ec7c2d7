"""The bench's smallest mode on tiny data: the table's structure, not its timings."""

from __future__ import annotations

import json

from fastheads.bench import BenchPlan, run_bench

from conftest import SIZE


def test_bench_smallest_mode_writes_its_table(tmp_path, tiny_h5, tiny_classes):
    plan = BenchPlan.quick_plan(data=str(tiny_h5), classes=str(tiny_classes), image_size=SIZE, epochs=2,
                                repeats=2, floor_batches=1, precisions=("fp32",))  # fmt: skip
    res = run_bench(plan, tmp_path / "results", say=lambda s: None)
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
    s = res["summary"]["fp32"]
    for key in ("warm_speedup_vs_baseline", "q1_speedup", "build_pct_of_floor", "runs_to_pay_off"):
        assert key in s
    assert s["q1_baseline_total_s"] == 2 * s["baseline_run_s"]
    stored = json.loads(open(res["files"]["json"]).read())
    assert stored["summary"] == json.loads(json.dumps(res["summary"]))
    md = open(res["files"]["markdown"]).read()
    assert "QUICK MODE" in md and "| phase | precision | time (s) |" in md and "build % of floor" in md
    rows = [line for line in md.splitlines() if line.startswith("| ")]
    assert len(rows) == 1 + len(phases) + 1 + 1  # phase header, phases, ratio header, one precision
