"""Sharded preprocessing and loading at NUS-WIDE size: images/s per core of decoding into shards,
images/s of a training loader reading random batches from them, and the peak RSS of each, beside the
single memory-mapped array (the default for small datasets) built from the same images in the same
invocation. Per core means per CPU-second the phase used (user + system, all its threads): on a
machine shared with other work, wall-clock images/s fall with the load, images per CPU-second much
less; both are printed, with the load average.

The manifest is synthetic but full size (269,648 rows, NUS-WIDE's count); its rows cycle through a
pool of small real JPEG files (random-texture images, several sizes), so decoding does the real
work while the disk holds only the pool. Each measured phase runs in a fresh subprocess, so its
peak RSS is its own.

    .venv/bin/python benchmarks/bench_shards.py [--images 269648] [--size 32] [--shard-size 4096]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

NUS_WIDE_IMAGES = 269_648

PHASE = r"""
import json, resource, sys, time
import numpy as np
phase, work, size, shard_size, batch, batches = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
paths = [line for line in open(work + "/paths.txt").read().split("\n") if line]
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
start, cpu_start = time.perf_counter(), cpu()
if phase == "write-shards":
    from labelspace.data.shards import write_shards
    write_shards(paths, size, work + "/shards", shard_size=shard_size, source_hash="bench", workers=1, progress=False)
elif phase == "write-array":
    from labelspace.data.preprocess import _decode_into
    from pathlib import Path
    _decode_into(Path(work + "/images.npy"), [Path(p) for p in paths], size, 1, Path(work))
else:
    from labelspace.data.shards import ShardedImages
    images = ShardedImages(work + "/shards") if phase == "load-shards" else np.load(work + "/images.npy", mmap_mode="r")
    rng = np.random.default_rng(0)
    order = rng.permutation(len(images))
    for i in range(batches):
        rows = np.sort(order[i * batch:(i + 1) * batch])  # a sampler's batch, sorted as a loader reads it
        x = np.ascontiguousarray(images[rows]).astype(np.float32) / 255.0
seconds, cpu_seconds = time.perf_counter() - start, cpu() - cpu_start
print(json.dumps({"seconds": seconds, "cpu_seconds": cpu_seconds,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def make_pool(folder: Path, n: int) -> list[Path]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    pool = []
    for i in range(n):
        w, h = int(rng.integers(64, 160)), int(rng.integers(64, 160))
        noise = rng.integers(0, 256, size=(h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
        image = Image.fromarray(noise).resize((w, h), Image.Resampling.BICUBIC)  # smooth texture, photo-like JPEG size
        path = folder / f"{i:05d}.jpg"
        image.save(path, quality=90)
        pool.append(path)
    return pool


def run_phase(phase: str, work: Path, args) -> dict:
    out = subprocess.run([sys.executable, "-c", PHASE, phase, str(work), str(args.size), str(args.shard_size),
                          str(args.batch), str(args.batches)], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        sys.exit(f"{phase} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=NUS_WIDE_IMAGES, help="manifest rows (default: NUS-WIDE's)")
    parser.add_argument("--pool", type=int, default=2000, help="distinct JPEG files the rows cycle through")
    parser.add_argument("--size", type=int, default=32, help="decoded side in pixels")
    parser.add_argument("--shard-size", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--batches", type=int, default=2000, help="loader batches timed")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-shards-") as tmp:
        work = Path(tmp)
        pool = make_pool(work / "pool", args.pool)
        (work / "paths.txt").write_text("\n".join(str(pool[i % len(pool)]) for i in range(args.images)) + "\n")
        results = {phase: run_phase(phase, work, args)
                   for phase in ("write-shards", "write-array", "load-shards", "load-array")}
        total_mb = args.images * args.size * args.size * 3 / 2**20
    n_loaded = args.batch * args.batches
    print(f"{args.images} images decoded to {args.size} px ({total_mb:.0f} MB of pixels), shards of "
          f"{args.shard_size}; 1 decoding thread; {os.cpu_count()} cores on this machine, load average "
          f"{os.getloadavg()[0]:.1f} at the end")
    for kind in ("shards", "array"):
        w, r = results[f"write-{kind}"], results[f"load-{kind}"]
        print(f"  {kind:<7} preprocess {args.images / w['cpu_seconds']:8.0f} images per CPU-second "
              f"({args.images / w['seconds']:6.0f}/s wall), peak RSS {w['peak_rss_mb']:6.0f} MB | loader "
              f"{n_loaded / r['seconds']:8.0f} images/s ({n_loaded / r['cpu_seconds']:8.0f} per CPU-second), "
              f"peak RSS {r['peak_rss_mb']:6.0f} MB")
    ws, wa = results["write-shards"]["seconds"], results["write-array"]["seconds"]
    ls, la = results["load-shards"]["seconds"], results["load-array"]["seconds"]
    print(f"ratio shards / single array: preprocess {wa / ws:.2f}x the speed, loader {la / ls:.2f}x the speed, "
          f"loader peak RSS {results['load-shards']['peak_rss_mb'] / results['load-array']['peak_rss_mb']:.2f}x")


if __name__ == "__main__":
    start = time.perf_counter()
    main()
    print(f"benchmark took {time.perf_counter() - start:.0f} s")
