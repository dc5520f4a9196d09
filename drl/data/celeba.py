"""CelebA, paper Appendix B: the 'Align&Cropped' 178x218 images, centre-cropped to 178x178 and resized
to 64x64 with antialiasing.  Train = partition 0 (162,770 images) and test = partition 2 (19,962) of
the official list_eval_partition.txt, the paper's counts; partition 1 (validation) goes nowhere unless
``train_partitions`` / ``test_partitions`` say otherwise.  (The released code crops rows 20:-20, the
same centre square, but resizes to 32.)  Images come from the img_align_celeba/ folder or the zip."""
from __future__ import annotations

import zipfile
import zlib
from pathlib import Path, PurePosixPath

from drl.data.images import ImageStream, Preprocess, folder_stream
from drl.data.points import DataError
from drl.data.raw import file_sha256, require

URL = "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html"
CROP, RESOLUTION = 178, 64
PARTITIONS = {"train": [0], "test": [2]}


def load(cfg: dict) -> tuple[ImageStream, ImageStream, dict]:
    path = require(cfg["path"], "CelebA's img_align_celeba/ folder of JPEGs or img_align_celeba.zip",
                   f"Download 'Align&Cropped Images' (Img/img_align_celeba.zip) from {URL} into data/raw/ "
                   "(unzipping it is optional).")
    partition_file = require(cfg["partition_file"], "CelebA's list_eval_partition.txt (lines '000001.jpg 0'; "
                             "0 train, 1 validation, 2 test)", f"Download Eval/list_eval_partition.txt from {URL}.")
    parts = {s: cfg.get(f"{s}_partitions", default) for s, default in PARTITIONS.items()}
    if set(parts["train"]) & set(parts["test"]):
        raise DataError(f"train_partitions {parts['train']} and test_partitions {parts['test']} overlap")
    names = _split_names(partition_file, parts, cfg.get("max_images"))
    pre = Preprocess.from_config(cfg, crop=CROP, resolution=RESOLUTION)
    stream = _zip_stream if path.is_file() else _folder_stream
    source = {"path": str(path), "format": "zip" if path.is_file() else "folder", "partitions": parts,
              "partition_file": str(partition_file), "partition_sha256": file_sha256(partition_file)}
    if path.is_file():
        source["sha256"] = file_sha256(path)
    return stream(path, names["train"], pre), stream(path, names["test"], pre), {
        "source": source, "preprocessing": pre.manifest()}


def _split_names(partition_file: Path, parts: dict, cap: int | None) -> dict[str, list[str]]:
    """Image names of each split, in the partition file's order, at most ``cap`` each."""
    entries = []
    try:
        text = partition_file.read_text()
    except UnicodeDecodeError as exc:
        raise DataError(f"{partition_file}: not a text file ({exc}); expected lines '<image name> <0|1|2>' "
                        f"(Eval/list_eval_partition.txt from {URL})") from exc
    for i, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if fields and (len(fields) != 2 or fields[1] not in ("0", "1", "2")):
            raise DataError(f"{partition_file}:{i}: expected '<image name> <0|1|2>', got {line!r}")
        if fields:
            entries.append((fields[0], int(fields[1])))
    names = {s: [n for n, p in entries if p in ps][:cap] for s, ps in parts.items()}
    for s, ns in names.items():
        if not ns:
            raise DataError(f"{partition_file}: no images in partition(s) {parts[s]} for the {s} split")
    return names


def _require_listed(container: Path, names: list[str], present) -> None:
    missing = [n for n in names if n not in present]
    if missing:
        raise DataError(f"{container}: {len(missing)} image(s) named in the partition file are missing, "
                        f"e.g. {missing[:5]}")


def _folder_stream(folder: Path, names: list[str], pre: Preprocess) -> ImageStream:
    _require_listed(folder, names, {p.name for p in folder.iterdir()})
    return folder_stream(folder, names, pre)


def _zip_stream(path: Path, names: list[str], pre: Preprocess) -> ImageStream:
    """Members are matched to the partition file by file name (the zip holds img_align_celeba/<name>)."""
    try:
        with zipfile.ZipFile(path) as zf:
            members = {PurePosixPath(i.filename).name: i.filename for i in zf.infolist() if not i.is_dir()}
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"{path}: not a readable zip archive ({exc}); download it again from {URL}") from exc
    _require_listed(path, names, members)
    return ImageStream(len(names), _zip_items(path, names, members), lambda n: f"{path} (member {members[n]})", pre)


def _zip_items(path: Path, names: list[str], members: dict[str, str]):
    with zipfile.ZipFile(path) as zf:
        for name in names:
            try:
                data = zf.read(members[name])
            except (zipfile.BadZipFile, zlib.error, OSError) as exc:
                raise DataError(f"{path} (member {members[name]}): corrupt zip entry ({exc})") from exc
            yield name, data
