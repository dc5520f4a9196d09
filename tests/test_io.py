"""drl/io.py: atomic writes, and checkpoints that are equal byte for byte when their content is."""
import hashlib

import torch

from drl.io import torch_save


def test_equal_checkpoints_are_equal_files(tmp_path):
    obj = {"w": torch.arange(6.0).reshape(2, 3), "info": {"epochs": 1}}
    torch_save(tmp_path / "a.pt", obj)
    torch_save(tmp_path / "b.pt", obj)
    digest = [hashlib.sha256((tmp_path / n).read_bytes()).hexdigest() for n in ("a.pt", "b.pt")]
    assert digest[0] == digest[1]
    assert torch.equal(torch.load(tmp_path / "a.pt", weights_only=True)["w"], obj["w"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt", "b.pt"]  # no temp files left
