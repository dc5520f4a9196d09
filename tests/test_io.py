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


def test_outputs_get_a_normal_file_mode(tmp_path):
    """Atomic writes go through mkstemp (mode 0600); the final file has the mode a plain open()
    would give it under the current umask, so collaborators on a shared cluster can read results."""
    import os

    from drl.io import write_text

    old = os.umask(0o022)
    try:
        write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644
