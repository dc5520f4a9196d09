"""LSUN church_outdoor and bedroom, paper Appendix B: each image centre-cropped to the square of its
shorter side and resized to 64x64 or 128x128 with antialiasing.  Train: the official
<category>_train_lmdb (church_outdoor 126,227 images, bedroom 3,033,042); test: <category>_val_lmdb
(300 each).  Either may instead be a folder of images (e.g. exported by the LSUN tools).  LMDB
entries are read in key order; ``max_images`` keeps the first ones."""
from __future__ import annotations

from pathlib import Path

import lmdb

from drl.data.images import ImageStream, Preprocess, folder_stream, list_images, require_images
from drl.data.points import DataError
from drl.data.raw import require

URL = "https://github.com/fyu/lsun"
OBTAIN = (f"Get it with `python download.py -c <category>` from {URL} and unzip it under data/raw/, "
          "or give a folder of images.")


def load(cfg: dict) -> tuple[ImageStream, ImageStream, dict]:
    pre = Preprocess.from_config(cfg)
    cap = cfg.get("max_images")
    train, train_source = _stream(cfg["path"], "train", pre, cap)
    test, test_source = _stream(cfg["test_path"], "val", pre, cap)
    return train, test, {"source": {"train": train_source, "test": test_source}, "preprocessing": pre.manifest()}


def _stream(path: str, split: str, pre: Preprocess, cap: int | None) -> tuple[ImageStream, dict]:
    path = require(path, f"an LSUN {split} LMDB directory (<category>_{split}_lmdb/ holding data.mdb) "
                   "or a folder of images", OBTAIN)
    if (path / "data.mdb").is_file():
        entries = _lmdb_entries(path)
        count = min(entries, cap or entries)
        stream = ImageStream(count, _lmdb_items(path, count), lambda key: f"{path / 'data.mdb'} (key {key})", pre)
        return stream, {"path": str(path), "format": "lmdb", "entries": entries}
    rels = require_images(path, list_images(path))
    return folder_stream(path, rels[:cap], pre), {"path": str(path), "format": "folder", "images": len(rels)}


def _open(path: Path) -> lmdb.Environment:
    return lmdb.open(str(path), readonly=True, lock=False, readahead=False, meminit=False)


def _lmdb_entries(path: Path) -> int:
    """Entry count of the LMDB at ``path``; a DataError if data.mdb is not an LMDB, is empty, or is
    shorter than its own page count (truncated: reading it would crash)."""
    data = path / "data.mdb"
    try:
        with _open(path) as env:
            stat, last_page = env.stat(), env.info()["last_pgno"]
    except lmdb.Error as exc:
        raise DataError(f"{data}: not a readable LMDB ({exc}). {OBTAIN}") from exc
    need = (last_page + 1) * stat["psize"]
    if data.stat().st_size < need:
        raise DataError(f"{data}: truncated ({data.stat().st_size} bytes; its pages need {need}). {OBTAIN}")
    if stat["entries"] == 0:
        raise DataError(f"{data}: the LMDB has no entries. {OBTAIN}")
    return stat["entries"]


def _lmdb_items(path: Path, count: int):
    """The first ``count`` (key, encoded image) pairs in key order."""
    try:
        with _open(path) as env, env.begin() as txn:
            for i, (key, value) in enumerate(txn.cursor()):
                if i == count:
                    break
                yield key.decode("ascii", "backslashreplace"), value
    except lmdb.Error as exc:
        raise DataError(f"{path / 'data.mdb'}: corrupt LMDB ({exc}). {OBTAIN}") from exc
