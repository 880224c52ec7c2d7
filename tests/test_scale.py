"""Beyond one device: mirrored replicas, sharded builds in two processes, a remote (memory://) store."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import zarr

from fastheads.cache import stored_entry, verify_entry
from fastheads.errors import UserError
from fastheads.feature_store import list_entries
from fastheads.store_io import RemotePath, location
from fastheads.train import train

HERE = Path(__file__).parent

# ----------------------------------------------------------------------------- strategies


def test_mirrored_on_two_cpus_equals_one_device(tmp_path, tiny_h5):
    """Cache build: bit-identical (measured: max difference 0.0). Training: to 1e-6 (measured 1.2e-7)."""
    proc = subprocess.run([sys.executable, str(HERE / "scale_mirrored.py"), str(tiny_h5), str(tmp_path)],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (line,) = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    r = json.loads(line[len("RESULT ") :])
    assert r["same_key"], "the strategy must not enter the feature-store key"
    assert r["cache_bit_identical"] and r["checksums_equal"], r["cache_max_abs_diff"]
    assert r["strategy_recorded_mirrored"] == "mirrored x2" and r["strategy_recorded_default"] == "default x1"
    for cached in (True, False):  # the head's gradients are all-reduced: equal up to summation order
        assert r[f"history_keys_equal_{cached}"]
        assert r[f"history_max_abs_diff_{cached}"] <= 1e-6, r


@pytest.mark.parametrize(
    "name, env, message",
    [
        ("tpu", {}, "no TPU here"),
        ("mirrored", {}, "needs more than one GPU"),
        ("multiworker", {}, "needs TF_CONFIG"),
        ("multiworker", {"TF_CONFIG": '{"cluster": {"worker": []}, "task": {}}'}, "names no workers"),
        ("several", {}, "--strategy must be one of"),
    ],
)
def test_impossible_strategies_are_clear_errors(monkeypatch, name, env, message):
    from fastheads.distribute import resolve_strategy

    for k in ("COLAB_TPU_ADDR", "TPU_NAME", "TF_CONFIG"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    resolve_strategy.cache_clear()
    try:
        with pytest.raises(UserError, match=message):
            resolve_strategy(name)
    finally:
        resolve_strategy.cache_clear()


def test_auto_is_one_device_on_a_plain_cpu(monkeypatch):
    from fastheads.distribute import resolve_strategy, strategy_name

    for k in ("COLAB_TPU_ADDR", "TPU_NAME", "TF_CONFIG"):
        monkeypatch.delenv(k, raising=False)
    resolve_strategy.cache_clear()
    assert strategy_name(resolve_strategy("auto")) == "default x1"


# ----------------------------------------------------------------------------- shards in two processes

SHARD_BUILD = ["--weights", "none", "--image-size", "32", "--views", "4", "--precision", "fp32", "--xla", "off",
               "--quiet"]  # fmt: skip


def _build_cmd(data: Path, cache_dir: Path | str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "fastheads", "cache", "build", "--data", str(data), "--cache-dir", str(cache_dir),
            *SHARD_BUILD, *extra]  # fmt: skip


def _contents(entry, views: int) -> tuple[np.ndarray, np.ndarray]:
    """Features and row CRCs of views 0..views."""
    return zarr.open_array(str(entry / "features"), mode="r")[:, : views + 1], stored_entry(entry).crc_table(views)


def test_two_shard_processes_build_the_same_bytes_as_one(tmp_path, tiny_h5):
    sharded, single = tmp_path / "sharded", tmp_path / "single"
    procs = [subprocess.Popen(_build_cmd(tiny_h5, sharded, "--shard", f"{i}/2"), stderr=subprocess.PIPE)
             for i in range(2)]  # fmt: skip
    procs.append(subprocess.Popen(_build_cmd(tiny_h5, single), stderr=subprocess.PIPE))
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()[-2000:]
    (a,), (b,) = list_entries(sharded), list_entries(single)
    assert a.name == b.name and stored_entry(a).ready(4)
    markers = sorted(p.name for p in (a / "units").glob("u*.json"))
    assert markers == sorted(p.name for p in (b / "units").glob("u*.json")) and len(markers) == 4  # 24 x 5 / 32
    (fa, sa), (fb, sb) = _contents(a, 4), _contents(b, 4)
    np.testing.assert_array_equal(fa, fb)
    np.testing.assert_array_equal(sa, sb)
    chunks = sorted(p.relative_to(a) for p in (a / "features").rglob("*") if p.is_file())
    assert chunks == sorted(p.relative_to(b) for p in (b / "features").rglob("*") if p.is_file())
    for rel in chunks:  # every stored object, metadata included, byte for byte
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


# ----------------------------------------------------------------------------- a remote store (memory://)

COMMON = dict(weights="none", image_size=32, epochs=2, batch_size=8, verbose=False, cache=True, precision="fp32",
              xla="off")  # fmt: skip


def test_memory_url_store_builds_hits_matches_local_and_repairs(tmp_path, tiny_h5, monkeypatch):
    pytest.importorskip("fsspec")
    from fastheads import feature_store

    url = f"memory://fastheads-test-{uuid.uuid4().hex[:8]}/cache"
    first = train(data=str(tiny_h5), **COMMON, cache_dir=url, out=str(tmp_path / "a"))
    (entry,) = list_entries(url)
    assert isinstance(entry, RemotePath) and str(entry).startswith("memory://")
    assert stored_entry(entry).ready(2) and not list(tmp_path.glob("memory*"))  # nothing local

    # a hit: nothing is computed on the second use
    def no_compute(*a, **k):
        raise AssertionError("a built remote entry was computed again")

    monkeypatch.setattr(feature_store.FeatureStore, "_compute", no_compute)
    again = train(data=str(tiny_h5), **COMMON, cache_dir=url, out=str(tmp_path / "b"))
    assert again.history == first.history
    monkeypatch.undo()

    # the same bytes as a local store of the same key
    local = train(data=str(tiny_h5), **COMMON, cache_dir=str(tmp_path / "local"), out=str(tmp_path / "c"))
    (lentry,) = list_entries(tmp_path / "local")
    assert lentry.name == entry.name and local.history == first.history
    (fr, sr), (fl, sl) = _contents(entry, 2), _contents(lentry, 2)
    np.testing.assert_array_equal(fr, fl)
    np.testing.assert_array_equal(sr, sl)

    # a damaged chunk and a missing one are found and rebuilt
    fs = entry.fs
    chunks = sorted(p for p in fs.find(f"{entry.path}/features/c"))
    raw = bytearray(fs.cat_file(chunks[5]))
    raw[len(raw) // 2] ^= 0xFF
    fs.pipe_file(chunks[5], bytes(raw))
    fs.rm_file(chunks[0])
    assert verify_entry(entry).startswith("DAMAGED")
    assert not stored_entry(entry).ready(2)
    repaired = train(data=str(tiny_h5), **COMMON, cache_dir=url, out=str(tmp_path / "d"))
    assert repaired.history == first.history
    assert verify_entry(entry).startswith("ok (")


def test_cache_cli_on_a_memory_url(tiny_h5):
    pytest.importorskip("fsspec")
    from typer.testing import CliRunner

    from fastheads.cli import app

    url = f"memory://fastheads-cli-{uuid.uuid4().hex[:8]}"
    r = CliRunner().invoke(app, ["cache", "build", "--data", str(tiny_h5), "--cache-dir", url, "--weights", "none",
                                 "--image-size", "32", "--views", "1", "--quiet"])  # fmt: skip
    assert r.exit_code == 0, r.output
    (entry,) = list_entries(url)
    r = CliRunner().invoke(app, ["cache", "ls", "--cache-dir", url])
    assert entry.name in r.output and "ready" in r.output
    r = CliRunner().invoke(app, ["cache", "verify", "--cache-dir", url])
    assert r.exit_code == 0 and f"{entry.name}  ok" in r.output, r.output
    r = CliRunner().invoke(app, ["cache", "rm", entry.name, "--cache-dir", url])
    assert r.exit_code == 0 and not list_entries(url)


def test_file_url_is_the_local_store():
    assert location("file:///tmp/x") == Path("/tmp/x")
    assert location("cache") == Path("cache")
