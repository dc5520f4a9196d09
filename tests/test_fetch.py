"""`drl fetch` against a real HTTP server on 127.0.0.1 serving files the tests make: a first fetch, a
rerun that downloads nothing, a checksum mismatch, a 404, a transfer cut mid-file, mirrors, an LMDB
zip unpacked into place, and the Snakemake path from fetch to prepare."""
import hashlib
import io
import os
import shutil
import subprocess
import sys
import threading
import zipfile
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch

from drl.cli import main
from drl.data.fetch import FetchError, fetch
from drl.data.prepare import prepare
from image_fixtures import cifar_batches, lsun_entries, write_cifar_tarball, write_lmdb

ROOT = Path(__file__).resolve().parents[1]


class Server:
    """Serves ``files`` (URL path -> bytes).  ``/cut/<path>`` announces the whole file but sends half
    and closes the connection; ``/flaky/<path>`` does that once, then serves the file.  ``hits``
    counts requests per path."""

    def __init__(self):
        self.files, self.hits = {}, Counter()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.hits[self.path] += 1
                path, cut = self.path, False
                for prefix in ("/cut", "/flaky"):
                    if path.startswith(prefix + "/"):
                        path = path[len(prefix):]
                        cut = prefix == "/cut" or server.hits[self.path] == 1
                data = server.files.get(path)
                if data is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[: len(data) // 2] if cut else data)
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


@pytest.fixture
def cifar(tmp_path, server):
    """A CIFAR-10-format tarball on the server, and its md5."""
    data = write_cifar_tarball(tmp_path / "src.tar.gz", cifar_batches(12)).read_bytes()
    server.files["/cifar-10-python.tar.gz"] = data
    return data, "md5:" + hashlib.md5(data).hexdigest()


def _entry(tmp_path, url, checksum, name="cifar-10-python.tar.gz", **kw):
    return {"path": str(tmp_path / "raw" / name), "urls": [url] if isinstance(url, str) else url,
            "checksum": checksum, **kw}


def _leftovers(tmp_path):
    return [p.name for p in (tmp_path / "raw").iterdir()] if (tmp_path / "raw").exists() else []


def test_first_fetch_then_a_rerun_that_downloads_nothing(tmp_path, server, cifar):
    data, md5 = cifar
    cfg = _entry(tmp_path, server.url + "/cifar-10-python.tar.gz", md5)
    assert "md5 verified" in fetch("c", cfg)
    assert Path(cfg["path"]).read_bytes() == data and _leftovers(tmp_path) == ["cifar-10-python.tar.gz"]
    assert "already present, md5 verified" in fetch("c", cfg)  # offline-safe: the server is not asked
    assert server.hits["/cifar-10-python.tar.gz"] == 1
    # and the fetched tarball is what prepare reads
    m = prepare({"source": "cifar10", "path": cfg["path"], "seed": 0}, tmp_path / "prepared")
    assert m["train"]["shape"][1:] == [32, 32, 3]


def test_checksum_mismatch_stops_with_both_checksums_and_leaves_no_file(tmp_path, server, cifar):
    data, _ = cifar
    wrong = "md5:" + "0" * 32
    cfg = _entry(tmp_path, server.url + "/cifar-10-python.tar.gz", wrong)
    with pytest.raises(FetchError) as exc:
        fetch("c", cfg, retries=0)
    msg = str(exc.value)
    assert server.url in msg and wrong in msg and hashlib.md5(data).hexdigest() in msg and "downloads.c" in msg
    assert _leftovers(tmp_path) == []


def test_a_present_file_with_another_checksum_is_refused_not_overwritten(tmp_path, server, cifar):
    _, md5 = cifar
    cfg = _entry(tmp_path, server.url + "/cifar-10-python.tar.gz", md5)
    Path(cfg["path"]).parent.mkdir(parents=True)
    Path(cfg["path"]).write_bytes(b"something else")
    with pytest.raises(FetchError, match="delete it to download it again"):
        fetch("c", cfg)
    assert Path(cfg["path"]).read_bytes() == b"something else" and not server.hits


def test_http_404_is_not_retried_and_names_the_url(tmp_path, server, cifar):
    _, md5 = cifar
    cfg = _entry(tmp_path, server.url + "/nowhere.tar.gz", md5)
    with pytest.raises(FetchError) as exc:
        fetch("c", cfg, retries=3)
    assert "HTTP 404" in str(exc.value) and server.url + "/nowhere.tar.gz" in str(exc.value)
    assert server.hits["/nowhere.tar.gz"] == 1 and _leftovers(tmp_path) == []


def test_a_transfer_cut_mid_file_is_retried_then_reported(tmp_path, server, cifar):
    _, md5 = cifar
    cfg = _entry(tmp_path, server.url + "/cut/cifar-10-python.tar.gz", md5)
    with pytest.raises(FetchError, match="after 2 attempts"):
        fetch("c", cfg, retries=1)
    assert server.hits["/cut/cifar-10-python.tar.gz"] == 2 and _leftovers(tmp_path) == []
    # a connection dropped once is survived by the retry
    cfg = _entry(tmp_path, server.url + "/flaky/cifar-10-python.tar.gz", md5)
    assert "md5 verified" in fetch("c", cfg, retries=1)
    assert server.hits["/flaky/cifar-10-python.tar.gz"] == 2


def test_mirrors_are_tried_in_order(tmp_path, server, cifar):
    _, md5 = cifar
    cfg = _entry(tmp_path, [server.url + "/gone.tar.gz", server.url + "/cifar-10-python.tar.gz"], md5)
    assert "from " + server.url + "/cifar-10-python.tar.gz" in fetch("c", cfg)


def test_weights_file_with_a_sha256_prefix(tmp_path, server):
    buf = io.BytesIO()
    torch.save({"w": torch.arange(4.0)}, buf)
    data = buf.getvalue()
    sha = hashlib.sha256(data).hexdigest()
    server.files["/weights.pth"] = data
    cfg = _entry(tmp_path, server.url + "/weights.pth", "sha256:" + sha[:8], name="weights.pth")
    assert "sha256 verified" in fetch("w", cfg)
    assert torch.load(cfg["path"], weights_only=True)["w"].sum() == 6
    Path(cfg["path"]).unlink()
    bad = _entry(tmp_path, server.url + "/weights.pth", "sha256:" + ("0" if sha[0] != "0" else "1") + sha[1:8],
                 name="weights.pth")
    with pytest.raises(FetchError, match="expected the prefix"):
        fetch("w", bad)
    assert _leftovers(tmp_path) == []


def test_lmdb_zip_is_unpacked_into_the_folder_prepare_reads(tmp_path, server):
    lmdb_dir = write_lmdb(tmp_path / "src" / "church_outdoor_val_lmdb", lsun_entries(6))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for f in sorted(lmdb_dir.iterdir()):
            zf.write(f, f"church_outdoor_val_lmdb/{f.name}")
    server.files["/church_outdoor_val_lmdb.zip"] = buf.getvalue()
    cfg = _entry(tmp_path, server.url + "/church_outdoor_val_lmdb.zip", None, name="church_outdoor_val_lmdb",
                 unpack="zip")
    msg = fetch("l", cfg)
    assert "no checksum pinned" in msg and "sha256:" + hashlib.sha256(buf.getvalue()).hexdigest() in msg
    assert sorted(p.name for p in Path(cfg["path"]).iterdir()) == sorted(p.name for p in lmdb_dir.iterdir())
    assert _leftovers(tmp_path) == ["church_outdoor_val_lmdb"]  # the archive is gone once unpacked
    assert "already present" in fetch("l", cfg) and server.hits["/church_outdoor_val_lmdb.zip"] == 1
    m = prepare({"source": "lsun", "path": cfg["path"], "test_path": cfg["path"], "resolution": 8, "seed": 0},
                tmp_path / "prepared")
    assert m["train"]["shape"] == [6, 8, 8, 3]


def test_cli_names_the_download_and_exits_2(tmp_path, server, cifar, monkeypatch, capsys):
    _, md5 = cifar
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(
        "datasets: {cifar10: {source: cifar10, path: raw/c.tar.gz, seed: 0}}\nruns: {}\n"
        f"downloads: {{cifar10_python: {{path: raw/c.tar.gz, urls: ['{server.url}/missing.tar.gz'], checksum: '{md5}'}}}}\n")
    assert main(["fetch", "--name", "cifar10_python", "--retries", "0"]) == 2
    err = capsys.readouterr().err
    assert "raw/c.tar.gz (downloads.cifar10_python)" in err and "HTTP 404" in err
    assert main(["fetch", "--name", "nope"]) == 2 and "not defined under downloads" in capsys.readouterr().err


@pytest.mark.e2e
def test_snakemake_fetches_then_prepares(tmp_path, server, cifar):
    """The workflow's path: no raw file in place, so Snakemake runs the fetch job, then prepare; a
    second run has nothing to do and asks the server for nothing."""
    data, md5 = cifar
    for name in ("drl", "workflow"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "Snakefile", tmp_path / "Snakefile")
    (tmp_path / "params.yaml").write_text(
        "datasets: {cifar10: {source: cifar10, path: data/raw/cifar-10-python.tar.gz, seed: 0}}\nruns: {}\n"
        "downloads:\n  cifar10_python: {path: data/raw/cifar-10-python.tar.gz, "
        f"urls: ['{server.url}/cifar-10-python.tar.gz'], checksum: '{md5}'}}\n")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    target = "data/prepared/cifar10/manifest.json"
    p = subprocess.run(["snakemake", "--cores", "1", target], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    log = p.stdout + p.stderr
    assert "rule fetch:" in log and "rule missing_input" not in log, log
    assert (tmp_path / "data/raw/cifar-10-python.tar.gz").read_bytes() == data
    assert np.load(tmp_path / "data/prepared/cifar10/train.npy").shape[1:] == (32, 32, 3)
    again = subprocess.run(["snakemake", "--cores", "1", target], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert "Nothing to be done" in again.stdout + again.stderr and server.hits["/cifar-10-python.tar.gz"] == 1
