"""The feature store: keys, interrupted builds, damaged chunks, concurrent builders."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

from fastheads.cache import stored_entry, verify_entry
from fastheads.cache_key import KeyInputs, file_fingerprint, pixels_hash
from fastheads.feature_store import list_entries
from fastheads.train import train

BASE_KEY = KeyInputs(
    weights="sha256:ab", pixels="cd", n_images=210, image_size=224, resize="bilinear-antialias",
    preprocessing="caffe", cut="block5_pool", augment='{"rotation_range": 10}', augment_seed=0,
    precision="bf16", xla=False, dtype="float16", tensorflow="2.21",
)  # fmt: skip


def _other_value(v):
    if isinstance(v, bool):
        return st.just(not v)
    if isinstance(v, int):
        return st.integers(-(10**6), 10**6).filter(lambda x: x != v)
    return st.text(min_size=1, max_size=12).filter(lambda x: x != v)


@settings(max_examples=80, deadline=None)
@given(st.data())
def test_any_change_of_a_key_input_changes_the_key(data):
    field = data.draw(st.sampled_from([f.name for f in dataclasses.fields(KeyInputs)]))
    value = data.draw(_other_value(getattr(BASE_KEY, field)))
    changed = dataclasses.replace(BASE_KEY, **{field: value})
    assert changed.key() != BASE_KEY.key()
    assert dataclasses.replace(BASE_KEY).key() == BASE_KEY.key()


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(0, 254), min_size=1, max_size=4).map(lambda v: v * 3), st.integers(0, 11))
def test_pixel_hash_sees_every_pixel(values, where):
    img = np.array(values, np.float32).reshape(1, 1, -1, 3)
    other = img.copy()
    other.flat[where % img.size] += 1
    assert pixels_hash(img) != pixels_hash(other)
    assert pixels_hash(img) == pixels_hash(img.copy())


def test_equal_inputs_give_equal_keys_across_processes(tmp_path, tiny_h5):
    code = (
        "import sys, h5py; from fastheads.cache_key import *;"
        "imgs = h5py.File(sys.argv[1])['images'][()];"
        "k = KeyInputs(**{**__import__('json').loads(sys.argv[2]), 'pixels': pixels_hash(imgs),"
        " 'weights': file_fingerprint(sys.argv[1])}); print(k.key())"
    )
    base = json.dumps(dataclasses.asdict(BASE_KEY))
    keys = {
        subprocess.run([sys.executable, "-c", code, str(tiny_h5), base], capture_output=True, text=True,
                       check=True).stdout.strip()
        for _ in range(2)
    }  # fmt: skip
    import h5py

    local = dataclasses.replace(
        BASE_KEY, pixels=pixels_hash(h5py.File(tiny_h5)["images"][()]), weights=file_fingerprint(tiny_h5)
    )
    assert keys == {local.key()}


def test_file_fingerprint_memo_follows_content(tmp_path):
    f = tmp_path / "w.h5"
    f.write_bytes(b"a" * 100)
    a = file_fingerprint(f, tmp_path)
    assert file_fingerprint(f, tmp_path) == a
    time.sleep(0.01)
    f.write_bytes(b"b" * 100)
    assert file_fingerprint(f, tmp_path) != a


# ----------------------------------------------------------------------------- builds in real processes

BUILD = ["--weights", "none", "--image-size", "64", "--views", "20", "--precision", "fp32", "--xla", "off", "--quiet"]


def _build_cmd(data: Path, cache_dir: Path) -> list[str]:
    return [sys.executable, "-m", "fastheads", "cache", "build", "--data", str(data), "--cache-dir", str(cache_dir),
            *BUILD]  # fmt: skip


def _entry(cache_dir: Path) -> Path:
    (entry,) = list_entries(cache_dir)
    return entry


def _contents(entry: Path, views: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Features and row CRCs of views 0..views."""
    return zarr.open_array(str(entry / "features"), mode="r")[:, : views + 1], stored_entry(entry).crc_table(views)


@pytest.fixture(scope="module")
def clean_build(tmp_path_factory, tiny_h5) -> Path:
    cache_dir = tmp_path_factory.mktemp("clean")
    subprocess.run(_build_cmd(tiny_h5, cache_dir), check=True, capture_output=True)
    return _entry(cache_dir)


def test_killed_build_resumes_to_identical_bytes(tmp_path, tiny_h5, clean_build):
    cache_dir = tmp_path / "c"
    proc = subprocess.Popen(_build_cmd(tiny_h5, cache_dir), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        units = list(cache_dir.glob("*/units/u*.json"))
        if len(units) >= 3:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    entry = _entry(cache_dir)
    n_done = len(list((entry / "units").glob("u*.json")))
    assert not stored_entry(entry).ready(20) and 3 <= n_done < 16, n_done  # really part-way
    subprocess.run(_build_cmd(tiny_h5, cache_dir), check=True, capture_output=True)
    assert stored_entry(entry).ready(20)
    a, sa = _contents(entry)
    b, sb = _contents(clean_build)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(sa, sb)


def test_a_cached_run_builds_only_the_views_it_uses_and_the_rest_completes_to_identical_bytes(
    tmp_path, tiny_h5, clean_build
):
    cache_dir = tmp_path / "c"
    train(data=str(tiny_h5), weights="none", image_size=64, views=20, epochs=3, batch_size=8, verbose=False,
          cache=True, cache_dir=str(cache_dir), precision="fp32", xla="off", out=str(tmp_path / "run"))  # fmt: skip
    entry = _entry(cache_dir)
    assert entry.name == clean_build.name  # the same key as the one-shot build
    store = stored_entry(entry)
    ready = [v for v in range(21) if store.view_ready(v)]
    assert not store.ready(20) and ready[:4] == [0, 1, 2, 3] and len(ready) < 8, ready  # views 0 (clean) and 1..3
    clean_rows = zarr.open_array(str(clean_build / "features"), mode="r")
    for v in range(4):
        np.testing.assert_array_equal(store.read(np.arange(store.n_images), v), clean_rows[:, v].astype(np.float32))
    assert verify_entry(entry) == f"ok ({len(ready)} views)"
    subprocess.run(_build_cmd(tiny_h5, cache_dir), check=True, capture_output=True)  # `cache build` finishes it
    a, sa = _contents(entry)
    b, sb = _contents(clean_build)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(sa, sb)


def test_runs_with_different_views_share_one_entry_and_numbers(tmp_path, tiny_h5, monkeypatch):
    """K is the run's, not the entry's: a 4-view run reuses the views a 2-view run built and computes only the rest."""
    from fastheads import feature_store

    common = dict(data=str(tiny_h5), weights="none", image_size=32, batch_size=8, patience=10, verbose=False,
                  cache=True, precision="fp32", xla="off")  # fmt: skip
    train(**common, epochs=2, cache_dir=str(tmp_path / "c"), out=str(tmp_path / "short"))
    computed: list[int] = []
    compute = feature_store.FeatureStore._compute
    monkeypatch.setattr(feature_store.FeatureStore, "_compute",
                        lambda self, todo, *a: (computed.extend(todo), compute(self, todo, *a))[1])  # fmt: skip
    longer = train(**common, epochs=4, cache_dir=str(tmp_path / "c"), out=str(tmp_path / "long"))
    (entry,) = list_entries(tmp_path / "c")
    store = stored_entry(entry)
    assert computed and min(computed) >= min(store.units_of_view(4))  # views 0..3 were there (3 units of 32 = 4 x 24)
    fresh = train(**common, epochs=4, cache_dir=str(tmp_path / "fresh"), out=str(tmp_path / "fresh_run"))
    assert longer.history == fresh.history


def test_two_builders_at_once_give_one_good_entry(tmp_path, tiny_h5, clean_build):
    cache_dir = tmp_path / "c"
    procs = [subprocess.Popen(_build_cmd(tiny_h5, cache_dir), stderr=subprocess.PIPE) for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()[-2000:]
    entry = _entry(cache_dir)
    assert verify_entry(entry) == "ok (21 views)"
    np.testing.assert_array_equal(_contents(entry)[0], _contents(clean_build)[0])


def test_damaged_chunks_are_detected_and_rebuilt(tmp_path, tiny_h5):
    cache_dir = tmp_path / "c"
    common = dict(data=str(tiny_h5), weights="none", image_size=32, epochs=2, batch_size=8, verbose=False,
                  cache=True, cache_dir=str(cache_dir), precision="fp32", xla="off")  # fmt: skip
    first = train(**common, out=str(tmp_path / "a"))
    entry = _entry(cache_dir)
    chunks = sorted(p for p in (entry / "features" / "c").rglob("*") if p.is_file())
    victim = chunks[5]
    raw = bytearray(victim.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    victim.write_bytes(bytes(raw))  # bytes flipped
    chunks[0].unlink()  # a file deleted (view 0 of image 0: every run reads it)
    assert verify_entry(entry).startswith("DAMAGED")
    assert not stored_entry(entry).ready(2)
    again = train(**common, out=str(tmp_path / "b"))
    assert again.history == first.history
    assert verify_entry(entry).startswith("ok (")


def test_cache_cli_ls_verify_rm(tmp_path, tiny_h5):
    from typer.testing import CliRunner

    from fastheads.cli import app

    cache_dir = tmp_path / "c"
    r = CliRunner().invoke(app, ["cache", "build", "--data", str(tiny_h5), "--cache-dir", str(cache_dir),
                                 "--weights", "none", "--image-size", "32", "--views", "3", "--quiet"])  # fmt: skip
    assert r.exit_code == 0, r.output
    key = _entry(cache_dir).name
    r = CliRunner().invoke(app, ["cache", "ls", "--cache-dir", str(cache_dir)])
    assert key in r.output and "ready" in r.output and "24 images, clean + 3 views" in r.output  # 4 x 24 = 3 units
    assert "weights none:he-uniform:seed=0," in r.output  # shown whole, not cut at 19 characters
    r = CliRunner().invoke(app, ["cache", "verify", "--cache-dir", str(cache_dir)])
    assert r.exit_code == 0 and f"{key}  ok" in r.output
    r = CliRunner().invoke(app, ["cache", "rm", "nope", "--cache-dir", str(cache_dir)])
    assert r.exit_code == 2 and "no feature-store entry" in r.output
    r = CliRunner().invoke(app, ["cache", "rm", key, "--cache-dir", str(cache_dir)])
    assert r.exit_code == 0 and not list_entries(cache_dir)


def test_unwritable_cache_dir_is_a_clear_error(tmp_path, tiny_h5):
    if os.geteuid() == 0:
        blocker = tmp_path / "file"
        blocker.write_text("x")
        cache_dir = blocker / "cache"  # a path under a regular file: not creatable, even for root
    else:
        cache_dir = Path("/proc/forbidden")
    from fastheads.errors import UserError

    with pytest.raises(UserError, match="--cache-dir"):
        train(data=str(tiny_h5), weights="none", image_size=32, epochs=1, verbose=False, cache=True,
              cache_dir=str(cache_dir), out=str(tmp_path / "o"))  # fmt: skip
