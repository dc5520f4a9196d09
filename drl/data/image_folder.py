"""Any folder of PNG/JPEG/WebP images (recursive), preprocessed as the paper's LSUN images (Appendix B):
centre square crop (``crop`` pixels, default the shorter side), antialiased resize to ``resolution``.
With train/ and test/ subfolders those are the splits; otherwise a seeded split by ``test_fraction``.
Images are in sorted relative-path order; ``max_images`` keeps the first ones of each split.

Class labels (torchvision ImageFolder layout).  A split "has classes" when every one of its images is
exactly one folder below the split's root (``root/<class>/<img>``, or ``root/train/<class>/<img>``
and ``root/test/<class>/<img>``).  Labels are then the indices of the class names in sorted order
(torchvision's ``class_to_idx``), the names recorded in the manifest as ``classes``.  The mapping is
made from all images, before ``max_images``, so a cap never renumbers classes (but, in path order,
it keeps the first classes).  With train/ and test/ both splits must have classes, and test/ only
classes that train/ has: a test class the model never saw is more likely a misnamed folder than
intended, and a union would silently give it a label that no classifier is trained for.

Otherwise the dataset is unlabelled, as any folder without classes, and the manifest's
``source.labels`` says why (e.g. the first image that is not one folder deep).  This is not an error:
labels are only needed to train a classifier extractor, and a generative model trains on any folder
tree (images beside class folders, sharded or hashed subfolders), so ``drl extractor`` is where a
missing label is reported, with that reason.  The rule cannot tell classes from shards one level deep
(e.g. FFHQ's 00000/ .. 69000/); such labels are recorded but harmless unless a classifier uses them."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from drl.data.images import ImageStream, Preprocess, folder_stream, list_images, require_images, split_indices
from drl.data.points import DataError
from drl.data.raw import require

CLASS_LAYOUT = "<split root>/<class>/<image>"


def load(cfg: dict) -> tuple[ImageStream, ImageStream, dict]:
    root = require(cfg["path"], "a folder of .png/.jpg/.jpeg/.webp images (optionally with train/ and test/)",
                   "Put your images there.")
    pre = Preprocess.from_config(cfg)
    splits, how = _split(root, cfg)
    cap = cfg.get("max_images")
    capped = [(folder, rels[:cap]) for folder, rels in splits]
    classes, why = _classes(splits)
    facts = {"source": {"path": str(root), "format": "folder", "split": how,
                        "images": {"train": len(splits[0][1]), "test": len(splits[1][1])},
                        "labels": f"class folders: {CLASS_LAYOUT}, classes in sorted name order" if classes else
                        f"none: {why}"},
             "classes": classes, "preprocessing": pre.manifest()}
    if classes:
        index = {name: i for i, name in enumerate(classes)}
        facts["labels"] = {s: np.array([index[r.split("/")[0]] for r in rels], dtype=np.int64)
                           for s, (_, rels) in zip(("train", "test"), capped)}
    train, test = (folder_stream(folder, rels, pre) for folder, rels in capped)
    return train, test, facts


def _classes(splits: list[tuple[Path, list[str]]]) -> tuple[list[str] | None, str]:
    """The sorted class names of the splits' images, or None and the reason they have none.  In a
    seeded split a small class may fall wholly into test: only separate test/ classes must be in train/."""
    for folder, rels in splits:
        stray = next((r for r in rels if r.count("/") != 1), None)
        if stray is not None:
            return None, f"{folder / stray} is not exactly one folder below {folder} ({CLASS_LAYOUT})"
    train, test = ({r.split("/")[0] for r in rels} for _, rels in splits)
    if splits[0][0] != splits[1][0] and test - train:
        return None, f"{splits[1][0]} has classes that {splits[0][0]} lacks: {sorted(test - train)}"
    return sorted(train | test), ""


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
