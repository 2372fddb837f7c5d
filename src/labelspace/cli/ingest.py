"""`labelspace ingest`: read a NUS-WIDE-layout dataset into a parquet manifest and a JSON report."""

from __future__ import annotations

import argparse

from labelspace.data.nuswide import ingest, report_path, summarize


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", help="dataset folder in the NUS-WIDE layout (default: ingest.dataset in params.yaml)")
    p.add_argument("--out", required=True, help="manifest .parquet to write (the report goes beside it)")
    p.add_argument("--no-verify-images", dest="verify_images", action="store_false",
                   help="only check that images exist, do not decode them")
    p.add_argument("--workers", type=int, help="threads decoding images (default: CPU count)")


def run_cli(args: argparse.Namespace) -> int:
    root = args.root
    if root is None:
        from labelspace.config import load_config

        config = load_config()
        root = config.resolve(config.ingest.dataset)
    report = ingest(root, args.out, verify_images=args.verify_images, workers=args.workers)
    print(summarize(report))
    print(f"manifest: {args.out}\nreport:   {report_path(args.out)}")
    return 0
