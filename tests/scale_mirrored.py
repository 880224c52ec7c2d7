"""Run by tests/test_scale.py in its own process: two logical CPUs must exist before TF starts.

Builds one entry with --strategy mirrored and one with default, trains a head from each
(cached and uncached), and prints the comparison as one JSON line.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ["CUDA_VISIBLE_DEVICES"] = ""

import tensorflow as tf  # noqa: E402

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import numpy as np  # noqa: E402
import zarr  # noqa: E402

from fastheads.cache import build_cache  # noqa: E402
from fastheads.config import make_config  # noqa: E402
from fastheads.train import train  # noqa: E402


def main(data: str, tmp: str) -> None:
    common = dict(data=data, weights="none", image_size=32, epochs=2, views=2, batch_size=8, verbose=False,
                  precision="fp32", xla="off")  # fmt: skip
    result: dict = {}
    entries = {}
    for name in ("default", "mirrored"):
        cfg = make_config(**common, strategy=name, cache_dir=f"{tmp}/cache_{name}")
        entries[name] = build_cache(cfg)
    a = zarr.open_array(str(entries["default"].path / "features"), mode="r")[:, :3]  # views 0..2
    b = zarr.open_array(str(entries["mirrored"].path / "features"), mode="r")[:, :3]
    result["same_key"] = entries["default"].key == entries["mirrored"].key
    result["cache_max_abs_diff"] = float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())
    result["cache_bit_identical"] = bool(np.array_equal(a, b))
    result["checksums_equal"] = bool(np.array_equal(entries["default"].crc_table(2), entries["mirrored"].crc_table(2)))
    for cached in (True, False):
        hist = {}
        for name in ("default", "mirrored"):
            r = train(**common, strategy=name, cache=cached, cache_dir=f"{tmp}/cache_{name}",
                      out=f"{tmp}/run_{name}_{cached}")  # fmt: skip
            hist[name] = r.history
            result[f"strategy_recorded_{name}"] = r.runs[0].record["strategy"]
        diffs = [
            abs(x - y) for k in hist["default"] for x, y in zip(hist["default"][k], hist["mirrored"][k], strict=True)
        ]
        result[f"history_keys_equal_{cached}"] = sorted(hist["default"]) == sorted(hist["mirrored"])
        result[f"history_max_abs_diff_{cached}"] = max(diffs)
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
