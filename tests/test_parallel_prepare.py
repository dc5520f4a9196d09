"""`prepare` with worker processes: the same files, byte for byte, as with one process (folder, zip and
LMDB sources, corrupt images skipped or named), labels that stay with their images, errors that name
the file and leave no worker behind, and a reader never more than a bounded window ahead."""
from __future__ import annotations

import os
import re

import numpy as np
import pytest
from image_fixtures import encode, framed, lsun_entries, write_celeba, write_images, write_lmdb

from drl.cli import main
from drl.data import images, prepare as P
from drl.data.images import ImageStream, Preprocess
from drl.data.points import DataError


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    """Chunks of 2 images, so that a fixture of a dozen images is spread over both workers."""
    monkeypatch.setattr(images, "CHUNK_ITEMS", 2)


def _files(out) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def _same_for_1_and_2_workers(cfg: dict, tmp_path) -> dict:
    manifests = [P.prepare(cfg, tmp_path / f"w{n}", workers=n) for n in (1, 2)]
    assert _files(tmp_path / "w1") == _files(tmp_path / "w2")  # arrays, labels and manifest
    assert manifests[0] == manifests[1]
    return manifests[0]


def _mixed_folder(root, n=14, corrupt=()):
    """PNG, JPEG and WebP of varied shapes in class folders; ``corrupt`` indices get broken bytes."""
    fmts, shapes = (".png", ".jpg", ".webp"), [(40, 30), (30, 44), (36, 36)]
    files = {f"c{i % 2}/{i:02d}{fmts[i % 3]}": framed(*shapes[i % 3], inside=(15 * i, 90, 40)) for i in range(n)}
    write_images(root, files)
    for i in corrupt:
        (root / list(files)[i]).write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    return root


@pytest.mark.parametrize("corrupt", [(), (3, 8)])
def test_image_folder_same_bytes_for_any_worker_count(tmp_path, corrupt):
    root = _mixed_folder(tmp_path / "raw", corrupt=corrupt)
    cfg = {"source": "image_folder", "path": str(root), "resolution": 16, "seed": 0, "test_fraction": 0.3,
           "skip_corrupt": True}
    m = _same_for_1_and_2_workers(cfg, tmp_path)
    assert m["train"]["skipped_corrupt"]["count"] + m["test"]["skipped_corrupt"]["count"] == len(corrupt)
    assert m["train"]["shape"][0] + m["test"]["shape"][0] == 14 - len(corrupt)


def test_lmdb_and_zip_same_bytes_for_any_worker_count(tmp_path):
    entries = lsun_entries(11)
    bad = sorted(entries)[4]
    entries[bad] = entries[bad][:40]
    lsun = {"source": "lsun", "path": str(write_lmdb(tmp_path / "train_lmdb", entries)), "resolution": 16,
            "test_path": str(write_lmdb(tmp_path / "val_lmdb", lsun_entries(5))), "skip_corrupt": True}
    m = _same_for_1_and_2_workers(lsun, tmp_path / "lsun")
    assert m["train"]["skipped_corrupt"] == {"count": 1, "first": [bad.decode()]}
    zipped, partition = write_celeba(tmp_path / "celeba", as_zip=True)
    _same_for_1_and_2_workers({"source": "celeba", "path": str(zipped), "partition_file": str(partition)},
                              tmp_path / "celeba_out")


def _labelled_loader(n: int, bad: set[int]):
    """A source of ``n`` labelled images whose red value encodes the label; ``bad`` ones undecodable."""
    labels = {"train": np.arange(n, dtype=np.int64) % 5, "test": np.array([4, 1], dtype=np.int64)}

    def stream(split):
        datas = [b"broken" if split == "train" and i in bad else
                 encode(np.full((12, 12, 3), (40 * int(y), 0, 0), np.uint8), "png")
                 for i, y in enumerate(labels[split])]
        items = ((f"{split}/{i}", d) for i, d in enumerate(datas))
        return ImageStream(len(datas), items, lambda name: f"fake:{name}", Preprocess(4))

    return lambda cfg: (stream("train"), stream("test"), {"labels": labels})


@pytest.mark.parametrize("workers", [1, 2])
def test_skipped_images_take_their_labels_with_them(tmp_path, monkeypatch, workers):
    monkeypatch.setitem(P.LOADERS, "fake", _labelled_loader(13, bad={0, 6, 7}))
    m = P.prepare({"source": "fake", "skip_corrupt": True}, tmp_path / "out", workers=workers)
    train, labels = np.load(tmp_path / "out" / "train.npy"), np.load(tmp_path / "out" / "labels.npz")
    assert m["train"]["skipped_corrupt"] == {"count": 3, "first": ["train/0", "train/6", "train/7"]}
    np.testing.assert_array_equal(labels["train"], np.delete(np.arange(13) % 5, [0, 6, 7]))
    np.testing.assert_array_equal(train[:, 0, 0, 0], 40 * labels["train"])   # each image beside its own label
    assert m["labels"] == {"train": 10, "test": 2} and len(labels["test"]) == 2


def test_write_images_reports_skipped_positions(tmp_path):
    train = _labelled_loader(9, bad={2, 8})({})[0]
    entry, _, skipped = images.write_images(tmp_path / "x.npy", train, skip_corrupt=True, desc="t", workers=2)
    assert skipped == [2, 8] and entry["shape"][0] == 7


class _RecordingPool(images.ProcessPoolExecutor):
    """Remembers its workers' pids, to check that none outlives an error."""
    pids: list[int] = []

    def shutdown(self, *args, **kwargs):
        _RecordingPool.pids += list(self._processes or ())
        super().shutdown(*args, **kwargs)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize("fault,words", [("corrupt", ["skip_corrupt", "cannot be decoded"]),
                                         ("small", ["smaller than the 30x30 crop"])])
def test_worker_errors_name_the_file_and_stop_the_workers(tmp_path, monkeypatch, fault, words):
    files = {f"train/{i:02d}.{'png' if i % 2 else 'jpg'}": framed(40, 30, inside=(9 * i, 90, 40)) for i in range(12)}
    files["test/a.png"] = framed(30, 30)
    if fault == "small":
        files["train/07.png"] = framed(20, 20)
    root = write_images(tmp_path / "raw", files)
    if fault == "corrupt":
        (root / "train" / "07.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    monkeypatch.setattr(images, "ProcessPoolExecutor", _RecordingPool)
    monkeypatch.setattr(_RecordingPool, "pids", [])
    cfg = {"source": "image_folder", "path": str(root), "resolution": 8, "crop": 30, "seed": 0}
    errors = []
    for n in (1, 2):
        with pytest.raises(DataError) as exc:
            P.prepare(cfg, tmp_path / f"out{n}", workers=n)
        errors.append(re.sub(r" at 0x[0-9a-f]+", "", str(exc.value)))  # PIL names a BytesIO by address
        assert not (tmp_path / f"out{n}").exists() or not any((tmp_path / f"out{n}").iterdir())
    assert errors[0] == errors[1] and errors[0].startswith(f"{root / 'train' / '07.png'}: ")
    assert all(w in errors[0] for w in words), errors[0]
    assert _RecordingPool.pids and not any(_alive(p) for p in _RecordingPool.pids)


def test_reader_stays_within_the_window(monkeypatch):
    """Peak memory is bounded: the stream is read at most workers x IN_FLIGHT chunks ahead of the
    consumer, whatever its length, yet ahead enough to keep both workers busy."""
    monkeypatch.setattr(images, "CHUNK_ITEMS", 3)
    data, n, read, leads = encode(framed(8, 8), "png"), 200, [0], []
    consumed = 0

    def items():
        for i in range(n):
            read[0] += 1
            leads.append(read[0] - consumed)
            yield str(i), data

    for _name, pixels in images.decoded(items(), Preprocess(4), 2, n):
        assert isinstance(pixels, np.ndarray)
        consumed += 1
    assert consumed == n
    assert images.CHUNK_ITEMS < max(leads) <= 2 * images.IN_FLIGHT * images.CHUNK_ITEMS


def test_cli_workers_must_be_positive(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["prepare", "--dataset", "digits", "--workers", "0"])
    assert exc.value.code == 2 and "--workers" in capsys.readouterr().err
