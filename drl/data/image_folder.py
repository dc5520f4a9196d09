"""Any folder of PNG/JPEG/WebP images (recursive: nested class folders are fine), preprocessed as the
paper's LSUN images (Appendix B): centre square crop (``crop`` pixels, default the shorter side),
antialiased resize to ``resolution``.  With train/ and test/ subfolders those are the splits;
otherwise a seeded split by ``test_fraction``.  Images are in sorted relative-path order."""
from __future__ import annotations

from pathlib import Path

from drl.data.images import ImageStream, Preprocess, folder_stream, list_images, require_images, split_indices
from drl.data.points import DataError
from drl.data.raw import require


def load(cfg: dict) -> tuple[ImageStream, ImageStream, dict]:
    root = require(cfg["path"], "a folder of .png/.jpg/.jpeg/.webp images (optionally with train/ and test/)",
                   "Put your images there.")
    pre = Preprocess.from_config(cfg)
    splits, how = _split(root, cfg)
    cap = cfg.get("max_images")
    train, test = (folder_stream(folder, rels[:cap], pre) for folder, rels in splits)
    return train, test, {"source": {"path": str(root), "format": "folder", "split": how,
                                    "images": {"train": len(splits[0][1]), "test": len(splits[1][1])}},
                         "preprocessing": pre.manifest()}


def _split(root: Path, cfg: dict) -> tuple[list[tuple[Path, list[str]]], dict]:
    """[(folder, relative paths)] for train and test, and how they were split."""
    folders = [root / "train", root / "test"]
    if folders[0].is_dir() != folders[1].is_dir():
        raise DataError(f"{root}: has only one of train/ and test/; give both, or neither for a seeded split")
    if folders[0].is_dir():
        return [(f, require_images(f, list_images(f))) for f in folders], {"by": "train/ and test/ folders"}
    rels = require_images(root, list_images(root))
    fraction = cfg.get("test_fraction", 0.1)
    if len(rels) < 2:
        raise DataError(f"{root}: need at least 2 images to split into train and test, found {len(rels)}")
    train, test = split_indices(len(rels), fraction, cfg["seed"])
    return [(root, [rels[i] for i in train]), (root, [rels[i] for i in test])], {
        "by": "seeded split", "test_fraction": fraction, "seed": cfg["seed"]}
