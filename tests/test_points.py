"""drl/data/points.py and drl/data/prepare.py: loading user points, splitting, and the prepare stage."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from drl.data.points import DataError, load_points, split
from drl.data.prepare import prepare
from drl.data.toy2d import get_toy

POINTS = np.array([[0.5, -1.25], [2.0, 3.0], [-0.125, 0.0], [1e-3, -7.5], [4.0, 4.5]])


# ---------------------------------------------------------------- load_points
def test_load_npy(tmp_path):
    path = tmp_path / "pts.npy"
    np.save(path, POINTS.astype(np.float32))
    x = load_points(path)
    assert x.dtype == np.float64 and x.shape == (5, 2)
    np.testing.assert_allclose(x, POINTS, rtol=1e-6)
    np.testing.assert_array_equal(load_points(str(path)), x)   # str paths too


def test_load_csv_without_header(tmp_path):
    path = tmp_path / "pts.csv"
    path.write_text("".join(f"{a},{b}\n" for a, b in POINTS))
    np.testing.assert_array_equal(load_points(path), POINTS)


def test_load_csv_with_header(tmp_path):
    path = tmp_path / "pts.csv"
    path.write_text("x,y\n" + "".join(f"{a},{b}\n" for a, b in POINTS))
    x = load_points(path)
    assert x.shape == (5, 2)                 # the header is skipped, not read as a NaN row
    np.testing.assert_array_equal(x, POINTS)


def test_load_csv_scientific_first_row_is_data(tmp_path):
    path = tmp_path / "pts.csv"
    path.write_text("1e-3,-2.5E+1\n3,4\n")
    np.testing.assert_array_equal(load_points(path), [[1e-3, -25.0], [3.0, 4.0]])


def _write(tmp_path, name, content):
    path = tmp_path / name
    if isinstance(content, np.ndarray):
        np.save(path, content)
    else:
        path.write_text(content)
    return path


BAD = {
    "wrong_extension": ("pts.txt", "1,2\n3,4\n", "extension"),
    "wrong_shape_npy": ("pts.npy", np.zeros((10, 3)), "[10, 3]"),
    "wrong_shape_1d": ("pts.npy", np.zeros(10), "[10]"),
    "wrong_shape_csv": ("pts.csv", "1,2,3\n4,5,6\n", "[2, 3]"),
    "nan_rows_npy": ("pts.npy", np.array([[0.0, 1.0], [np.nan, 2.0], [3.0, np.inf], [4.0, 5.0]]), "2 row(s)"),
    "non_number_csv": ("pts.csv", "x,y\n1,2\n3,oops\n5,6\n", "1 row(s)"),
    "single_point_npy": ("pts.npy", np.array([[1.0, 2.0]]), "at least 2"),
    "empty_npy": ("pts.npy", np.zeros((0, 2)), "at least 2"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_load_points_rejects(tmp_path, case):
    name, content, word = BAD[case]
    path = _write(tmp_path, name, content)
    with pytest.raises(DataError) as exc:
        load_points(path)
    msg = str(exc.value)
    assert str(path) in msg
    assert word in msg


def test_load_points_missing_file(tmp_path):
    path = tmp_path / "absent.npy"
    with pytest.raises(DataError) as exc:
        load_points(path)
    assert str(path) in str(exc.value) and "not found" in str(exc.value)


def test_load_points_single_point_csv(tmp_path):
    path = _write(tmp_path, "one.csv", "x,y\n1,2\n")
    with pytest.raises(DataError) as exc:
        load_points(path)
    assert str(path) in str(exc.value)


def test_load_points_pickled_npy_refused(tmp_path):
    path = tmp_path / "obj.npy"
    np.save(path, np.array([{"a": 1}, {"b": 2}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError) as exc:
        load_points(path)
    assert str(path) in str(exc.value)


def test_data_error_is_value_error():
    assert issubclass(DataError, ValueError)


# ---------------------------------------------------------------- split
def _rows(a):
    return {tuple(r) for r in a}


@pytest.mark.parametrize("n,frac,n_test", [(100, 0.2, 20), (10, 0.25, 2), (7, 0.5, 4), (5, 0.01, 1), (2, 0.1, 1)])
def test_split_sizes_disjoint_and_complete(n, frac, n_test):
    x = np.stack([np.arange(n), -np.arange(n)], 1).astype(float)
    train, test = split(x, frac, seed=3)
    assert len(test) == n_test and len(train) == n - n_test
    assert not (_rows(train) & _rows(test))
    assert _rows(train) | _rows(test) == _rows(x)


def test_split_deterministic_per_seed():
    x = np.random.default_rng(0).normal(size=(200, 2))
    a_train, a_test = split(x, 0.1, seed=11)
    b_train, b_test = split(x, 0.1, seed=11)
    np.testing.assert_array_equal(a_train, b_train)
    np.testing.assert_array_equal(a_test, b_test)
    c_train, c_test = split(x, 0.1, seed=12)
    assert _rows(c_test) != _rows(a_test)
    # the test set is a random subset, not the head or the tail of the file
    assert _rows(a_test) != _rows(x[:20]) and _rows(a_test) != _rows(x[-20:])


# ---------------------------------------------------------------- prepare
def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def test_prepare_points(tmp_path):
    raw = tmp_path / "raw" / "mine.npy"
    raw.parent.mkdir()
    pts = np.random.default_rng(0).normal(size=(100, 2))
    np.save(raw, pts)
    cfg = {"source": "points", "path": str(raw), "test_fraction": 0.2, "seed": 0}
    out = tmp_path / "prepared" / "mine"          # created by prepare
    manifest = prepare(cfg, out)

    assert sorted(p.name for p in out.iterdir()) == ["labels.npz", "manifest.json", "test.npy", "train.npy"]
    train, test = np.load(out / "train.npy"), np.load(out / "test.npy")
    assert train.dtype == np.float32 and test.dtype == np.float32
    assert train.shape == (80, 2) and test.shape == (20, 2)
    exp_train, exp_test = split(pts, 0.2, 0)
    np.testing.assert_array_equal(train, exp_train.astype(np.float32))
    np.testing.assert_array_equal(test, exp_test.astype(np.float32))

    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk == manifest
    assert on_disk["train"]["shape"] == [80, 2] and on_disk["test"]["shape"] == [20, 2]
    assert on_disk["source"]["path"] == str(raw)
    assert on_disk["source"]["sha256"] == _sha(raw.read_bytes())
    assert on_disk["sha256"]["train"] == _sha(train.tobytes())
    assert on_disk["sha256"]["test"] == _sha(test.tobytes())
    assert on_disk["config"] == cfg


def test_prepare_points_csv_default_fraction(tmp_path):
    raw = tmp_path / "mine.csv"
    raw.write_text("x,y\n" + "".join(f"{i},{-i}\n" for i in range(50)))
    m = prepare({"source": "points", "path": str(raw), "seed": 1}, tmp_path / "out")
    assert m["test"]["shape"] == [5, 2] and m["train"]["shape"] == [45, 2]   # default test_fraction 0.1
    assert m["source"]["sha256"] == _sha(raw.read_bytes())


def test_prepare_points_bad_source_writes_nothing(tmp_path):
    raw = tmp_path / "bad.npy"
    np.save(raw, np.zeros((10, 3)))
    out = tmp_path / "out"
    with pytest.raises(DataError):
        prepare({"source": "points", "path": str(raw), "seed": 0}, out)
    assert not out.exists() or not any(out.iterdir())


def test_prepare_toy_deterministic_and_clean(tmp_path):
    cfg = {"source": "toy", "toy": "checkerboard", "n_train": 1000, "n_test": 200, "seed": 0}
    out = tmp_path / "checkerboard"
    m1 = prepare(cfg, out)
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    m2 = prepare(cfg, out)                                  # overwrite in place
    second = {p.name: p.read_bytes() for p in out.iterdir()}
    m3 = prepare(dict(cfg), tmp_path / "again")            # and into a fresh folder
    third = {p.name: p.read_bytes() for p in (tmp_path / "again").iterdir()}

    assert sorted(first) == ["labels.npz", "manifest.json", "test.npy", "train.npy"]   # no .tmp leftovers
    assert first == second == third
    assert m1 == m2 == m3
    assert m1["train"]["shape"] == [1000, 2] and m1["test"]["shape"] == [200, 2]
    assert m1["source"] == {"toy": "checkerboard"}

    train, test = np.load(out / "train.npy"), np.load(out / "test.npy")
    rng = np.random.default_rng(0)
    toy = get_toy("checkerboard")
    np.testing.assert_array_equal(train, toy.sample(1000, rng).astype(np.float32))
    np.testing.assert_array_equal(test, toy.sample(200, rng).astype(np.float32))
    assert not _rows(train) & _rows(test)                  # test is drawn after, not reused

    other = prepare({**cfg, "seed": 1}, tmp_path / "seed1")
    assert other["sha256"]["train"] != m1["sha256"]["train"]
