"""Images/s of `prepare` (decode, centre crop, antialiased resize) with 1, 2, ... worker processes on a
folder of JPEGs made here, and whether the arrays are the same bytes for every count.

    python -m bench.prepare_speed                      # 10,000 64x64 JPEGs -> 32x32, workers 1 and 2
    python -m bench.prepare_speed --images 2000 --workers 1 2 4 --size 256"""
from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def make_folder(root: Path, n: int, size: int) -> None:
    """Smooth gradients plus noise: JPEG sizes (a few KB) like photographs at this size."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 1, size)[:, None, None]
    for i in range(n):
        base = rng.uniform(0, 255, 3) * ramp + rng.uniform(0, 255, 3) * ramp.transpose(1, 0, 2)
        pixels = np.clip(base / 2 + rng.normal(0, 12, (size, size, 3)), 0, 255).astype(np.uint8)
        folder = root / f"{i // 1000:02d}"  # 1,000 a folder, as large datasets are stored
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / f"{i:06d}.jpg", quality=90)


def cpu() -> str:
    lines = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
    model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("Model name")), "unknown CPU")
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return f"{model}, AVX-512 {'yes' if ' avx512f' in flags else 'no'}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=10_000)
    p.add_argument("--size", type=int, default=64, help="side of the square JPEGs")
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = p.parse_args()
    from drl.data.prepare import prepare  # not at the top: each worker process imports this script
    with tempfile.TemporaryDirectory() as tmp:
        make_folder(Path(tmp) / "raw", args.images, args.size)
        cfg = {"source": "image_folder", "path": f"{tmp}/raw", "resolution": args.resolution, "seed": 0}
        print(f"{cpu()}; {len(os.sched_getaffinity(0))} CPUs available; {args.images} "
              f"{args.size}x{args.size} JPEGs -> {args.resolution}x{args.resolution}")
        hashes = set()
        for n in args.workers:
            t = time.perf_counter()
            hashes.add(str(prepare(cfg, f"{tmp}/out{n}", workers=n)["sha256"]))
            print(f"workers {n}: {args.images / (time.perf_counter() - t):8.0f} images/s")
        print("same bytes for every worker count:", len(hashes) == 1)


if __name__ == "__main__":
    main()
