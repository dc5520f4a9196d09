"""Atomic output helpers: write to a unique temp file in the target folder, then rename, so a
killed job never leaves a half-written file under its final name."""
from __future__ import annotations

import errno
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

from drl.data.points import DataError


# Errors that can only come from writing.  The body of ``atomic_path`` may also read (prepare streams
# raw images into the temp file), so other OSErrors, e.g. PIL's for an undecodable image, pass as they are.
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temp path beside ``path``; on success rename it onto ``path``, else remove it.  A full
    disk (or quota, or read-only file system) is reported naming ``path``, which is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file a normal file's mode
        os.replace(tmp, path)
    except OSError as exc:
        if exc.errno not in WRITE_ERRNOS:
            raise
        # a write error names no file, or only the temp file: say which output failed, and that its
        # previous version (e.g. the last good checkpoint) is intact
        raise OSError(exc.errno, f"could not write {path}: {exc.strerror}; "
                                 f"{'its previous version is intact' if path.exists() else 'nothing was written'}"
                      ) from exc
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class Busy(RuntimeError):
    """Another process is working in an output folder (see ``exclusive``)."""


@contextmanager
def exclusive(folder: str | os.PathLike, what: str):
    """Hold an exclusive lock on ``folder`` (``folder/.lock``, flock) while ``what`` runs there; a
    second process asking for it gets ``Busy`` at once, naming the holder.  The kernel drops the
    lock when the holder dies, even by SIGKILL, so a killed job never leaves it behind.  This keeps
    two invocations of a stage with mutable state (training's state.pt) apart even where the
    workflow engine's own lock does not (e.g. Snakemake after another invocation failed)."""
    import fcntl
    import socket

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fh = open(folder / ".lock", "a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        holder = fh.read().strip() or "another process"
        fh.close()
        raise Busy(f"{folder}: {what} is already running there ({holder}); wait for it to finish, or stop it, "
                   "then rerun") from None
    fh.seek(0)
    fh.truncate()
    fh.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    fh.flush()
    try:
        yield
    finally:
        fh.close()  # releases the lock


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + "\n")


def write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def torch_save(path, obj) -> None:
    """torch.save through a buffer: saved to a file, the zip archive would be named after the random
    temp file, and equal checkpoints would differ byte for byte (their sha256 is recorded)."""
    import io

    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getbuffer())


class CheckpointError(DataError):
    """A checkpoint holds objects other than tensors and plain data, and was not loaded."""


def load_checkpoint(path, map_location="cpu"):
    """Load a checkpoint (model.pt, state.pt, a classifier) as data only.  Checkpoints travel through
    DVC remotes, and a full unpickle of one can run any code it names; torch's weights-only unpickler
    admits tensors, numbers, strings and containers of them, which is all this project saves."""
    import pickle
    import re

    import torch

    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        # name the refused object; torch's own message suggests loading without weights_only
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        raise CheckpointError(
            f"{path}: refused to load: it contains objects other than tensors, numbers and strings"
            f"{f' ({found[1]})' if found else ''}, and loading them could run code. Delete it and retrain, "
            f"or pull it again from a trusted remote") from exc


def np_save(path, array) -> None:
    import numpy as np

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, array)


def np_savez(path, arrays: dict) -> None:
    import numpy as np

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)


def savefig(path, fig) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=Path(path).suffix.lstrip(".") or "png", dpi=110, bbox_inches="tight")


def _jsonable(obj):
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
