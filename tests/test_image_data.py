"""Image datasets for the prepare stage (paper Appendix B): CIFAR-10 tarball, CelebA folder/zip,
LSUN LMDB/folder, generic image folders, scikit-learn digits; fixtures in each real format."""
from __future__ import annotations

import hashlib
import json

import jsonschema
import numpy as np
import pytest
import yaml
from sklearn.datasets import load_digits

from drl.config import SCHEMA_PATH
from drl.data.points import DataError
from drl.data.prepare import prepare, raw_inputs
from drl.data.raw import file_sha256
from image_fixtures import (CELEBA_PARTITIONS, INSIDE, celeba_image, cifar_batches, encode, framed, lsun_entries,
                            write_celeba, write_cifar_tarball, write_images, write_lmdb)


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def load_split(out, split):
    return np.load(out / f"{split}.npy")


def check_written(out, manifest):
    """The files on disk match the returned manifest: shapes, dtypes, array hashes."""
    assert sorted(p.name for p in out.iterdir()) == ["labels.npz", "manifest.json", "test.npy", "train.npy"]
    assert json.loads((out / "manifest.json").read_text()) == manifest
    for split in ("train", "test"):
        x = load_split(out, split)
        assert list(x.shape) == manifest[split]["shape"] and str(x.dtype) == manifest[split]["dtype"]
        assert manifest["sha256"][split] == sha(x.tobytes())


def assert_colour(pixels, colour, tol=0):
    diff = np.abs(pixels.astype(int) - np.asarray(colour)).max()
    assert diff <= tol, f"max deviation {diff} from {colour}"


# ------------------------------------------------------------------------------------------ CIFAR-10
def test_cifar10_layout_split_and_manifest(tmp_path):
    batches = cifar_batches(10)
    tarball = write_cifar_tarball(tmp_path / "raw" / "cifar-10-python.tar.gz", batches)
    cfg = {"source": "cifar10", "path": str(tarball)}
    out = tmp_path / "out"
    m = prepare(cfg, out)
    check_written(out, m)
    train, test = load_split(out, "train"), load_split(out, "test")
    assert train.shape == (50, 32, 32, 3) and test.shape == (10, 32, 32, 3) and train.dtype == np.uint8
    raw_train = np.concatenate([batches[f"data_batch_{i}"][b"data"] for i in range(1, 6)])
    # pixel (row, col, channel) of image i is byte channel * 1024 + row * 32 + col of its CHW row
    for i, r, c, ch in [(0, 0, 0, 0), (3, 5, 31, 2), (17, 31, 0, 1), (49, 12, 7, 2)]:
        assert train[i, r, c, ch] == raw_train[i, ch * 1024 + r * 32 + c]
    np.testing.assert_array_equal(test.reshape(10, -1, 3).transpose(0, 2, 1).reshape(10, 3072),
                                  batches["test_batch"][b"data"])
    labels = np.load(out / "labels.npz")
    np.testing.assert_array_equal(labels["train"], sum((batches[f"data_batch_{i}"][b"labels"] for i in range(1, 6)), []))
    np.testing.assert_array_equal(labels["test"], batches["test_batch"][b"labels"])
    assert m["labels"] == {"train": 50, "test": 10}
    assert m["source"] == {"path": str(tarball), "sha256": sha(tarball.read_bytes()),
                           "format": "cifar-10-python.tar.gz"}
    assert m["config"] == cfg and m["preprocessing"]["resolution"] == 32

    capped = prepare({**cfg, "max_images": 4}, tmp_path / "capped")
    assert capped["train"]["shape"] == [4, 32, 32, 3] and capped["test"]["shape"] == [4, 32, 32, 3]
    np.testing.assert_array_equal(load_split(tmp_path / "capped", "train"), train[:4])


def test_cifar10_missing_tarball_says_where_to_get_it(tmp_path):
    path = tmp_path / "data" / "raw" / "cifar-10-python.tar.gz"
    with pytest.raises(DataError) as exc:
        prepare({"source": "cifar10", "path": str(path)}, tmp_path / "out")
    msg = str(exc.value)
    assert str(path) in msg and "cifar-10-python.tar.gz" in msg and "https://www.cs.toronto.edu/~kriz/cifar.html" in msg
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case, expect", [("truncated", "truncated"), ("no_test_batch", "test_batch"),
                                          ("not_an_array", "refusing"), ("not_gzip", "gzip")])
def test_cifar10_bad_tarball_named(tmp_path, case, expect):
    path = tmp_path / "cifar-10-python.tar.gz"
    batches = cifar_batches(200)
    if case == "truncated":
        write_cifar_tarball(path, batches, truncate_to=0.5)
    elif case == "no_test_batch":
        write_cifar_tarball(path, {k: v for k, v in batches.items() if k != "test_batch"})
    elif case == "not_an_array":
        write_cifar_tarball(path, {**batches, "data_batch_2": {b"data": print}})
    else:
        path.write_bytes(b"this is not a tarball")
    with pytest.raises(DataError) as exc:
        prepare({"source": "cifar10", "path": str(path)}, tmp_path / "out")
    assert str(path) in str(exc.value) and expect in str(exc.value)
    assert not (tmp_path / "out" / "manifest.json").exists()


# -------------------------------------------------------------------------------------------- CelebA
@pytest.fixture(params=["folder", "zip"])
def celeba(request, tmp_path):
    images, partition = write_celeba(tmp_path / "raw", as_zip=request.param == "zip")
    return {"source": "celeba", "path": str(images), "partition_file": str(partition)}


def test_celeba_crop_resize_and_partitions(tmp_path, celeba):
    out = tmp_path / "out"
    m = prepare(celeba, out)
    check_written(out, m)
    train, test = load_split(out, "train"), load_split(out, "test")
    want_train = [i for i, p in enumerate(CELEBA_PARTITIONS) if p == 0]
    want_test = [i for i, p in enumerate(CELEBA_PARTITIONS) if p == 2]
    assert train.shape == (len(want_train), 64, 64, 3) and test.shape == (len(want_test), 64, 64, 3)
    for got, i in zip([*train, *test], want_train + want_test):
        inside = celeba_image(i)[109, 89]              # colour of the lower half of the centre square
        core = got[3:-3, 3:-3]                          # JPEG blurs colour edges (16x16 chroma blocks)
        assert_colour(core[:23, :, 1:], (100, 50), tol=6)  # centre square only: no blue band kept
        assert_colour(core[:23, :, 0], 250, tol=6)         # its top half (brighter red) stays on top
        assert_colour(core[33:], inside, tol=6)
    assert m["preprocessing"]["crop"] == 178 and m["preprocessing"]["resolution"] == 64
    assert m["preprocessing"]["resize_filter"] == "bilinear"
    assert m["source"]["partitions"] == {"train": [0], "test": [2]}
    assert m["source"]["partition_sha256"] == file_sha256(celeba["partition_file"])
    assert m["train"]["skipped_corrupt"] == {"count": 0, "first": []}
    if celeba["path"].endswith(".zip"):
        assert m["source"]["sha256"] == file_sha256(celeba["path"]) and m["source"]["format"] == "zip"


def test_celeba_zip_and_folder_agree(tmp_path):
    manifests = []
    for as_zip in (False, True):
        images, partition = write_celeba(tmp_path / f"raw{as_zip}", as_zip=as_zip)
        manifests.append(prepare({"source": "celeba", "path": str(images), "partition_file": str(partition)},
                                 tmp_path / f"out{as_zip}"))
    assert manifests[0]["sha256"] == manifests[1]["sha256"]
    assert manifests[0]["train"]["inputs_sha256"] == manifests[1]["train"]["inputs_sha256"]


def test_celeba_options(tmp_path, celeba):
    cfg = {**celeba, "train_partitions": [0, 1], "test_partitions": [2], "resolution": 32, "resize_filter": "lanczos",
           "max_images": 3}
    m = prepare(cfg, tmp_path / "out")
    assert m["train"]["shape"] == [3, 32, 32, 3] and m["test"]["shape"] == [2, 32, 32, 3]
    assert m["preprocessing"]["resize_filter"] == "lanczos"
    with pytest.raises(DataError, match="overlap"):
        prepare({**celeba, "test_partitions": [0]}, tmp_path / "bad")


def test_celeba_missing_inputs_say_where_to_get_them(tmp_path, celeba):
    missing = str(tmp_path / "nowhere" / "img_align_celeba")
    with pytest.raises(DataError) as exc:
        prepare({**celeba, "path": missing}, tmp_path / "out")
    assert missing in str(exc.value) and "Align&Cropped" in str(exc.value) and "mmlab.ie.cuhk.edu.hk" in str(exc.value)
    with pytest.raises(DataError) as exc:
        prepare({**celeba, "partition_file": str(tmp_path / "list_eval_partition.txt")}, tmp_path / "out")
    assert str(tmp_path / "list_eval_partition.txt") in str(exc.value)


def test_celeba_bad_entries_named(tmp_path, celeba):
    partition = tmp_path / "raw" / "list_eval_partition.txt"
    partition.write_text(partition.read_text() + "999999.jpg 0\n")
    with pytest.raises(DataError, match="999999.jpg") as exc:
        prepare(celeba, tmp_path / "out")
    assert celeba["path"] in str(exc.value)
    partition.write_text("000001.jpg train\n")
    with pytest.raises(DataError, match=r"list_eval_partition.txt:1"):
        prepare(celeba, tmp_path / "out")


def test_celeba_image_smaller_than_crop_named(tmp_path):
    images, partition = write_celeba(tmp_path / "raw", as_zip=False)
    (images / "000002.jpg").write_bytes(encode(framed(120, 150), "jpeg"))
    with pytest.raises(DataError) as exc:
        prepare({"source": "celeba", "path": str(images), "partition_file": str(partition)}, tmp_path / "out")
    assert str(images / "000002.jpg") in str(exc.value) and "120x150" in str(exc.value)


# ---------------------------------------------------------------------------------------------- LSUN
@pytest.fixture
def lsun(tmp_path):
    train = write_lmdb(tmp_path / "raw" / "church_outdoor_train_lmdb", lsun_entries(7))
    test = write_lmdb(tmp_path / "raw" / "church_outdoor_val_lmdb", lsun_entries(3, ("webp",)))
    return {"source": "lsun", "path": str(train), "test_path": str(test), "resolution": 16}


def test_lsun_lmdb_shorter_side_crop_and_key_order(tmp_path, lsun):
    out = tmp_path / "out"
    m = prepare(lsun, out)
    check_written(out, m)
    train, test = load_split(out, "train"), load_split(out, "test")
    assert train.shape == (7, 16, 16, 3) and test.shape == (3, 16, 16, 3)
    # keys are f"{n - i:040x}": key order is reverse insertion order, image i has inside (20 i, 100, 50)
    for row, i in enumerate(reversed(range(7))):
        lossless = i % 2 == 0                          # WebP lossless: exact; JPEG: close, away from edges
        x, tol = (train[row], 0) if lossless else (train[row, 1:-1, 1:-1], 8)
        assert_colour(x[:6, :, 0], 250, tol)           # top half of the centre square, kept on top
        assert_colour(x[-6:], (20 * i, 100, 50), tol)
    assert m["source"]["train"] == {"path": lsun["path"], "format": "lmdb", "entries": 7}
    assert m["preprocessing"]["crop"] == "shorter_side"

    capped = prepare({**lsun, "max_images": 2, "resolution": 32}, tmp_path / "capped")
    assert capped["train"]["shape"] == [2, 32, 32, 3] and capped["test"]["shape"] == [2, 32, 32, 3]


def test_lsun_from_image_folders(tmp_path, lsun):
    folder = write_images(tmp_path / "raw" / "val_images", {"b/2.webp": framed(40, 30), "a.png": framed(30, 50)})
    m = prepare({**lsun, "test_path": str(folder)}, tmp_path / "out")
    test = load_split(tmp_path / "out", "test")
    assert m["source"]["test"] == {"path": str(folder), "format": "folder", "images": 2}
    assert test.shape == (2, 16, 16, 3)
    assert_colour(test[:, 9:], INSIDE)                 # a.png then b/2.webp, both centre-cropped exactly


def test_lsun_missing_says_where_to_get_it(tmp_path, lsun):
    missing = str(tmp_path / "raw" / "bedroom_val_lmdb")
    with pytest.raises(DataError) as exc:
        prepare({**lsun, "test_path": missing}, tmp_path / "out")
    assert missing in str(exc.value) and "https://github.com/fyu/lsun" in str(exc.value)


@pytest.mark.parametrize("damage, expect", [("garbage", "not a readable LMDB"), ("truncated", "truncated")])
def test_lsun_corrupt_lmdb_named(tmp_path, lsun, damage, expect):
    data = tmp_path / "raw" / "church_outdoor_train_lmdb" / "data.mdb"
    raw = data.read_bytes()
    data.write_bytes(b"\x17" * 20000 if damage == "garbage" else raw[:len(raw) // 2])
    with pytest.raises(DataError, match=expect) as exc:
        prepare(lsun, tmp_path / "out")
    assert str(data) in str(exc.value)


def test_lsun_corrupt_image_named_or_skipped(tmp_path):
    entries = lsun_entries(6)
    bad = sorted(entries)[2]
    entries[bad] = entries[bad][:40]                   # a truncated image
    train = write_lmdb(tmp_path / "train_lmdb", entries)
    test = write_lmdb(tmp_path / "val_lmdb", lsun_entries(2))
    cfg = {"source": "lsun", "path": str(train), "test_path": str(test), "resolution": 16}
    with pytest.raises(DataError) as exc:
        prepare(cfg, tmp_path / "out")
    assert str(train / "data.mdb") in str(exc.value) and bad.decode() in str(exc.value)
    assert "skip_corrupt" in str(exc.value)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())

    m = prepare({**cfg, "skip_corrupt": True}, tmp_path / "out")
    check_written(tmp_path / "out", m)
    assert m["train"]["shape"] == [5, 16, 16, 3]
    assert m["train"]["skipped_corrupt"] == {"count": 1, "first": [bad.decode()]}
    full = prepare({"source": "lsun", "path": str(train), "test_path": str(test), "resolution": 16,
                    "skip_corrupt": True, "max_images": 2}, tmp_path / "first2")
    np.testing.assert_array_equal(load_split(tmp_path / "out", "train")[:2], load_split(tmp_path / "first2", "train"))
    assert full["train"]["skipped_corrupt"]["count"] == 0


# -------------------------------------------------------------------------------------- image folder
def test_image_folder_with_train_test_and_nested_classes(tmp_path):
    root = write_images(tmp_path / "raw" / "mine", {
        "train/dog/b.jpg": framed(40, 40, inside=(10, 200, 10)), "train/cat/a.png": framed(40, 30),
        "train/dog/sub/c.webp": framed(30, 40), "train/.hidden/x.png": framed(8, 8), "test/x.PNG": framed(24, 24)})
    (root / "train" / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    m = prepare({"source": "image_folder", "path": str(root), "resolution": 24, "seed": 0}, out)
    check_written(out, m)
    train, test = load_split(out, "train"), load_split(out, "test")
    assert train.shape == (3, 24, 24, 3) and test.shape == (1, 24, 24, 3)
    # sorted relative paths: cat/a.png, dog/b.jpg, dog/sub/c.webp
    for x in (train[0], train[2], test[0]):
        assert_colour(x[13:], INSIDE)
    assert_colour(train[1, 13:], (10, 200, 10), tol=8)
    assert m["source"]["split"] == {"by": "train/ and test/ folders"}
    assert m["source"]["images"] == {"train": 3, "test": 1}


def test_image_folder_seeded_split_and_explicit_crop(tmp_path):
    files = {f"c{i % 3}/{i:02d}.png": framed(50, 40, side=20, inside=(10 * i, 0, 0)) for i in range(12)}
    root = write_images(tmp_path / "mine", files)
    cfg = {"source": "image_folder", "path": str(root), "resolution": 10, "crop": 20, "test_fraction": 0.25,
           "seed": 3, "resize_filter": "box"}
    m = prepare(cfg, tmp_path / "out")
    assert m["train"]["shape"] == [9, 10, 10, 3] and m["test"]["shape"] == [3, 10, 10, 3]
    assert m["source"]["split"] == {"by": "seeded split", "test_fraction": 0.25, "seed": 3}
    reds = {int(v) for split in ("train", "test") for v in load_split(tmp_path / "out", split)[:, 7, 5, 0]}
    assert reds == {10 * i for i in range(12)}         # disjoint, covering; only the 20x20 centre kept
    assert prepare(cfg, tmp_path / "again")["sha256"] == m["sha256"]


def test_image_folder_errors_named(tmp_path):
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    with pytest.raises(DataError, match="no images found") as exc:
        prepare({"source": "image_folder", "path": str(empty), "resolution": 8, "seed": 0}, tmp_path / "out")
    assert str(empty) in str(exc.value)
    half = write_images(tmp_path / "half", {"train/a.png": framed(8, 8)})
    with pytest.raises(DataError, match="only one of train/ and test/"):
        prepare({"source": "image_folder", "path": str(half), "resolution": 8, "seed": 0}, tmp_path / "out")
    broken = write_images(tmp_path / "broken", {"a.png": framed(8, 8), "b.png": framed(8, 8), "c.png": framed(8, 8)})
    (broken / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    cfg = {"source": "image_folder", "path": str(broken), "resolution": 8, "seed": 0, "test_fraction": 0.3}
    with pytest.raises(DataError) as exc:
        prepare(cfg, tmp_path / "out")
    assert str(broken / "b.png") in str(exc.value)
    m = prepare({**cfg, "skip_corrupt": True}, tmp_path / "out")
    skipped = m["train"]["skipped_corrupt"]["count"] + m["test"]["skipped_corrupt"]["count"]
    assert skipped == 1 and m["train"]["shape"][0] + m["test"]["shape"][0] == 2


def test_failed_rerun_keeps_arrays_and_drops_manifest(tmp_path):
    root = write_images(tmp_path / "mine", {"train/a.png": framed(8, 8), "test/b.png": framed(8, 8)})
    cfg = {"source": "image_folder", "path": str(root), "resolution": 8, "seed": 0}
    out = tmp_path / "out"
    prepare(cfg, out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.suffix in (".npy", ".npz")}
    (root / "test" / "b.png").write_bytes(b"broken")      # the test split fails after train is written
    with pytest.raises(DataError, match="b.png"):
        prepare(cfg, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before   # both arrays or neither; no manifest


# -------------------------------------------------------------------------------------------- digits
def test_digits_split_and_scale(tmp_path):
    out = tmp_path / "out"
    m = prepare({"source": "digits", "seed": 0}, out)
    check_written(out, m)
    train, test = load_split(out, "train"), load_split(out, "test")
    assert train.shape == (1617, 8, 8, 1) and test.shape == (180, 8, 8, 1) and train.dtype == np.uint8
    assert train.max() == 255 and train.min() == 0
    everything = np.concatenate([train, test]).reshape(1797, 64)
    want = np.rint(load_digits().images * 255 / 16).astype(np.uint8).reshape(1797, 64)
    assert sorted(map(bytes, everything)) == sorted(map(bytes, want))
    labels = np.load(out / "labels.npz")
    digits = load_digits()
    lookup = {bytes(np.rint(img * 255 / 16).astype(np.uint8)): y for img, y in zip(digits.images, digits.target)}
    assert all(lookup[bytes(x.reshape(8, 8))] == y for x, y in zip(train, labels["train"]))
    assert len(labels["test"]) == 180
    big = prepare({"source": "digits", "seed": 0, "test_fraction": 0.5, "resolution": 16}, tmp_path / "big")
    assert big["train"]["shape"] == [899, 16, 16, 1] and big["test"]["shape"] == [898, 16, 16, 1]


# ------------------------------------------------------------------------------- raw_inputs and schema
EXAMPLES = {
    "cifar10": {"source": "cifar10", "path": "data/raw/cifar-10-python.tar.gz"},
    "celeba64": {"source": "celeba", "path": "data/raw/celeba/img_align_celeba.zip",
                 "partition_file": "data/raw/celeba/list_eval_partition.txt", "resolution": 64, "crop": 178,
                 "resize_filter": "bilinear"},
    "lsun_church128": {"source": "lsun", "path": "data/raw/lsun/church_outdoor_train_lmdb",
                       "test_path": "data/raw/lsun/church_outdoor_val_lmdb", "resolution": 128},
    "lsun_bedroom64": {"source": "lsun", "path": "data/raw/lsun/bedroom_train_lmdb",
                       "test_path": "data/raw/lsun/bedroom_val_lmdb", "resolution": 64, "max_images": 500000,
                       "skip_corrupt": True},
    "mine": {"source": "image_folder", "path": "data/raw/mine", "resolution": 32, "test_fraction": 0.1, "seed": 0},
    "digits": {"source": "digits", "seed": 0},
    "checkerboard": {"source": "toy", "toy": "checkerboard", "seed": 0},
    "points": {"source": "points", "path": "data/raw/mine.csv", "seed": 0},
}


def test_raw_inputs():
    got = {name: raw_inputs(cfg) for name, cfg in EXAMPLES.items()}
    assert got == {"cifar10": ["data/raw/cifar-10-python.tar.gz"],
                   "celeba64": ["data/raw/celeba/img_align_celeba.zip", "data/raw/celeba/list_eval_partition.txt"],
                   "lsun_church128": ["data/raw/lsun/church_outdoor_train_lmdb", "data/raw/lsun/church_outdoor_val_lmdb"],
                   "lsun_bedroom64": ["data/raw/lsun/bedroom_train_lmdb", "data/raw/lsun/bedroom_val_lmdb"],
                   "mine": ["data/raw/mine"], "digits": [], "checkerboard": [], "points": ["data/raw/mine.csv"]}


@pytest.fixture(scope="module")
def dataset_errors():
    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    validator = jsonschema.Draft202012Validator({"$ref": "#/$defs/dataset", "$defs": schema["$defs"]})
    return lambda cfg: [e.message for e in validator.iter_errors(cfg)]


def test_schema_accepts_examples(dataset_errors):
    for name, cfg in EXAMPLES.items():
        assert dataset_errors(cfg) == [], name


@pytest.mark.parametrize("cfg, word", [
    ({"source": "celeba", "path": "x"}, "partition_file"),
    ({"source": "lsun", "path": "x", "resolution": 64}, "test_path"),
    ({"source": "lsun", "path": "x", "test_path": "y", "resolution": 64, "partition_file": "z"}, "partition_file"),
    ({"source": "cifar10", "path": "x", "resolution": 64}, "resolution"),
    ({"source": "image_folder", "path": "x", "seed": 0}, "resolution"),
    ({"source": "digits"}, "seed"),
    ({"source": "digits", "seed": 0, "resize_filter": "nearest"}, "nearest"),
    ({"source": "celeba", "path": "x", "partition_file": "y", "crop": "middle"}, "middle"),
    ({"source": "mnist", "seed": 0}, "mnist"),
])
def test_schema_rejects(dataset_errors, cfg, word):
    errors = dataset_errors(cfg)
    assert errors and any(word in e for e in errors), errors
