"""Class labels of image folders (drl/data/image_folder.py): class subfolders give labels in sorted
class-name order, aligned with the prepared images; any other layout gives none, with the reason in
the manifest, which `drl extractor` reports.  Each class is one constant colour, so the prepared
pixels show which folder an image came from."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import yaml

from drl.cli import main
from drl.data.prepare import prepare
from image_fixtures import write_images

COLOURS = {"dog": (200, 0, 0), "cat": (0, 200, 0), "bird": (0, 0, 200), "ant": (90, 90, 90)}


def square(colour) -> np.ndarray:
    return np.broadcast_to(np.asarray(colour, np.uint8), (8, 8, 3)).copy()


def folder(root, counts: dict[str, int], prefix: str = "") -> dict:
    """``counts[class]`` images of the class's colour under ``root/prefix/class/``."""
    write_images(root, {f"{prefix}{c}/{i:02d}.png": square(COLOURS[c]) for c, n in counts.items() for i in range(n)})
    return {"source": "image_folder", "path": str(root), "resolution": 8, "seed": 0}


def prepared(out):
    m = json.loads((out / "manifest.json").read_text())
    labels = np.load(out / "labels.npz")
    return m, {s: (np.load(out / f"{s}.npy"), labels[s]) for s in ("train", "test")}


def assert_labels_match_colours(splits, classes):
    for images, labels in splits.values():
        assert len(labels) == len(images) and labels.dtype == np.int64
        got = [tuple(int(v) for v in img[0, 0]) for img in images]
        assert got == [COLOURS[classes[y]] for y in labels]
        assert all((img == img[0, 0]).all() for img in images)


def test_seeded_split_labels_follow_the_split(tmp_path):
    cfg = {**folder(tmp_path / "mine", {"dog": 7, "cat": 5, "bird": 6}), "test_fraction": 0.3}
    m = prepare(cfg, tmp_path / "out")
    m, splits = prepared(tmp_path / "out")
    assert m["classes"] == ["bird", "cat", "dog"] and m["source"]["labels"].startswith("class folders")
    assert_labels_match_colours(splits, m["classes"])
    assert m["labels"] == {"train": 13, "test": 5}
    assert len(set(splits["test"][1])) > 1          # the split mixes classes: labels were indexed with it
    assert sorted(np.concatenate([y for _, y in splits.values()]).tolist()) == [0] * 6 + [1] * 5 + [2] * 7


def test_train_test_folders_share_the_train_mapping(tmp_path):
    cfg = folder(tmp_path / "mine", {"dog": 3, "cat": 2, "bird": 2}, "train/")
    folder(tmp_path / "mine", {"dog": 2, "bird": 1}, "test/")        # a class missing from test is fine
    prepare(cfg, tmp_path / "out")
    m, splits = prepared(tmp_path / "out")
    assert m["classes"] == ["bird", "cat", "dog"]
    assert splits["test"][1].tolist() == [0, 2, 2]   # dog is 2 in both splits, not 1 as test/ alone would give
    assert_labels_match_colours(splits, m["classes"])


def test_max_images_caps_labels_alike_and_keeps_the_mapping(tmp_path):
    cfg = {**folder(tmp_path / "mine", {"dog": 4, "cat": 4, "bird": 4}, "train/"), "max_images": 5}
    folder(tmp_path / "mine", {"dog": 2, "cat": 2}, "test/")
    prepare(cfg, tmp_path / "out")
    m, splits = prepared(tmp_path / "out")
    assert m["classes"] == ["bird", "cat", "dog"] and m["labels"] == {"train": 5, "test": 4}
    assert splits["train"][1].tolist() == [0, 0, 0, 0, 1] and splits["test"][1].tolist() == [1, 1, 2, 2]
    assert_labels_match_colours(splits, m["classes"])


def test_a_skipped_corrupt_image_takes_its_label_with_it(tmp_path):
    cfg = {**folder(tmp_path / "mine", {"dog": 3, "cat": 3, "bird": 3}, "train/"), "skip_corrupt": True}
    folder(tmp_path / "mine", {"dog": 1, "cat": 1}, "test/")
    (tmp_path / "mine/train/cat/01.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    prepare(cfg, tmp_path / "out")
    m, splits = prepared(tmp_path / "out")
    assert m["labels"] == {"train": 8, "test": 2} and splits["train"][1].tolist() == [0, 0, 0, 1, 1, 2, 2, 2]
    assert_labels_match_colours(splits, m["classes"])


@pytest.mark.parametrize("files, reason", [
    ({"a.png": "dog", "b.png": "cat"}, r"mine/[ab]\.png is not exactly one folder below"),           # flat
    ({"dog/a.png": "dog", "b.png": "cat"}, r"mine/b\.png is not exactly one folder below"),         # beside classes
    ({"dog/a.png": "dog", "cat/x/b.png": "cat"}, r"mine/cat/x/b\.png is not exactly one folder"),   # nested
    ({"train/dog/a.png": "dog", "train/cat/b.png": "cat", "test/c.png": "cat"}, r"test/c\.png is not"),
    ({"train/dog/a.png": "dog", "test/dog/b.png": "dog", "test/ant/c.png": "ant"}, r"lacks: \['ant'\]"),
])
def test_other_layouts_prepare_unlabelled_and_say_why(tmp_path, files, reason):
    root = write_images(tmp_path / "mine", {rel: square(COLOURS[c]) for rel, c in files.items()})
    m = prepare({"source": "image_folder", "path": str(root), "resolution": 8, "seed": 0, "test_fraction": 0.5},
                tmp_path / "out")
    assert m["classes"] is None and m["labels"] == {"train": 0, "test": 0}
    assert m["source"]["labels"].startswith("none: ") and re.search(reason, m["source"]["labels"])
    assert all(len(v) == 0 for v in np.load(tmp_path / "out" / "labels.npz").values())


def _params(tmp_path, dataset: dict) -> None:
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({
        "datasets": {"mine": dataset}, "runs": {},
        "extractors": {"mine_classifier": {"kind": "classifier", "dataset": "mine", "weights": "clf.pt",
                                           "epochs": 1, "width": 4}}}))


def test_extractor_refuses_unlabelled_and_one_class_folders_with_the_reason(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    flat = write_images(tmp_path / "flat", {f"{i}.png": square(COLOURS[c]) for i, c in enumerate(COLOURS)})
    _params(tmp_path, {"source": "image_folder", "path": str(flat), "resolution": 8, "seed": 0})
    assert main(["prepare", "--dataset", "mine"]) == 0
    assert main(["extractor", "--extractor", "mine_classifier"]) == 2
    err = capsys.readouterr().err
    assert "has no class labels (none: " in err and ".png is not exactly one folder below" in err
    _params(tmp_path, folder(tmp_path / "one", {"dog": 4}))
    assert main(["prepare", "--dataset", "mine"]) == 0 and "1 classes" in capsys.readouterr().out
    assert main(["extractor", "--extractor", "mine_classifier"]) == 2
    assert "at least 2" in capsys.readouterr().err and not (tmp_path / "clf.pt").exists()
    # what the workflow says when the weights are missing: how to make them
    assert main(["missing-input", "--path", "clf.pt"]) == 2
    assert "`drl extractor --extractor mine_classifier`" in capsys.readouterr().err
