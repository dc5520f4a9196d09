"""Tiny raw image datasets in the real formats (CIFAR-10 tarball, CelebA folder/zip + partition file,
LSUN LMDB, image folders), built in a test's tmp_path."""
from __future__ import annotations

import io
import pickle
import struct
import tarfile
import zipfile
from pathlib import Path

import lmdb
import numpy as np
from PIL import Image

INSIDE, OUTSIDE = (200, 60, 30), (0, 0, 255)  # colour of the centre square, colour cropped away


def encode(image: np.ndarray, fmt: str) -> bytes:
    """uint8 (H, W, 3) -> encoded bytes; WebP lossless so pixel values survive."""
    buf = io.BytesIO()
    options = {"webp": {"lossless": True}, "jpeg": {"quality": 95}}.get(fmt, {})
    Image.fromarray(image).save(buf, format=fmt.upper(), **options)
    return buf.getvalue()


def framed(w: int, h: int, side: int | None = None, inside=INSIDE, outside=OUTSIDE) -> np.ndarray:
    """A w x h image whose centred ``side`` square (default: the shorter side) is ``inside`` and the
    rest ``outside``; the square's top half is brighter in red, so orientation is visible."""
    side = side or min(w, h)
    img = np.empty((h, w, 3), np.uint8)
    img[:] = outside
    top, left = (h - side) // 2, (w - side) // 2
    img[top:top + side, left:left + side] = inside
    img[top:top + side // 2, left:left + side, 0] = 250
    return img


# ------------------------------------------------------------------------------------------ CIFAR-10
def cifar_batches(n: int, seed: int = 0) -> dict[str, dict]:
    rng = np.random.default_rng(seed)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    return {name: {b"batch_label": name.encode(), b"labels": rng.integers(0, 10, n).tolist(),
                   b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                   b"filenames": [f"{name}_{j}.png".encode() for j in range(n)]} for name in names}


class Py2Pickler(pickle._Pickler):
    """Protocol 2 as Python 2 wrote CIFAR-10: byte strings as (SHORT_)BINSTRING, arrays through
    numpy.core.multiarray._reconstruct."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_bytes(self, obj: bytes) -> None:
        n = len(obj)
        self.write((pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_bytes


def py2_pickle(obj) -> bytes:
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue().replace(b"numpy._core.multiarray", b"numpy.core.multiarray")


def write_cifar_tarball(path: Path, batches: dict[str, object], *, truncate_to: float | None = None) -> Path:
    """cifar-10-python.tar.gz layout: cifar-10-batches-py/<batch> pickles (plus a readme member)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        members = {"readme.html": b"<html></html>"}
        members.update({name: py2_pickle(batch) for name, batch in batches.items()})
        for name, data in members.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    data = buf.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data[:int(len(data) * truncate_to)] if truncate_to else data)
    return path


# -------------------------------------------------------------------------------------------- CelebA
CELEBA_PARTITIONS = [0, 0, 0, 1, 2, 2, 0]


def celeba_image(i: int) -> np.ndarray:
    """178 x 218, as img_align_celeba: its 178 x 178 centre square framed by 20-row bands."""
    return framed(178, 218, inside=(40 * i % 200, 100, 50))


def write_celeba(root: Path, *, as_zip: bool) -> tuple[Path, Path]:
    """img_align_celeba/ (or img_align_celeba.zip) and list_eval_partition.txt under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    names = [f"{i + 1:06d}.jpg" for i in range(len(CELEBA_PARTITIONS))]
    files = {name: encode(celeba_image(i), "jpeg") for i, name in enumerate(names)}
    if as_zip:
        images = root / "img_align_celeba.zip"
        with zipfile.ZipFile(images, "w") as zf:
            for name, data in files.items():
                zf.writestr(f"img_align_celeba/{name}", data)
    else:
        images = root / "img_align_celeba"
        images.mkdir()
        for name, data in files.items():
            (images / name).write_bytes(data)
    partition = root / "list_eval_partition.txt"
    partition.write_text("".join(f"{n} {p}\n" for n, p in zip(names, CELEBA_PARTITIONS)))
    return images, partition


# ---------------------------------------------------------------------------------------------- LSUN
def write_lmdb(path: Path, entries: dict[bytes, bytes]) -> Path:
    """An LMDB directory (data.mdb, lock.mdb) mapping image ids to encoded images, as the LSUN exports."""
    path.parent.mkdir(parents=True, exist_ok=True)
    env = lmdb.open(str(path), map_size=1 << 26)
    with env.begin(write=True) as txn:
        for key, value in entries.items():
            txn.put(key, value)
    env.close()
    return path


def lsun_entries(n: int, fmt_cycle=("webp", "jpeg")) -> dict[bytes, bytes]:
    """``n`` images of varied shapes (landscape, portrait), keys in reverse of insertion order."""
    shapes = [(60, 40), (40, 56), (48, 48)]
    return {f"{n - i:040x}".encode(): encode(framed(*shapes[i % 3], inside=(20 * i, 100, 50)),
                                             fmt_cycle[i % len(fmt_cycle)]) for i in range(n)}


# -------------------------------------------------------------------------------------- image folders
def write_images(root: Path, files: dict[str, np.ndarray]) -> Path:
    """``files``: relative path -> image; the format follows the extension."""
    fmts = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp"}
    for rel, image in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode(image, fmts[path.suffix.lower()]))
    return root
