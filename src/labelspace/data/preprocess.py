"""Decode a manifest's images once into one memory-mapped uint8 array at the training resolution,
so that training never re-decodes JPEGs every epoch (NUS-WIDE: 269k images).

`out_dir/images.npy` is (N, S, S, 3) uint8 RGB in manifest row order; `out_dir/meta.json`, written
last, records what it was built from (manifest hash, image size, N, data version) and marks it
complete. Each image is resized as a whole to S x S (no crop, no padding; aspect ratio is not kept)
with bilinear filtering by `decode_resized`, the one function to use on new images at serving time.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

IMAGES_FILE = "images.npy"
META_FILE = "meta.json"
RESIZE = "whole image, bilinear, to image_size x image_size RGB (aspect ratio not kept)"


def decode_resized(path: str | os.PathLike, image_size: int) -> np.ndarray:
    """(image_size, image_size, 3) uint8 RGB of the image file at `path`."""
    from PIL import Image

    with Image.open(path) as im:
        rgb = im.convert("RGB")
    if rgb.size != (image_size, image_size):
        rgb = rgb.resize((image_size, image_size), Image.Resampling.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8)


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_meta(out_dir: Path) -> dict | None:
    try:
        return json.loads((out_dir / META_FILE).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _decode_into(npy_path: Path, paths: list[Path], image_size: int, workers: int | None, source: Path) -> None:
    """Decode every image into a new .npy file, in order, with a thread pool (PIL frees the GIL)."""
    from labelspace.progress import progress

    images = np.lib.format.open_memmap(npy_path, mode="w+", dtype=np.uint8,
                                       shape=(len(paths), image_size, image_size, 3))

    def fill(i: int) -> None:
        try:
            images[i] = decode_resized(paths[i], image_size)
        except Exception as e:
            raise RuntimeError(f"cannot decode {paths[i]}, listed in {source}: {e}; "
                               "run `labelspace ingest` again so the manifest matches the dataset") from e

    with ThreadPoolExecutor(max_workers=workers or min(16, os.cpu_count() or 1)) as pool:
        jobs = pool.map(fill, range(len(paths)))
        for _ in progress(jobs, total=len(paths), desc=f"decode to {image_size}px", unit="img", disable=len(paths) < 1000):
            pass
    images.flush()


def build_image_arrays(manifest_path: str | os.PathLike, dataset_root: str | os.PathLike, image_size: int,
                       out_dir: str | os.PathLike, *, data_version: str | None = None,
                       workers: int | None = None) -> Path:
    """Write `out_dir/images.npy` and `out_dir/meta.json` for the manifest's images; returns out_dir.

    Does nothing when out_dir already holds arrays built from the same manifest file (by hash),
    image size and `data_version` (pass the dataset's DVC hash so changed pixels under an unchanged
    manifest rebuild too)."""
    from labelspace.data.nuswide import read_manifest

    if image_size < 1:
        raise ValueError(f"image_size must be a positive number of pixels, got {image_size}")
    manifest_path, dataset_root, out_dir = Path(manifest_path), Path(dataset_root), Path(out_dir)
    manifest, _ = read_manifest(manifest_path)
    wanted = {"manifest_sha256": _file_sha256(manifest_path), "image_size": int(image_size),
              "n": len(manifest), "data_version": data_version, "resize": RESIZE}
    if _read_meta(out_dir) == wanted and (out_dir / IMAGES_FILE).is_file():
        return out_dir

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / META_FILE).unlink(missing_ok=True)  # incomplete until the new meta is written
    partial = out_dir / f"{IMAGES_FILE}.{os.getpid()}.partial"  # per process: concurrent runs never share one
    paths = [dataset_root / rel for rel in manifest["path"]]
    _decode_into(partial, paths, image_size, workers, source=manifest_path)
    partial.replace(out_dir / IMAGES_FILE)
    meta_tmp = out_dir / f"{META_FILE}.{os.getpid()}.tmp"
    meta_tmp.write_text(json.dumps(wanted, indent=1) + "\n", encoding="utf-8")
    meta_tmp.replace(out_dir / META_FILE)
    return out_dir


def load_image_arrays(out_dir: str | os.PathLike) -> np.memmap:
    """The (N, S, S, 3) uint8 array built by `build_image_arrays`, memory-mapped read-only."""
    out_dir = Path(out_dir)
    meta = _read_meta(out_dir)
    if meta is None or not (out_dir / IMAGES_FILE).is_file():
        raise FileNotFoundError(f"no complete image arrays in {out_dir}: run `labelspace preprocess --out {out_dir}`")
    images = np.load(out_dir / IMAGES_FILE, mmap_mode="r")
    if images.shape != (meta["n"], meta["image_size"], meta["image_size"], 3):
        raise ValueError(f"{out_dir / IMAGES_FILE} has shape {images.shape}, but {META_FILE} says "
                         f"{meta['n']} images of {meta['image_size']} px: rebuild it with `labelspace preprocess`")
    return images
