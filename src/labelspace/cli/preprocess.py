"""`labelspace preprocess`: decode a manifest's images once into a memory-mapped uint8 array."""

from __future__ import annotations

import argparse

from labelspace.data.preprocess import IMAGES_FILE, build_image_arrays, load_image_arrays


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--manifest", required=True, help="manifest from `labelspace ingest`")
    p.add_argument("--out", required=True, help="output folder (images.npy and meta.json)")
    p.add_argument("--root", help="dataset folder the manifest paths are relative to (default: ingest.dataset)")
    p.add_argument("--size", type=int, help="side in pixels (default: ingest.image_size)")
    p.add_argument("--data-version", help="the dataset's DVC hash, recorded so a new version rebuilds")
    p.add_argument("--workers", type=int, help="threads decoding images (default: CPU count)")
    p.add_argument("--shard-size", type=int, help="write shards of this many images (labelspace.data.shards) "
                   "instead of one array; resumable after a kill")


def run_cli(args: argparse.Namespace) -> int:
    root, size = args.root, args.size
    if root is None or size is None:
        from labelspace.config import load_config

        config = load_config()
        root = root or config.resolve(config.ingest.dataset)
        size = size or config.ingest.image_size
    if args.shard_size:
        from pathlib import Path

        from labelspace.data.nuswide import read_manifest
        from labelspace.data.preprocess import _file_sha256
        from labelspace.data.shards import write_shards

        manifest, _ = read_manifest(args.manifest)
        index = write_shards([Path(root) / rel for rel in manifest["path"]], size, args.out,
                             shard_size=args.shard_size, workers=args.workers,
                             source_hash=f"{_file_sha256(Path(args.manifest))}:{args.data_version}")
        print(f"{index['n']} images of {size}x{size} px in {len(index['shards'])} shards under {args.out} "
              f"({index['built']} built, {index['reused']} already there)")
        return 0
    out = build_image_arrays(args.manifest, root, size, args.out, data_version=args.data_version,
                             workers=args.workers)
    images = load_image_arrays(out)
    print(f"{images.shape[0]} images of {images.shape[1]}x{images.shape[2]} px in {out / IMAGES_FILE}")
    return 0
