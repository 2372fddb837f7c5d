"""`labelspace ingest`: read a NUS-WIDE-layout dataset into a parquet manifest and a JSON report."""

from __future__ import annotations

import argparse

from labelspace.choices import LABEL_SETS
from labelspace.data.nuswide import ingest, report_path, summarize


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", help="dataset folder in the NUS-WIDE layout (default: ingest.dataset in params.yaml)")
    p.add_argument("--out", required=True, help="manifest .parquet to write (the report goes beside it)")
    p.add_argument("--no-verify-images", dest="verify_images", action="store_false",
                   help="only check that images exist, do not decode them")
    p.add_argument("--workers", type=int, help="threads decoding images (default: CPU count)")
    p.add_argument("--labels", choices=LABEL_SETS,
                   help="label set: concepts, or nuswide-zsl (NUS-WIDE's zero-shot split, docs/nuswide.md); default: "
                        "ingest.labels without --root, concepts with it")


def run_cli(args: argparse.Namespace) -> int:
    root, labels = args.root, args.labels
    if root is None:
        from labelspace.config import load_config

        config = load_config()
        root, labels = config.resolve(config.ingest.dataset), labels or config.ingest.labels
    report = ingest(root, args.out, verify_images=args.verify_images, workers=args.workers, labels=labels or "concepts")
    print(summarize(report))
    print(f"manifest: {args.out}\nreport:   {report_path(args.out)}")
    return 0
