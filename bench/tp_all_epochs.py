"""`fastheads tp`'s default plan with early stopping off: every run trains all its epochs.

The notebook comparison for the plan has two fair bases: both pipelines stop where the
runs stop (measured with `fastheads tp` itself), or both train every epoch (this script).
With early stopping off every store is built to its full number of views, so this is the
plan's most expensive case for fastheads.

    python bench/tp_all_epochs.py DATA CLASSES OUT CACHE_DIR
"""

from __future__ import annotations

import sys
import time

import fastheads.tp as tp


def main(data: str, classes: str, out: str, cache_dir: str) -> None:
    plan_config = tp.config_for

    def every_epoch(exp, opt):
        cfg = plan_config(exp, opt)
        return cfg.replace(patience=cfg.epochs)

    tp.config_for = every_epoch
    opt = tp.options_from_root(None, data=data, classes=classes, weights="none", holdout=None, out=out,
                               cache_dir=cache_dir)  # fmt: skip
    t0 = time.perf_counter()
    tp.run_tp(opt)
    print(f"tp_all_epochs: {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main(*sys.argv[1:5])
