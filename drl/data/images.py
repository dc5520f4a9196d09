"""Image preprocessing, paper Appendix B: centre-crop a square, resize it to the training resolution
with an antialiasing filter, store uint8 (N, H, W, C).  Encoded images are decoded one at a time
into a memory-mapped .npy, so a dataset larger than memory (LSUN bedroom: 3M images) still fits.
Random horizontal flips happen at training time, not here."""
from __future__ import annotations

import hashlib
import io
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Generator

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


def write_images(path: Path, stream: ImageStream, *, skip_corrupt: bool, desc: str) -> tuple[dict, str]:
    """Decode, crop and resize each image of ``stream`` into a uint8 .npy at ``path``, preallocated as
    a memory map.  Returns the split's manifest entry and the sha256 of the array's bytes."""
    shape = stream.preprocess.shape
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(stream.count, *shape), version=(1, 0))
    digest, inputs, skipped, n = hashlib.sha256(), ItemsHash(), [], 0
    with closing(stream.items) as items:  # closes the archive or LMDB even when an image fails
        for name, data in tqdm(items, total=stream.count, desc=desc, unit="img", mininterval=2):
            inputs.update(name, data)
            pixels = _pixels(stream, name, data, skip_corrupt)
            if pixels is None:
                skipped.append(name)
                continue
            out[n] = pixels
            digest.update(pixels.tobytes())
            n += 1
    out.flush()
    del out
    if n == 0:
        raise DataError(f"{desc}: no image could be decoded, e.g. {[stream.locate(s) for s in skipped[:3]]}")
    if n < stream.count:
        _shrink_npy(path, n)
    return {"shape": [n, *shape], "dtype": "uint8", "inputs_sha256": inputs.hexdigest(),
            "skipped_corrupt": {"count": len(skipped), "first": skipped[:NAMES_KEPT]}}, digest.hexdigest()


def _pixels(stream: ImageStream, name: str, data: bytes, skip_corrupt: bool) -> np.ndarray | None:
    """One preprocessed image; None if it cannot be decoded and ``skip_corrupt``."""
    try:
        return stream.preprocess(decode(data, stream.preprocess.mode))
    except UnreadableImage as exc:
        if skip_corrupt:
            return None
        raise DataError(f"{stream.locate(name)}: {exc}; replace it, or set skip_corrupt: true in the "
                        "dataset's params.yaml entry to skip undecodable images") from exc
    except DataError as exc:
        raise DataError(f"{stream.locate(name)}: {exc}") from exc


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
