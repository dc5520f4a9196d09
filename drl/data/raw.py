"""Raw inputs under data/raw/: existence checks that say where to get the data, and streaming
hashes for the manifest."""
from __future__ import annotations

import hashlib
from pathlib import Path

from drl.data.points import DataError

CHUNK = 1 << 20


def require(path: str | Path, what: str, obtain: str) -> Path:
    """``path`` as a Path; a DataError naming the expected path, its format and its origin if absent."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: not found; expected {what}. {obtain}")
    return path


def file_sha256(path: str | Path) -> str:
    return file_hash(path, "sha256")


def file_hash(path: str | Path, kind: str) -> str:
    """The hex digest of a file, read in chunks; ``kind``: a hashlib name (md5, sha256)."""
    h = hashlib.new(kind)
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK):
            h.update(block)
    return h.hexdigest()


class ItemsHash:
    """sha256 over (name, size, sha256 of bytes) of each raw item read, in read order: identifies the
    images a split was made from, whatever container (folder, zip, LMDB) held them."""

    def __init__(self):
        self._h = hashlib.sha256()

    def update(self, name: str, data: bytes) -> None:
        self._h.update(f"{name}\0{len(data)}\0{hashlib.sha256(data).hexdigest()}\n".encode())

    def hexdigest(self) -> str:
        return self._h.hexdigest()
