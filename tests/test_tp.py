"""`fastheads tp --quick` on a generated course folder: every section, table and picture, true numbers."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from fastheads.cli import app
from fastheads.demo import make_demo_images

from conftest import SIZE


@pytest.fixture(scope="module")
def course_root(tmp_path_factory, tiny_h5, tiny_classes, keras2_weights) -> Path:
    root = tmp_path_factory.mktemp("course")
    (root / "imagenet_dataset").mkdir()
    (root / "flowers_dataset" / "data" / "test").mkdir(parents=True)
    shutil.copy(keras2_weights, root / "imagenet_dataset" / "vgg16_weights.h5")
    shutil.copy(tiny_h5, root / "flowers_dataset" / "10FlowerColorImages.h5")
    shutil.copy(tiny_classes, root / "flowers_dataset" / "flower_class_index.txt")
    images, labels = make_demo_images(per_class=3, size=48, seed=9)
    keep = labels < 4
    images, labels = images[keep], labels[keep]
    names = [f"{['phlox', 'rose', 'calendula', 'viola'][lab]}_{i % 3 + 1}.png" for i, lab in enumerate(labels)]
    with h5py.File(root / "flowers_dataset" / "data" / "test" / "flowers_holdout.h5", "w") as f:
        f["images"] = images.astype(np.float32)
        f["labels"] = labels[:, None]
        f["filenames"] = np.array([[n.encode()] for n in names])
    return root


def test_tp_quick_writes_every_question(tmp_path, course_root):
    out = tmp_path / "tp"
    res = CliRunner().invoke(app, ["tp", str(course_root), "--quick", "--image-size", str(SIZE), "--out", str(out),
                                   "--cache-dir", str(tmp_path / "cache"), "--ablation-repeats", "1",
                                   "--ablation-views", "1"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "training runs" in res.output and "estimated" in res.output  # the plan, before running
    md = (out / "report.md").read_text()
    for q in ("Q1", "Q2", "Q3", "Q4", "Q5", "Q6", "Q7", "Q8"):
        assert re.search(rf"^## {q}\b", md, re.M), q
    assert "## Q7 ablation" in md and "Only rotation" in md and "All but zoom" in md
    assert "Deviation from the notebook (--ablation-views 1)" in md  # the cheaper ablation says so
    assert json.loads((out / "Q7-only-zoom" / "run.json").read_text())["config"]["views"] == 1
    assert json.loads((out / "Q1" / "run_01" / "run.json").read_text())["config"]["views"] == 2
    assert len(list((out / "Q1").glob("run_*/model.keras"))) == 1  # only the best repeat's full model is written
    for q in ("Q1", "Q2", "Q3", "Q4", "Q6", "Q7", "Q8"):
        assert (out / q / "figures" / "report.png").is_file()
    assert (out / "models" / "vgg16_retrained_10flowers_mejor.keras").is_file()
    assert (out / "models" / "vgg16_retrained_10flowers.keras").is_file()
    # every number in the report comes from the runs' own files
    data = json.loads((out / "report.json").read_text())
    assert len(data["Q1"]["rows"]) == 2 and len(data["Q8"]["rows"]) == 2
    for q in ("Q1", "Q2", "Q3", "Q4", "Q6", "Q7", "Q8"):
        for row in data[q]["rows"]:
            run_dir = out / q / row["run"] if row["run"].startswith("run_") else out / q
            hist = json.loads((run_dir / "history.json").read_text())
            rec = json.loads((run_dir / "run.json").read_text())
            assert row["best_val_acc"] == max(hist["val_categorical_accuracy"])
            assert row["final_train_acc"] == hist["categorical_accuracy"][-1]
            assert row["stopped_epoch"] == rec["stopped_epoch"] and row["best_epoch"] == rec["best_epoch"]
            assert f"{row['best_val_acc']:.4f}" in md
    q5 = json.loads((out / "Q4" / "holdout" / "metrics.json").read_text())
    assert data["Q5"]["accuracy"] == q5["accuracy"] and f"{q5['accuracy']:.4f}" in md
    assert data["Q5"]["pairs"]  # viola_1 / viola_2 ... side by side
    # a rerun skips what is finished
    before = (out / "Q1" / "run_01" / "run.json").stat().st_mtime_ns
    again = CliRunner().invoke(app, ["tp", str(course_root), "--quick", "--image-size", str(SIZE), "--out", str(out),
                                     "--cache-dir", str(tmp_path / "cache"), "--ablation-repeats", "1", "--ablation-views", "1",
                                     "--only", "Q1"])  # fmt: skip
    assert again.exit_code == 0, again.output
    assert (out / "Q1" / "run_01" / "run.json").stat().st_mtime_ns == before
    assert (out / "report.md").read_text().count("\n## Q") == md.count("\n## Q")  # the report still has them all


def test_tp_bad_only(tmp_path, course_root):
    res = CliRunner().invoke(app, ["tp", str(course_root), "--only", "Q9", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "unknown question" in res.output
