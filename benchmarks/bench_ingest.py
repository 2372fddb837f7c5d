"""Parse full-size NUS-WIDE metadata (269,648 images x 81 concepts x 2 splits) with
labelspace.data.nuswide and with a plain pandas read of the same files; print both times and the ratio.

The metadata is generated in a temporary folder like the release: CRLF lines, backslash paths,
one stray value in Labels_lake_Train.txt. No images are written, so the parse runs with image
verification off (existence is still checked: every image counts as missing).

    .venv/bin/python benchmarks/bench_ingest.py [--scale 1.0]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from _timing import best_of  # benchmarks/_timing.py (this folder is on sys.path when run as a script)

from labelspace.data.nuswide import read_nuswide_layout

N_TRAIN, N_TEST = 161_789, 107_859  # the release's split of 269,648 images
CONCEPTS = (
    "airport animal beach bear birds boats book bridge buildings cars castle cat cityscape clouds computer "
    "coral cow dancing dog earthquake elk fire fish flags flowers food fox frost garden glacier grass harbor "
    "horses house lake leaf map military moon mountain nighttime ocean person plane plants police protest "
    "railroad rainbow reflection road rocks running sand sign sky snow soccer sports statue street sun sunset surf swimmers "
    "tattoo temple tiger tower town toy train tree valley vehicle water waterfall wedding whales window zebra"
).split()


def write_metadata(root: Path, n_train: int, n_test: int) -> list[Path]:
    """Write the metadata files; returns every file a reader has to parse."""
    rng = np.random.default_rng(0)
    (root / "ConceptsList").mkdir(parents=True)
    (root / "ImageList").mkdir()
    labels_dir = root / "Groundtruth" / "TrainTestLabels"
    labels_dir.mkdir(parents=True)
    (root / "ConceptsList" / "Concepts81.txt").write_bytes("".join(c + "\r\n" for c in CONCEPTS).encode())
    files = []
    serial = 0
    for suffix, n in (("Train", n_train), ("Test", n_test)):
        folders = rng.choice(CONCEPTS, size=n)
        names = [f"{f}\\{serial + i:04d}_{2_000_000_000 + serial + i}.jpg" for i, f in enumerate(folders)]
        serial += n
        list_path = root / "ImageList" / f"{suffix}Imagelist.txt"
        list_path.write_bytes(("\r\n".join(names) + "\r\n").encode())
        files.append(list_path)
        for concept in CONCEPTS:
            values = (rng.random(n) < 0.03).astype(np.uint8) + ord("0")
            lines = np.stack([values, np.full(n, ord("\r")), np.full(n, ord("\n"))], axis=1).astype(np.uint8)
            if concept == "lake" and suffix == "Train":
                lines[1234, 0] = ord("2")  # the release's stray value
            path = labels_dir / f"Labels_{concept}_{suffix}.txt"
            path.write_bytes(lines.tobytes())
            files.append(path)
    return files


def pandas_read(files: list[Path]) -> int:
    """The baseline: every list and label file read with pd.read_csv, nothing else."""
    rows = 0
    for path in files:
        rows += len(pd.read_csv(path, header=None, dtype=str, keep_default_na=False))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the release's size (default 1)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    n_train, n_test = int(N_TRAIN * args.scale), int(N_TEST * args.scale)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        files = write_metadata(root, n_train, n_test)
        manifest, report = read_nuswide_layout(root, verify_images=False)  # warm the page cache, check
        assert report["listed"] == n_train + n_test and report["bad_label_values"] == 1, report
        ours = best_of(lambda: read_nuswide_layout(root, verify_images=False), args.repeats)
        baseline = best_of(lambda: pandas_read(files), args.repeats)
    print(f"NUS-WIDE metadata: {n_train + n_test:,} images x {len(CONCEPTS)} concepts, {len(files)} files")
    print(f"read_nuswide_layout (verify off): {ours:.2f} s")
    print(f"plain pandas read_csv of the same files: {baseline:.2f} s")
    print(f"ratio (labelspace / pandas): {ours / baseline:.2f}")


if __name__ == "__main__":
    main()
