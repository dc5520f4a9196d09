"""Image preprocessing, paper Appendix B: centre-crop a square, resize it to the training resolution
with an antialiasing filter, store uint8 (N, H, W, C).  Images are written in stream order into a
memory-mapped .npy, so a dataset larger than memory (LSUN bedroom: 3M images) still fits; decoding
may run in worker processes, with the same bytes out for any number of them.
Random horizontal flips happen at training time, not here."""
from __future__ import annotations

import hashlib
import io
import multiprocessing
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Generator, Iterable, Iterator

import numpy as np
import PIL
from PIL import Image
from tqdm import tqdm

from drl.data.points import DataError, split
from drl.data.raw import ItemsHash

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
FILTERS = {"box": Image.Resampling.BOX, "bilinear": Image.Resampling.BILINEAR,
           "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}
SHORTER_SIDE = "shorter_side"
NAMES_KEPT = 10  # skipped images named in the manifest
# A worker's task: this many images or encoded bytes, whichever comes first (large enough that
# inter-process traffic is cheap next to decoding, small enough to spread a few hundred images).
CHUNK_ITEMS, CHUNK_BYTES = 64, 8 << 20
# Tasks per worker submitted but not yet written: keeps every worker busy while the parent reads and
# writes, and bounds memory (the parent reads at most this far ahead, whatever the dataset's size).
IN_FLIGHT = 2


class UnreadableImage(DataError):
    """The bytes of one image cannot be decoded."""


@dataclass(frozen=True)
class Preprocess:
    """Centre crop to a ``crop`` x ``crop`` square (``"shorter_side"``: the largest centred square),
    then resize to ``resolution`` x ``resolution`` with ``resize_filter``.  Pillow widens its filters
    by the scale factor when reducing, i.e. it antialiases; ``bilinear`` is then the triangle filter
    of ``tf.image.resize(..., antialias=True)``, the paper's setting (App. B)."""

    resolution: int
    crop: int | str = SHORTER_SIDE
    resize_filter: str = "bilinear"
    mode: str = "RGB"  # Pillow mode: "RGB" (3 channels) or "L" (1)

    @classmethod
    def from_config(cls, cfg: dict, **defaults) -> Preprocess:
        keys = ("resolution", "crop", "resize_filter")
        return cls(**{**defaults, **{k: cfg[k] for k in keys if k in cfg}})

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.resolution, self.resolution, len(self.mode)

    def __call__(self, image: Image.Image) -> np.ndarray:
        w, h = image.size
        side = min(w, h) if self.crop == SHORTER_SIDE else self.crop
        if side > min(w, h):
            raise DataError(f"image is {w}x{h}, smaller than the {side}x{side} crop")
        left, top = (w - side) // 2, (h - side) // 2
        image = image.crop((left, top, left + side, top + side))
        if side != self.resolution:
            image = image.resize((self.resolution, self.resolution), FILTERS[self.resize_filter])
        return np.asarray(image).reshape(self.shape)

    def manifest(self) -> dict:
        return {"crop": self.crop, "resolution": self.resolution, "resize_filter": self.resize_filter,
                "resize_library": f"Pillow {PIL.__version__}", "mode": self.mode, "layout": "NHWC uint8"}


def decode(data: bytes, mode: str) -> Image.Image:
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.convert(mode)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise UnreadableImage(f"cannot be decoded as an image ({exc})") from exc


@dataclass
class ImageStream:
    """``count`` encoded images, read lazily as (name, bytes) in a fixed order; ``locate`` turns a
    name into the file (or archive member, or LMDB key) for error messages."""

    count: int
    items: Generator[tuple[str, bytes], None, None]
    locate: Callable[[str], str]
    preprocess: Preprocess


def write_images(path: Path, stream: ImageStream, *, skip_corrupt: bool, desc: str,
                 workers: int = 1) -> tuple[dict, str, list[int]]:
    """Decode, crop and resize each image of ``stream`` into a uint8 .npy at ``path``, preallocated as
    a memory map, with up to ``workers`` processes.  Returns the split's manifest entry, the sha256
    of the array's bytes and the stream positions of the images skipped as corrupt (to drop their
    labels).  Reading, hashing and writing stay in this process, in stream order."""
    shape = stream.preprocess.shape
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(stream.count, *shape), version=(1, 0))
    digest, inputs, skipped, n = hashlib.sha256(), ItemsHash(), [], 0
    # closing: the archive or LMDB, and the worker processes, are released even when an image fails
    with closing(stream.items) as items, closing(decoded(_hashed(items, inputs), stream.preprocess, workers,
                                                         stream.count)) as results:
        for i, (name, pixels) in enumerate(tqdm(results, total=stream.count, desc=desc, unit="img", mininterval=2)):
            if isinstance(pixels, Exception):
                _raise_unless_skipped(stream, name, pixels, skip_corrupt)
                skipped.append((i, name))
                continue
            out[n] = pixels
            digest.update(pixels.tobytes())
            n += 1
    out.flush()
    del out
    names = [name for _, name in skipped]
    if n == 0:
        raise DataError(f"{desc}: no image could be decoded, e.g. {[stream.locate(s) for s in names[:3]]}")
    if n < stream.count:
        _shrink_npy(path, n)
    return ({"shape": [n, *shape], "dtype": "uint8", "inputs_sha256": inputs.hexdigest(),
             "skipped_corrupt": {"count": len(names), "first": names[:NAMES_KEPT]}}, digest.hexdigest(),
            [i for i, _ in skipped])


def _hashed(items: Iterable[tuple[str, bytes]], inputs: ItemsHash) -> Iterator[tuple[str, bytes]]:
    for name, data in items:
        inputs.update(name, data)
        yield name, data


def _raise_unless_skipped(stream: ImageStream, name: str, exc: Exception, skip_corrupt: bool) -> None:
    if not isinstance(exc, UnreadableImage):
        raise DataError(f"{stream.locate(name)}: {exc}") from exc
    if not skip_corrupt:
        raise DataError(f"{stream.locate(name)}: {exc}; replace it, or set skip_corrupt: true in the "
                        "dataset's params.yaml entry to skip undecodable images") from exc


def decoded(items: Iterable[tuple[str, bytes]], pre: Preprocess, workers: int,
            count: int) -> Iterator[tuple[str, np.ndarray | DataError]]:
    """(name, preprocessed pixels, or the DataError that stopped them) of each of ``count`` items, in
    order.  With ``workers`` > 1 the items are decoded in that many processes (fewer for a short
    stream), at most ``IN_FLIGHT`` chunks per worker ahead of the consumer.  Items are read here,
    not in the workers: archive and LMDB readers cannot be shared between processes."""
    workers = min(workers, -(-count // CHUNK_ITEMS))
    if workers <= 1:
        for name, data in items:
            yield name, _decode_one(pre, data)
        return
    # ProcessPoolExecutor, unlike Pool, fails instead of hanging when a worker dies (e.g. killed for memory)
    pool = ProcessPoolExecutor(workers, mp_context=_context())
    pending = deque()
    try:
        for names, datas in _chunks(items):
            pending.append((names, pool.submit(_decode_chunk, pre, datas)))
            if len(pending) >= workers * IN_FLIGHT:
                names, task = pending.popleft()
                yield from zip(names, task.result())
        while pending:
            names, task = pending.popleft()
            yield from zip(names, task.result())
    finally:  # on an error (or close()) the queued tasks are dropped, the running ones end
        pool.shutdown(wait=True, cancel_futures=True)


def _context() -> multiprocessing.context.BaseContext:
    """forkserver: workers are forked from a clean server process, not from this one, whose threads
    (tqdm's monitor, BLAS or torch pools) may hold locks at the fork.  The server imports this module
    once; each worker still imports the main script (so a script calling ``prepare`` with workers
    needs an ``if __name__ == "__main__"`` guard), about 0.3 s for `drl`, in parallel."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    return ctx


def _chunks(items: Iterable[tuple[str, bytes]]) -> Iterator[tuple[list[str], list[bytes]]]:
    names, datas, size = [], [], 0
    for name, data in items:
        names.append(name)
        datas.append(data)
        size += len(data)
        if len(names) == CHUNK_ITEMS or size >= CHUNK_BYTES:
            yield names, datas
            names, datas, size = [], [], 0
    if names:
        yield names, datas


def _decode_chunk(pre: Preprocess, datas: list[bytes]) -> list[np.ndarray | DataError]:
    return [_decode_one(pre, data) for data in datas]


def _decode_one(pre: Preprocess, data: bytes) -> np.ndarray | DataError:
    """The preprocessed image, or its DataError returned (not raised) so that the consumer, which
    knows where the bytes came from, names the file and decides whether to skip it."""
    try:
        return pre(decode(data, pre.mode))
    except DataError as exc:  # UnreadableImage included
        return exc


def _shrink_npy(path: Path, n: int) -> None:
    """Keep the first ``n`` rows of a version 1.0 .npy in place: numpy leaves room in the header for
    the row count to change, so only the header is rewritten and the file cut."""
    fmt = np.lib.format
    with open(path, "r+b") as fh:
        fmt.read_magic(fh)
        shape, fortran_order, dtype = fmt.read_array_header_1_0(fh)
        offset = fh.tell()
        fh.seek(0)
        fmt.write_array_header_1_0(fh, {"descr": fmt.dtype_to_descr(dtype), "fortran_order": fortran_order,
                                        "shape": (n, *shape[1:])})
        assert fh.tell() == offset, "npy header changed length"
        fh.truncate(offset + n * int(np.prod(shape[1:])) * dtype.itemsize)


def list_images(folder: Path) -> list[str]:
    """Relative POSIX paths of the images under ``folder`` (recursive, hidden files and folders
    ignored), sorted: the order of the prepared array."""
    rels = (p.relative_to(folder) for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    return sorted(r.as_posix() for r in rels if not any(part.startswith(".") for part in r.parts)
                  and (folder / r).is_file())


def folder_stream(folder: Path, rels: list[str], preprocess: Preprocess) -> ImageStream:
    return ImageStream(len(rels), _read_files(folder, rels), lambda rel: str(folder / rel), preprocess)


def _read_files(folder: Path, rels: list[str]):
    for rel in rels:
        try:
            yield rel, (folder / rel).read_bytes()
        except OSError as exc:
            raise DataError(f"{folder / rel}: cannot be read ({exc})") from exc


def require_images(folder: Path, rels: list[str]) -> list[str]:
    if not rels:
        raise DataError(f"{folder}: no images found (looked for {', '.join(IMAGE_EXTENSIONS)} files, recursively)")
    return rels


def split_indices(n: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train/test split of ``range(n)`` (both non-empty), each part in ascending order."""
    train, test = split(np.arange(n), test_fraction, seed)
    return np.sort(train), np.sort(test)
