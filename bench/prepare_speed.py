"""Images/s of `prepare` (decode, centre crop, antialiased resize) with 1, 2, ... worker processes on a
folder of JPEGs made here, and whether the arrays are the same bytes for every count.

    python -m bench.prepare_speed                      # 10,000 64x64 JPEGs -> 32x32, workers 1 and 2
    python -m bench.prepare_speed --images 2000 --workers 1 2 4 --size 256"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from drl.provenance import cpu_flags, cpu_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=10_000)
    p.add_argument("--size", type=int, default=64, help="side of the square JPEGs")
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = p.parse_args()
    from drl.data.prepare import prepare  # not at the top: each worker process imports this script
    with tempfile.TemporaryDirectory() as tmp:
        rng, ramp, raw = np.random.default_rng(0), np.linspace(0, 1, args.size)[:, None, None], Path(tmp) / "raw"
        for i in range(args.images):   # smooth gradients plus noise: JPEGs of a few KB, like photographs; 1,000 a folder
            base = rng.uniform(0, 255, 3) * ramp + rng.uniform(0, 255, 3) * ramp.transpose(1, 0, 2)
            (raw / f"{i // 1000:02d}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.clip(base / 2 + rng.normal(0, 12, (args.size, args.size, 3)), 0, 255).astype(np.uint8)).save(
                raw / f"{i // 1000:02d}" / f"{i:06d}.jpg", quality=90)
        cfg = {"source": "image_folder", "path": f"{tmp}/raw", "resolution": args.resolution, "seed": 0}
        print(f"{cpu_model()}, AVX-512 {'yes' if 'avx512f' in cpu_flags() else 'no'}; {len(os.sched_getaffinity(0))} "
              f"CPUs available; {args.images} {args.size}x{args.size} JPEGs -> {args.resolution}x{args.resolution}")
        hashes = set()
        for n in args.workers:
            t = time.perf_counter()
            hashes.add(str(prepare(cfg, f"{tmp}/out{n}", workers=n)["sha256"]))
            print(f"workers {n}: {args.images / (time.perf_counter() - t):8.0f} images/s")
        print("same bytes for every worker count:", len(hashes) == 1)


if __name__ == "__main__":
    main()
