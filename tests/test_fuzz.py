"""Property-based fuzzing (hypothesis) of every raw-data loader and of the params validator: random
bytes and random shapes either load or raise the project's own error (DataError, ParamsError), never
another exception, and a failed `prepare` leaves no file behind.  Each test counts the inputs it
tried; `pytest -s tests/test_fuzz.py` prints the counts."""
import copy
import gzip
import io
import pickle
import tarfile
import tempfile
import zipfile
from collections import Counter
from pathlib import Path

import lmdb
import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from drl.config import ParamsError, load_params, validate
from drl.data.points import DataError
from drl.data.prepare import prepare

ROOT = Path(__file__).resolve().parents[1]
FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
TRIED = Counter()  # inputs fed to each target, reported at the end of the module


@pytest.fixture(scope="module", autouse=True)
def report():
    yield
    print(f"\nfuzzed inputs per target: {dict(TRIED)}; total {sum(TRIED.values())}")


def _prepare_outcome(cfg: dict, target: str) -> str:
    """Run `prepare` on ``cfg`` in a fresh folder: it loads, or raises DataError and leaves no file."""
    TRIED[target] += 1
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "prepared"
        try:
            manifest = prepare(cfg, out)
        except DataError as exc:
            assert str(exc)
            leftovers = [p for p in out.rglob("*") if p.is_file()] if out.exists() else []
            assert not leftovers, leftovers
            return "error"
        assert (out / "manifest.json").is_file() and manifest["train"]["shape"][0] > 0
        return "loaded"


# --- 2-D points: .npy and .csv ------------------------------------------------------------------

@FUZZ
@given(data=st.binary(max_size=600), suffix=st.sampled_from([".npy", ".csv", ".txt"]))
def test_points_random_bytes(data, suffix):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"points{suffix}"
        path.write_bytes(data)
        _prepare_outcome({"source": "points", "path": str(path), "seed": 0}, "points bytes")


ARRAYS = st.one_of(
    st.tuples(st.integers(0, 5), st.integers(0, 4)).map(lambda s: np.ones(s, dtype=np.float64)),
    st.lists(st.integers(0, 4), max_size=4).map(lambda s: np.zeros(s, dtype=np.float32)),
    st.sampled_from([np.array([[1 + 2j, 0j]] * 3), np.array([["a", "b"]] * 3), np.array([[True, False]] * 3),
                     np.full((4, 2), np.nan), np.full((4, 2), np.inf), np.array([[1, 2]] * 3, dtype=np.int8),
                     np.array([[None, 1]] * 3, dtype=object)]))


@FUZZ
@given(array=ARRAYS)
def test_points_random_shapes_and_dtypes(array):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "points.npy"
        np.save(path, array, allow_pickle=True)
        outcome = _prepare_outcome({"source": "points", "path": str(path), "seed": 0}, "points arrays")
        if array.ndim != 2 or array.shape[1] != 2 or array.shape[0] < 2:
            assert outcome == "error"


# --- CIFAR-10 tarball -----------------------------------------------------------------------------

def _tarball(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


BATCH_NAMES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
BATCHES = st.fixed_dictionaries({b"data": st.one_of(
    st.tuples(st.integers(0, 3), st.integers(0, 3100)).map(lambda s: np.zeros(s, dtype=np.uint8)),
    st.just(np.zeros((2, 3072), dtype=np.float32)), st.just([1, 2, 3]), st.none()),
    b"labels": st.lists(st.integers(0, 9), max_size=3)})


@FUZZ
@given(data=st.one_of(st.binary(max_size=800), st.binary(max_size=400).map(gzip.compress)))
def test_cifar10_random_bytes(data):
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "c.tar.gz").write_bytes(data)
        assert _prepare_outcome({"source": "cifar10", "path": f"{d}/c.tar.gz"}, "cifar10 bytes") == "error"


@FUZZ
@given(batches=st.lists(st.one_of(BATCHES, st.binary(max_size=64)), min_size=6, max_size=6),
       cut=st.integers(0, 3))
def test_cifar10_random_batches(batches, cut):
    """Well-formed tarballs whose batch files hold random pickles (or bytes); some truncated."""
    members = {n: b if isinstance(b, bytes) else pickle.dumps(b) for n, b in zip(BATCH_NAMES, batches)}
    data = _tarball(members)
    data = data[:len(data) * (4 - cut) // 4]
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "c.tar.gz").write_bytes(data)
        _prepare_outcome({"source": "cifar10", "path": f"{d}/c.tar.gz"}, "cifar10 batches")


# --- encoded images (CelebA zip/folder, LSUN LMDB/folder, image folders) --------------------------

def _encoded(size: tuple[int, int], mode: str) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size).save(buf, format="JPEG" if mode == "CMYK" else "PNG")
    return buf.getvalue()


IMAGES = st.one_of(
    st.binary(max_size=200),
    st.tuples(st.integers(1, 24), st.integers(1, 24), st.sampled_from(["1", "L", "LA", "P", "RGB", "RGBA", "I;16", "CMYK"]))
    .map(lambda a: _encoded(a[:2], a[2])),
    st.tuples(st.integers(1, 24), st.integers(1, 24)).map(lambda s: _encoded(s, "RGB")).map(lambda b: b[:len(b) // 2]))
PREPROCESS = st.fixed_dictionaries({"resolution": st.integers(1, 12)},
                                   optional={"crop": st.one_of(st.integers(1, 30), st.just("shorter_side")),
                                             "resize_filter": st.sampled_from(["box", "bilinear", "lanczos"]),
                                             "skip_corrupt": st.booleans()})


@FUZZ
@given(images=st.lists(IMAGES, max_size=5), pre=PREPROCESS, nested=st.booleans())
def test_image_folder_random_images(images, pre, nested):
    with tempfile.TemporaryDirectory() as d:
        for i, data in enumerate(images):
            path = Path(d) / "raw" / ("sub" if nested and i % 2 else "") / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        (Path(d) / "raw").mkdir(exist_ok=True)
        _prepare_outcome({"source": "image_folder", "path": f"{d}/raw", "seed": 0, **pre}, "image folder")


@FUZZ
@given(images=st.lists(IMAGES, min_size=1, max_size=4), partition=st.one_of(
    st.binary(max_size=120), st.lists(st.tuples(st.integers(0, 5), st.sampled_from(["0", "1", "2", "x", ""])),
                                      max_size=6).map(lambda rows: "\n".join(f"{i}.jpg {p}" for i, p in rows).encode())),
       as_zip=st.booleans(), zip_cut=st.integers(0, 2), pre=PREPROCESS)
def test_celeba_random_archives_and_partition_files(images, partition, as_zip, zip_cut, pre):
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "part.txt").write_bytes(partition)
        if as_zip:
            buf = io.BytesIO()
            with zipfile.ZipFile(buf, "w") as zf:
                for i, data in enumerate(images):
                    zf.writestr(f"img_align_celeba/{i}.jpg", data)
            raw = buf.getvalue()
            (Path(d) / "celeba.zip").write_bytes(raw[:len(raw) * (3 - zip_cut) // 3])
            path = f"{d}/celeba.zip"
        else:
            (Path(d) / "img").mkdir()
            for i, data in enumerate(images):
                (Path(d) / "img" / f"{i}.jpg").write_bytes(data)
            path = f"{d}/img"
        _prepare_outcome({"source": "celeba", "path": path, "partition_file": f"{d}/part.txt", **pre}, "celeba")


def _lmdb(path: Path, values: list[bytes]) -> None:
    with lmdb.open(str(path), map_size=1 << 22) as env, env.begin(write=True) as txn:
        for i, v in enumerate(values):
            txn.put(f"{i:04d}".encode(), v)


@FUZZ
@given(values=st.lists(IMAGES, max_size=4), damage=st.sampled_from(["none", "truncate", "garbage", "zero"]),
       pre=PREPROCESS)
def test_lsun_random_lmdbs(values, damage, pre):
    with tempfile.TemporaryDirectory() as d:
        for split in ("train", "val"):
            folder = Path(d) / f"{split}_lmdb"
            _lmdb(folder, values)
            data = folder / "data.mdb"
            raw = data.read_bytes()
            data.write_bytes({"none": raw, "truncate": raw[:len(raw) // 3], "garbage": raw[:4096] + bytes(range(256)) * 8,
                              "zero": b""}[damage])
        _prepare_outcome({"source": "lsun", "path": f"{d}/train_lmdb", "test_path": f"{d}/val_lmdb", **pre}, "lsun")


# --- params.yaml ------------------------------------------------------------------------------------

REPO_PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
VALUES = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.floats(allow_nan=True),
                                st.text(max_size=6), st.sampled_from(["cifar10", "toy", "released", "conditional"])),
                      lambda children: st.one_of(st.lists(children, max_size=3),
                                                 st.dictionaries(st.text(max_size=5), children, max_size=3)),
                      max_leaves=6)


def _paths(node, prefix=()):
    """Every (path, value) in a nested dict/list."""
    yield prefix, node
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for k, v in items:
        yield from _paths(v, (*prefix, k))


ALL_PATHS = [p for p, _ in _paths(REPO_PARAMS) if p]


@st.composite
def mutated_params(draw):
    """The repository's params.yaml with 1-3 random edits: a value replaced (by a random value or one
    taken from elsewhere in the file), a key deleted, or an unknown key added."""
    params = copy.deepcopy(REPO_PARAMS)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(ALL_PATHS))
        parent = params
        try:
            for k in path[:-1]:
                parent = parent[k]
            parent[path[-1]]
        except (KeyError, IndexError, TypeError):
            continue  # an earlier edit removed or replaced it
        op = draw(st.sampled_from(["replace", "borrow", "delete", "add"]))
        if op == "replace":
            parent[path[-1]] = draw(VALUES)
        elif op == "borrow":
            parent[path[-1]] = copy.deepcopy(dict(_paths(REPO_PARAMS))[draw(st.sampled_from(ALL_PATHS))])
        elif op == "delete" and isinstance(parent, dict):
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=8))] = draw(VALUES)
    return params


@settings(FUZZ, max_examples=500)
@given(params=mutated_params())
def test_params_validator_on_mutated_params(params):
    TRIED["params mutations"] += 1
    try:
        validate(params)
    except ParamsError as exc:
        assert "problem(s):\n  - " in str(exc)


@FUZZ
@given(data=st.one_of(st.binary(max_size=300), VALUES.map(yaml.safe_dump).map(str.encode)))
def test_load_params_on_random_files(data):
    TRIED["params files"] += 1
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "params.yaml"
        path.write_bytes(data)
        with pytest.raises(ParamsError):
            load_params(path)
