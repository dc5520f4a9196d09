"""Stage ``fetch``: download one raw dataset or weights file named under ``downloads`` in params.yaml.

pooch streams the file to a temporary name with a progress bar, retries on a dropped connection or a
checksum mismatch, and renames it only once its checksum matched.  Around it this module adds what a
pipeline stage needs: mirrors tried in order, archives unpacked before anything appears under the
final name, a file already in place used as is (offline), and errors that name the URL, both
checksums and the fix.  A checksum is ``md5:<hex>`` or ``sha256:<hex>``; a shorter sha256 is a prefix
(torch.hub's convention of naming a weights file after the first hex digits of its sha256).

Why pooch and not ``dvc import-url``: an import is a .dvc file of its own, outside the stage list both
engines share, so Snakemake would not see it; it records whatever hash it downloaded rather than
checking a published one; and it caches the file, doubling the disk a 43 GB LSUN archive takes."""
from __future__ import annotations

import os
import re
import shutil
import zipfile
from pathlib import Path

from drl.data.points import DataError
from drl.data.raw import file_hash

CHECKSUM = re.compile(r"^(md5|sha256):([0-9a-f]+)$")
FULL_LENGTH = {"md5": 32, "sha256": 64}
RETRIES = 3


class FetchError(DataError):
    """A download failed, or a file does not have its pinned checksum."""


def _parse(checksum: str | None) -> tuple[str, str] | None:
    if checksum is None:
        return None
    m = CHECKSUM.match(checksum)
    if not m or len(m.group(2)) > FULL_LENGTH[m.group(1)] or len(m.group(2)) < 8:
        raise FetchError(f"checksum {checksum!r}: expected 'md5:<32 hex>' or 'sha256:<8 to 64 hex>'")
    return m.group(1), m.group(2)


def _matches(path: Path, checksum: tuple[str, str]) -> tuple[bool, str]:
    actual = file_hash(path, checksum[0])
    return actual.startswith(checksum[1]), f"{checksum[0]}:{actual}"


def fetch(name: str, cfg: dict, retries: int = RETRIES, timeout: float = 60) -> str:
    """Put ``cfg['path']`` in place from ``cfg['urls']``; returns what was done, for the log."""
    target, checksum, key = Path(cfg["path"]), _parse(cfg.get("checksum")), f"downloads.{name}"
    if target.exists():
        return _present(target, checksum, cfg, key)
    errors, tmp = [], target.parent / f".{target.name}.fetch"
    for url in cfg["urls"]:
        shutil.rmtree(tmp, ignore_errors=True)  # a killed earlier attempt leaves only this behind
        try:
            archive = _download(url, tmp, checksum, retries, timeout)
            how = (f"{checksum[0]} verified" if checksum else f"no checksum pinned; to pin it, set {key}.checksum: "
                   f"sha256:{file_hash(archive, 'sha256')}")
            _install(archive, target, cfg.get("unpack"))
            return f"fetched {target} from {url}, {how}"
        except FetchError as exc:
            errors.append(f"{url}: {exc}")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    raise FetchError(f"{target} ({key}): could not be fetched; nothing was written under that name.\n  "
                     + "\n  ".join(errors) + f"\nFix: check the network (or the URL and checksum under {key} "
                     f"in params.yaml), or download the file yourself and put it at {target}.")


def _present(target: Path, checksum: tuple[str, str] | None, cfg: dict, key: str) -> str:
    """A file already in place is used as is when its checksum matches; an unpacked archive is a
    folder, whose archive checksum can no longer be checked (prepare hashes every image it reads)."""
    if cfg.get("unpack") or checksum is None:
        return f"{target} already present; used as is"
    ok, actual = _matches(target, checksum)
    if not ok:
        raise FetchError(f"{target} is present but its checksum is {actual}, not {':'.join(checksum)} ({key}.checksum). "
                         f"Fix: delete it to download it again, or correct {key}.checksum if you meant this file.")
    return f"{target} already present, {checksum[0]} verified"


def _download(url: str, tmp: Path, checksum: tuple[str, str] | None, retries: int, timeout: float) -> Path:
    """The file at ``url`` under ``tmp``, its checksum verified (pooch checks a full one itself)."""
    import pooch
    import requests

    fname = url.rstrip("/").rsplit("/", 1)[-1] or "download"
    full = checksum and len(checksum[1]) == FULL_LENGTH[checksum[0]]
    store = pooch.create(path=tmp, base_url="", registry={fname: ":".join(checksum) if full else None},
                         urls={fname: url}, retry_if_failed=retries)
    try:
        path = Path(store.fetch(fname, downloader=_Downloader(timeout), progressbar=True))
    except _ClientError as exc:
        raise FetchError(str(exc)) from None
    except requests.exceptions.RequestException as exc:
        raise FetchError(f"download failed after {retries + 1} attempts ({type(exc).__name__}: {exc})") from None
    except ValueError as exc:  # pooch: the downloaded file's hash differs (temporary file already deleted)
        got = re.search(r"got ([0-9a-f]+)", str(exc))
        raise FetchError(f"the downloaded file's checksum is {checksum[0]}:{got.group(1) if got else '?'}, "
                         f"expected {':'.join(checksum)}; it was deleted") from None
    if checksum and not full:
        ok, actual = _matches(path, checksum)
        if not ok:
            raise FetchError(f"the downloaded file's checksum is {actual}, expected the prefix {':'.join(checksum)}; "
                             "it was deleted")
    return path


class _ClientError(Exception):
    """An HTTP 4xx answer: retrying cannot help, so it is not a requests exception (which pooch retries)."""


class _Downloader:
    def __init__(self, timeout: float):
        self.timeout = timeout

    def __call__(self, url, output_file, store, check_only=False):
        import pooch
        import requests

        try:
            return pooch.HTTPDownloader(progressbar=True, timeout=self.timeout)(url, output_file, store, check_only)
        except requests.exceptions.HTTPError as exc:
            if exc.response is not None and 400 <= exc.response.status_code < 500:
                raise _ClientError(f"HTTP {exc.response.status_code} {exc.response.reason}") from None
            raise


def _install(archive: Path, target: Path, unpack: str | None) -> None:
    """Move the verified download (or, for ``unpack: zip``, its contents) to ``target`` by one rename."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if unpack is None:
        os.replace(archive, target)
        return
    out = archive.parent / "unpacked"
    try:
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(out)
    except (zipfile.BadZipFile, OSError) as exc:
        raise FetchError(f"cannot be unpacked as a zip archive ({exc})") from None
    archive.unlink()  # the archive's checksum was verified; keeping it would double the disk used
    entries = list(out.iterdir())
    # an LSUN zip holds one folder (church_outdoor_train_lmdb/) whose contents are the dataset
    os.replace(entries[0] if len(entries) == 1 and entries[0].is_dir() else out, target)
