"""Bad input gets a clear answer: generated malformed files and specs, unwritable outputs, misfit models.

The property tests generate broken inputs and hold the loaders to a contract with an
independent oracle: a valid input loads to exactly what was written; an invalid one raises
`UserError` with ONE line naming the file at fault; nothing else ever escapes, and nothing
invalid loads silently.
"""

from __future__ import annotations

import io
import math
import tempfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image
from typer.testing import CliRunner

from fastheads.augment import FILL_MODES, PRESETS, parse_augment
from fastheads.data import MAX_CLASSES_WITHOUT_NAMES, load_images
from fastheads.errors import UserError

from conftest import SIZE

PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _one_line_naming(err: UserError, *paths: Path) -> None:
    msg = str(err)
    assert "\n" not in msg and msg.strip() == msg, msg
    assert any(str(p) in msg for p in paths), f"{msg!r} names none of {paths}"


# --------------------------------------------------------------------------- HDF5 files


def _cast(values: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "S4" or dtype == "S3":
        return values.astype(str).astype(dtype)
    if dtype == "vlen-str":
        return values.astype(str).astype(object)
    return values.astype(dtype)


def _label_pool(dtype: str) -> list:
    kind = np.dtype("S1" if dtype.startswith("S") else dtype).kind
    if kind == "f":
        return [0, 1, 2, 3, 3, -1, 0.5, math.nan, math.inf, 1e30, 2.0**63, 9999]
    if kind == "b":
        return [True, False]
    if kind == "c":
        return [0, 1, 1 + 1j]
    if kind == "S":
        return [b"0", b"1", b"abc"]
    info = np.iinfo(dtype)
    pool = [0, 1, 2, 3, 3, 4, -1, 255, 9_999, 10_000, 2**40, 2**63 + 5]
    return [v for v in pool if info.min <= v <= info.max]


FAULTS = ["images_form", "images_shape", "images_dtype", "images_scale", "images_poke", "labels_form",
          "labels_shape", "labels_dtype", "labels_values", "filenames", "classes", "truncate"]  # fmt: skip


@st.composite
def h5_cases(draw):
    """A description of one course-style HDF5 file (and class-names file) with 0 to 3 things broken.

    Starting from a valid file and breaking a few things at a time keeps both outcomes
    frequent; every field can take every value, so any combination can come up.
    """
    n = draw(st.integers(1, 4))
    broken = draw(st.sets(st.sampled_from(FAULTS), max_size=3))

    def pick(name, valid, anything):
        return draw(anything if name in broken else valid)

    c = {"n": n, "seed": draw(st.integers(0, 2**16)), "broken": sorted(broken)}
    c["images_form"] = pick(
        "images_form", st.just("dataset"), st.sampled_from(["missing", "group", "dangling", "empty"])
    )
    c["images_shape"] = pick(
        "images_shape",
        st.tuples(st.just(n), st.sampled_from([8, 12]), st.sampled_from([8, 12]), st.just(3)),
        st.one_of(
            st.tuples(st.sampled_from([0, n]), st.sampled_from([7, 8, 12]), st.sampled_from([1, 7, 8]),
                      st.sampled_from([1, 3, 4])),
            st.lists(st.integers(0, 3), max_size=5).map(tuple),
        ),
    )  # fmt: skip
    c["images_dtype"] = pick("images_dtype", st.sampled_from(["uint8", "float32", "int16", "float64"]),
                             st.sampled_from(["int64", "uint64", "float16", "bool", "complex64", "S4", "vlen-str"]))  # fmt: skip
    c["images_scale"] = pick("images_scale", st.just(255.0), st.sampled_from([1.0, 0.0, 300.0, 0.004]))
    c["images_poke"] = pick("images_poke", st.just(None),
                            st.sampled_from([math.nan, math.inf, -math.inf, -1.0, -0.5, 255.5, 256.0, 1e6, 0.0]))  # fmt: skip
    c["labels_form"] = pick(
        "labels_form", st.just("dataset"), st.sampled_from(["missing", "group", "dangling", "empty"])
    )
    c["labels_shape"] = pick("labels_shape", st.sampled_from(["flat", "column"]),
                             st.sampled_from(["row", "two", "scalar", "more", "less", "none"]))  # fmt: skip
    c["labels_dtype"] = pick("labels_dtype", st.sampled_from(["int64", "uint8", "int32", "float32", "float64"]),
                             st.sampled_from(["uint64", "int8", "bool", "complex64", "S3", "float16"]))  # fmt: skip
    pool = _label_pool(c["labels_dtype"])
    small = [v for v in pool if type(v) in (int, float) and v in (0, 1, 2, 3) and not isinstance(v, bool)] or pool
    c["labels_values"] = draw(st.lists(st.sampled_from(pool if "labels_values" in broken else small),
                                       min_size=n + 1, max_size=n + 1))  # fmt: skip
    c["filenames"] = pick("filenames", st.sampled_from([None, "ok", "ok-2d"]),
                          st.sampled_from(["non-utf8", "numeric", "short", "group"]))  # fmt: skip
    c["classes"] = pick("classes", st.sampled_from([None, 4, 6]), st.sampled_from([2, 3, "one", "binary"]))
    c["truncate"] = pick("truncate", st.just(None), st.sampled_from([0.0, 0.3, 0.9, 0.999, "garbage"]))
    return c


def _write_dataset(f: h5py.File, key: str, form: str, value: np.ndarray | None) -> None:
    if form == "missing":
        return
    if form == "group":
        f.create_group(key)
    elif form == "dangling":
        f[key] = h5py.SoftLink("/nowhere/at/all")
    elif form == "empty":
        f.create_dataset(key, data=h5py.Empty("f4"))
    elif value.dtype == object:
        f.create_dataset(key, data=value, dtype=h5py.string_dtype())
    else:
        f.create_dataset(key, data=value)


def _build(c: dict, folder: Path) -> tuple[Path, Path | None, dict]:
    """Write the files; return them and what the oracle needs (the arrays as written, or None)."""
    rng = np.random.default_rng(c["seed"])
    n = c["n"]
    images = None
    if c["images_form"] == "dataset":
        raw = np.asarray(np.asarray(rng.uniform(0, 1, c["images_shape"])) * c["images_scale"])
        if c["images_poke"] is not None and raw.size:
            raw.flat[int(rng.integers(raw.size))] = c["images_poke"]
        kind = np.dtype(c["images_dtype"]).kind if c["images_dtype"] not in ("S4", "vlen-str") else "S"
        if kind in "iub":
            with np.errstate(invalid="ignore"):
                raw = np.where(np.isfinite(raw), raw, 0)
            raw = (
                np.clip(np.round(raw), *(np.iinfo(c["images_dtype"]).min, np.iinfo(c["images_dtype"]).max))
                if kind != "b"
                else raw > 0.5
            )
        images = _cast(raw, c["images_dtype"])
    labels = None
    if c["labels_form"] == "dataset":
        vals = c["labels_values"]
        shape = c["labels_shape"]
        arr = np.array(vals, dtype=object)
        arr = {"flat": arr[:n], "column": arr[:n, None], "row": arr[None, :n], "two": np.stack([arr[:n], arr[:n]], 1),
               "scalar": arr[0], "more": arr, "less": arr[: n - 1], "none": arr[:0]}[shape]  # fmt: skip
        dtype = c["labels_dtype"]
        labels = np.array(arr.tolist(), dtype=dtype) if np.ndim(arr) else np.array(arr, dtype=dtype)
    h5 = folder / "data.h5"
    with h5py.File(h5, "w") as f:
        _write_dataset(f, "images", c["images_form"], images)
        _write_dataset(f, "labels", c["labels_form"], labels)
        names = c["filenames"]
        if names in ("ok", "ok-2d", "short"):
            arr = np.array([f"img_{i}.jpg".encode() for i in range(n if names != "short" else n + 1)])
            f["filenames"] = arr[:, None] if names == "ok-2d" else arr
        elif names == "non-utf8":
            f["filenames"] = (
                np.array([b"\xff\xfe" + bytes([65 + i]) for i in range(n)], dtype="S3") if n else np.array([b"x"])[:0]
            )
        elif names == "numeric":
            f["filenames"] = np.arange(n)
        elif names == "group":
            f.create_group("filenames")
        f["unrelated"] = np.zeros(3)  # other keys are ignored
    cut = c["truncate"]
    if cut == "garbage":
        h5.write_bytes(b"\x89HDF\r\n\x1a\n" + rng.integers(0, 256, 600).astype(np.uint8).tobytes())
    elif cut is not None:
        data = h5.read_bytes()
        h5.write_bytes(data[: int(len(data) * cut)])
    classes = None
    k = c["classes"]
    if k is not None:
        classes = folder / "classes.txt"
        if k == "one":
            classes.write_text("only one\n\n")
        elif k == "binary":
            classes.write_bytes(b"\x00\xff\xfe\x80 not text")
        else:
            classes.write_text("\n".join(f"flower {i}" for i in range(k)) + "\n")
    return h5, classes, {"images": images, "labels": labels}


def _images_ok(a: np.ndarray | None) -> bool:
    if a is None or a.dtype.kind not in "iuf":
        return False
    if a.ndim != 4 or a.shape[0] == 0 or a.shape[3] != 3 or min(a.shape[1:3]) < 8:
        return False
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        return False
    lo, hi = float(a.min()), float(a.max())
    return 0 <= lo and hi <= 255 and not 0 < hi <= 1  # 0..1 would be images scaled by 1/255


def _labels_ok(lab: np.ndarray | None, n: int, k: int | None) -> bool:
    if lab is None:
        return False
    if lab.ndim == 2 and lab.shape[1] == 1:
        lab = lab[:, 0]
    if lab.ndim != 1 or len(lab) != n or n == 0 or lab.dtype.kind not in "iuf":
        return False
    if lab.dtype.kind == "f" and not (np.isfinite(lab).all() and (lab == np.round(lab)).all()):
        return False
    return lab.min() >= 0 and lab.max() < (k if k is not None else MAX_CLASSES_WITHOUT_NAMES)


@PROPERTY
@given(h5_cases())
def test_malformed_h5_loads_correctly_or_says_what_is_wrong(c):
    with tempfile.TemporaryDirectory() as tmp:
        h5, classes, written = _build(c, Path(tmp))
        classes_ok = c["classes"] not in ("one", "binary")
        k = c["classes"] if isinstance(c["classes"], int) else None
        valid = (
            classes_ok
            and c["truncate"] is None
            and _images_ok(written["images"])
            and _labels_ok(written["labels"], c["n"], k)
            and c["filenames"] in (None, "ok", "ok-2d", "non-utf8", "numeric")
        )
        try:
            ds = load_images(h5, classes)
        except UserError as e:
            assert not valid, f"a valid file was refused: {e}"
            _one_line_naming(e, h5 if classes_ok else classes)
            event(f"refused: {str(e).partition(': ')[2][:28]}")
            return
        event("loaded")
        assert valid, f"an invalid file loaded: {c}"
        # what loaded is what was written, and everything downstream relies on holds
        images = np.asarray(ds.images)
        assert images.ndim == 4 and images.shape[-1] == 3 and len(images) == c["n"] == len(ds.labels) == len(ds.names)
        assert np.isfinite(images).all() and images.min() >= 0 and images.max() <= 255
        np.testing.assert_array_equal(images, written["images"])
        assert ds.labels.dtype == np.int64 and ds.labels.shape == (c["n"],)
        np.testing.assert_array_equal(ds.labels, written["labels"].reshape(-1).astype(np.int64))
        assert ds.labels.min() >= 0 and ds.labels.max() < len(ds.class_names) == ds.n_classes
        if k is not None:
            assert ds.class_names == [f"flower {i}" for i in range(k)]
        assert all(isinstance(s, str) for s in ds.names)


def test_h5_edge_cases_found_by_the_property_test(tmp_path):
    """The inputs that used to crash the loader or load silently wrong, one by one."""
    good = np.full((2, 8, 8, 3), 100, np.uint8)
    cases = {
        "a group": (lambda f: (f.create_group("images"), f.create_dataset("labels", data=[0, 1])), "is a group"),
        "a dangling link": (lambda f: (f.create_dataset("images", data=good),
                                       f.__setitem__("labels", h5py.SoftLink("/gone"))), "cannot read 'labels'"),
        "an empty dataset": (lambda f: (f.create_dataset("images", data=h5py.Empty("f4")),
                                        f.create_dataset("labels", data=[0, 1])), "empty dataset"),
        "0..1 pixels": (lambda f: (f.create_dataset("images", data=np.full((2, 8, 8, 3), 0.5)),
                                   f.create_dataset("labels", data=[0, 1])), "scaled to 0..1"),
        "label 2**63": (lambda f: (f.create_dataset("images", data=good),
                                   f.create_dataset("labels", data=np.array([0, 2**63], np.uint64))), "label 9223372036854775808"),
        "label 1e30": (lambda f: (f.create_dataset("images", data=good),
                                  f.create_dataset("labels", data=[0.0, 1e30])), "without a class-names file"),
    }  # fmt: skip
    for name, (build, expected) in cases.items():
        path = tmp_path / f"{name}.h5"
        with h5py.File(path, "w") as f:
            build(f)
        with pytest.raises(UserError, match=expected) as e:
            load_images(path)
        _one_line_naming(e.value, path)
    path = tmp_path / "names.h5"
    with h5py.File(path, "w") as f:
        f["images"], f["labels"], f["filenames"] = good, [0, 1], np.array([b"\xffa.jpg", b"b.jpg"])
    assert load_images(path).names == ["\ufffda.jpg", "b.jpg"]  # non-UTF-8 file names are shown, not fatal


# --------------------------------------------------------------------------- folders of images


def _png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "PNG")
    return buf.getvalue()


def _image_files(rng: np.random.Generator) -> dict[str, tuple[bytes, str]]:
    """name -> (bytes, expected: 'ok', 'bad' or 'either' for corruptions a decoder may not notice)."""
    rgb = rng.integers(0, 256, (12, 12, 3), np.uint8)
    png = _png(rgb)
    at = int(rng.integers(33, len(png) - 8))  # past the header: pixel data, a chunk boundary, a CRC, IEND
    return {
        "good0.png": (png, "ok"),
        "good1.png": (_png(rng.integers(0, 256, (12, 12, 3), np.uint8)), "ok"),
        "rgba.png": (_png(rng.integers(0, 256, (12, 12, 4), np.uint8)), "ok"),
        "grey.png": (_png(rng.integers(0, 256, (12, 12), np.uint8)), "ok"),
        "odd.png": (_png(rng.integers(0, 256, (9, 15, 3), np.uint8)), "ok"),
        "garbage.png": (rng.integers(0, 256, 300, np.uint8).tobytes(), "bad"),
        "text.png": (b"hello, not a picture\n", "bad"),
        "empty.png": (b"", "bad"),
        "truncated.png": (png[: len(png) // 2], "bad"),
        "header-only.png": (png[:8], "bad"),
        "flipped.png": (png[:at] + bytes(b ^ 0x5A for b in png[at : at + 8]) + png[at + 8 :], "either"),
    }


GOOD_IMAGES = ["good0.png", "good1.png", "rgba.png", "grey.png", "odd.png", "sub/good0.png"]
BAD_IMAGES = ["garbage.png", "text.png", "empty.png", "truncated.png", "header-only.png", "flipped.png",
              "missing.png", ""]  # fmt: skip
BAD_LABELS = ["-1", "4", "1.5", "x", "", "99999999999999999999999", None]  # None: a line without its label


@st.composite
def folder_cases(draw):
    """A folder of images with a labels CSV; from a valid one, 0 to 3 things broken."""
    broken = draw(st.sets(st.sampled_from(["header", "encoding", "image", "label", "no rows"]), max_size=3))
    rows = draw(st.lists(st.tuples(st.sampled_from(GOOD_IMAGES), st.sampled_from(["0", "1", "3", " 2"])),
                         min_size=1, max_size=4))  # fmt: skip
    if "image" in broken:
        rows[draw(st.integers(0, len(rows) - 1))] = (draw(st.sampled_from(BAD_IMAGES)), "1")
    if "label" in broken:
        i = draw(st.integers(0, len(rows) - 1))
        rows[i] = (rows[i][0], draw(st.sampled_from(BAD_LABELS)))
    return {
        "seed": draw(st.integers(0, 2**16)),
        "header": draw(st.sampled_from(["label,file", "name,label", "", "file"]))
        if "header" in broken
        else draw(st.sampled_from(["file,label", "file,label,extra"])),
        "rows": [] if "no rows" in broken else rows,
        "encoding": draw(st.sampled_from(["binary", "nul"])) if "encoding" in broken else "utf-8",
        "classes": draw(st.sampled_from([None, 4])),
    }


@PROPERTY
@given(folder_cases())
def test_malformed_image_folder_loads_correctly_or_says_what_is_wrong(c):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "imgs"
        (folder / "sub").mkdir(parents=True)
        files = _image_files(np.random.default_rng(c["seed"]))
        for name, (data, _) in files.items():
            (folder / name).write_bytes(data)
        (folder / "sub" / "good0.png").write_bytes(files["good0.png"][0])
        lines = [c["header"]] + [name if lab is None else f"{name},{lab}" for name, lab in c["rows"]]
        text = "\n".join(lines) + "\n"
        csv_path = folder / "labels.csv"
        if c["encoding"] == "binary":
            csv_path.write_bytes(b"\xff\xfe\x00" + text.encode())
        elif c["encoding"] == "nul":
            csv_path.write_text(text.replace(".png", ".p\x00ng"))
        else:
            csv_path.write_text(text)
        classes = None
        if c["classes"]:
            classes = Path(tmp) / "classes.txt"
            classes.write_text("a\nb\nc\nd\n")
        # the oracle: 'ok', 'bad' or 'either'
        expect = "ok"
        header_ok = c["header"] in ("file,label", "label,file", "file,label,extra")
        if c["encoding"] != "utf-8" or not header_ok or not c["rows"]:
            expect = "bad"
        for name, lab in c["rows"] if expect == "ok" else []:
            if c["header"] == "label,file":
                name, lab = lab, name  # the columns are swapped: file is the second field
            sub = "good0.png" if name == "sub/good0.png" else name
            state = files.get(sub, (b"", "bad"))[1] if name else "bad"
            try:
                label_ok = lab is not None and 0 <= int(lab) < (4 if classes else MAX_CLASSES_WITHOUT_NAMES)
            except ValueError:
                label_ok = False
            if not label_ok or state == "bad":
                expect = "bad"
                break
            if state == "either":
                expect = "either"
        try:
            ds = load_images(folder, classes)
        except UserError as e:
            assert expect != "ok", f"a valid folder was refused: {e}"
            _one_line_naming(e, folder, csv_path)
            event(f"refused ({expect})")
            return
        event(f"loaded ({expect})")
        assert expect != "bad", f"an invalid folder loaded: {c}"
        assert len(ds) == len(c["rows"]) == len(ds.names)
        assert ds.labels.dtype == np.int64 and ds.labels.min() >= 0 and ds.labels.max() < ds.n_classes
        for i in range(len(ds)):
            img = np.asarray(ds.image(i))
            assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[-1] == 3


def test_unreadable_image_in_a_folder_names_the_file(tmp_path, tiny_images):
    images, _ = tiny_images
    Image.fromarray(images[0]).save(tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)  # a PNG signature, then garbage
    (tmp_path / "labels.csv").write_text("file,label\na.png,0\nb.png,1\n")
    with pytest.raises(UserError, match="cannot read this image") as e:
        load_images(tmp_path)
    _one_line_naming(e.value, tmp_path / "b.png")
    res = CliRunner().invoke(_app(), ["train", "--data", str(tmp_path), "--weights", "none", "--image-size",
                                      str(SIZE), "--out", str(tmp_path / "o")])  # fmt: skip
    assert res.exit_code == 2 and "b.png: cannot read this image" in res.output and "Traceback" not in res.output


# --------------------------------------------------------------------------- augmentation specs

NUMBERS = st.one_of(
    st.floats(-10, 400, allow_nan=False).map(repr),
    st.integers(-5, 400).map(str),
    st.sampled_from(["0", "1", "0.999", "1.0", "90", "180", "180.0001", "-0.0", "1e400", "nan", "inf", "-inf", "ten",
                     "", "1,5"]),
)  # fmt: skip
KEYS = ["rotation_range", "width_shift_range", "height_shift_range", "shear_range", "zoom_range", "horizontal_flip",
        "vertical_flip", "fill_mode", "cval", "brightness_range", "rotation"]  # fmt: skip


@st.composite
def augment_items(draw):
    key = draw(st.sampled_from(KEYS))
    if key in ("horizontal_flip", "vertical_flip"):
        value = draw(st.sampled_from(["true", "False", "1", "0", "yes", "NO", "maybe", "", "2"]))
    elif key == "fill_mode":
        value = draw(st.sampled_from([*FILL_MODES, "Nearest", "mirror", ""]))
    elif key == "zoom_range" and draw(st.booleans()):
        parts = draw(st.lists(NUMBERS.filter(lambda s: "," not in s), min_size=0, max_size=3))
        value = "[" + ",".join(parts) + "]"
    else:
        value = draw(NUMBERS)
    pad = draw(st.sampled_from(["", " "]))
    return key, value, f"{pad}{key}{pad}={pad}{value}"


def _expected_value(key: str, raw: str):
    """The oracle for one pair: its parsed value, or None when the pair is invalid on its own."""
    raw = raw.strip()
    if key in ("horizontal_flip", "vertical_flip"):
        return {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}.get(raw.lower())
    if key == "fill_mode":
        return raw if raw in FILL_MODES else None

    def num(s: str):
        try:
            v = float(s)
        except ValueError:
            return None
        return v if math.isfinite(v) else None

    if key == "zoom_range":
        if raw.startswith("["):
            items = [s for s in raw.strip("[]").split(",") if s.strip()]
            vals = [num(s) for s in items]
            return tuple(vals) if len(vals) == 2 and None not in vals else None
        z = num(raw)
        return None if z is None else (1 - z, 1 + z)
    return num(raw)


def _spec_ok(values: dict) -> bool:
    ranges = {"rotation_range": (0, 180, True), "width_shift_range": (0, 1, False),
              "height_shift_range": (0, 1, False), "shear_range": (0, 90, False)}  # fmt: skip
    for key, (lo, hi, closed) in ranges.items():
        v = values.get(key, 0.0)
        if not (lo <= v <= hi if closed else lo <= v < hi):
            return False
    zlo, zhi = values.get("zoom_range", (1.0, 1.0))
    return 0 < zlo <= zhi


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.lists(augment_items(), min_size=1, max_size=5), st.sampled_from(sorted(PRESETS))))
def test_structured_augment_specs_parse_exactly_or_say_what_is_wrong(items):
    if isinstance(items, str):  # a preset name
        assert parse_augment(items) == PRESETS[items]
        return
    text = ",".join(t for _, _, t in items)
    values, valid = {}, True
    for key, value, _ in items:
        v = _expected_value(key, value) if key in KEYS[:9] else None
        if v is None:
            valid = False
            break
        values[key] = v
    valid = valid and _spec_ok(values)
    try:
        spec = parse_augment(text)
    except UserError as e:
        assert not valid, f"{text!r} was refused: {e}"
        msg = str(e)
        assert msg.startswith("--augment:") and "\n" not in msg
        event("refused")
        return
    event("accepted")
    assert valid, f"{text!r} was accepted as {spec}"
    for key, v in values.items():
        assert getattr(spec, key) == v, (key, text)


# --------------------------------------------------------------------------- outputs that cannot be written


def _app():
    from fastheads.cli import app
    from fastheads.cli_evaluate import register

    register(app)  # idempotent
    return app


def test_unwritable_train_out_is_exit_2_and_one_line(tmp_path, tiny_h5):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")  # a path under a regular file cannot be created, even by root
    res = CliRunner().invoke(_app(), ["train", "--data", str(tiny_h5), "--weights", "none", "--image-size", str(SIZE),
                                      "--epochs", "1", "--augment", "none", "--quiet",
                                      "--out", str(blocker / "run")])  # fmt: skip
    assert res.exit_code == 2, res.output
    line = res.output.strip().splitlines()[-1]
    assert line.startswith("fastheads: error:") and str(blocker) in line and "cannot write there" in line
    assert "Traceback" not in res.output
    assert blocker.read_text() == "x"


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    """A course-contract model for tiny_h5's 4 classes, and two that break the contract at the output."""
    import keras

    root = tmp_path_factory.mktemp("models")
    inp = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inp)
    keras.Model(inp, keras.layers.Dense(4, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x))).save(
        root / "ok.keras"
    )
    keras.Model(inp, keras.layers.Conv2D(4, 1, activation="softmax")(x)).save(root / "map.keras")  # (b, h, w, 4)
    pooled = keras.layers.GlobalAveragePooling2D()(x)
    two = [keras.layers.Dense(4, activation="softmax")(pooled), keras.layers.Dense(4, activation="softmax")(pooled)]
    keras.Model(inp, two).save(root / "two.keras")
    return root


@pytest.mark.parametrize(
    "model, expect",
    [("map.keras", "expected (batch, classes) probabilities"), ("two.keras", "1 inputs and 2 outputs")],
)
def test_evaluate_a_model_whose_output_does_not_fit(small_model, tiny_h5, tiny_classes, tmp_path, model, expect):
    res = CliRunner().invoke(_app(), ["evaluate", str(small_model / model), "--data", str(tiny_h5), "--classes",
                                      str(tiny_classes), "--out", str(tmp_path / "o")])  # fmt: skip
    assert res.exit_code == 2, res.output
    assert expect in res.stderr and res.stderr.strip().count("\n") == 0
    assert not (tmp_path / "o").exists()  # nothing written before the check


def test_unwritable_evaluate_out_is_exit_2_and_one_line(small_model, tiny_h5, tiny_classes, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    res = CliRunner().invoke(_app(), ["evaluate", str(small_model / "ok.keras"), "--data", str(tiny_h5), "--classes",
                                      str(tiny_classes), "--quiet", "--out", str(blocker / "eval")])  # fmt: skip
    assert res.exit_code == 2, res.output
    assert str(blocker) in res.stderr and "cannot write here" in res.stderr
    assert res.stderr.strip().count("\n") == 0 and "Traceback" not in res.output
