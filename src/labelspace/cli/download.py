"""`labelspace download`: the images of a NUS-WIDE-urls.txt into the release layout (see labelspace.data.download)."""

from __future__ import annotations

import argparse
from pathlib import Path

from labelspace.config import DOWNLOAD_SIZES as SIZES
from labelspace.data.download import download_nuswide


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.description = (p.description or "") + (
        ". Unset options come from the `download` section of params.yaml. "
        "Faults are counted in the report, never fatal; rerun the same command to resume."
    )
    p.add_argument("--urls", required=True, help="the release's NUS-WIDE-urls.txt")
    p.add_argument("--out", required=True, help="dataset root; images go to OUT/Flickr/<folder>/<file>")
    p.add_argument("--size", choices=SIZES, help="preferred URL column (default: download.size in params.yaml); others are fallbacks")
    p.add_argument("--workers", type=int, help="concurrent downloads (default: download.workers in params.yaml)")
    p.add_argument("--mirror", help="base URL replacing scheme and host of every URL, e.g. http://127.0.0.1:8765")
    p.add_argument("--timeout", type=float, help="seconds per connect or read (default: download.timeout in params.yaml)")
    p.add_argument("--retries", type=int, help="retries of a 5xx or timeout (default: download.retries in params.yaml)")
    p.add_argument("--backoff", type=float, help="first retry delay in s, doubled each time (default: download.backoff in params.yaml)")
    p.add_argument("--min-bytes", type=int, help="smaller files are not photos (default: download.min_bytes in params.yaml)")
    p.add_argument("--placeholder-sha256", action="append", metavar="HEX",
                   help="SHA-256 of a placeholder image to reject (repeatable; adds to params.yaml's list)")
    p.add_argument("--retry-failed", action="store_true",
                   help="also retry the permanent failures (404, placeholder, ...) the previous report lists")
    p.add_argument("--report", help="JSON report path (default OUT/download-report.json)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_cli(args: argparse.Namespace) -> int:
    import dataclasses

    from labelspace.config import load_config

    settings = dataclasses.asdict(load_config().download)
    for key in ("size", "workers", "mirror", "timeout", "retries", "backoff", "min_bytes"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    settings["placeholder_sha256"] = [*(settings["placeholder_sha256"] or []), *(args.placeholder_sha256 or [])]
    try:
        report = download_nuswide(args.urls, args.out, **settings, retry_failed=args.retry_failed,
                                  report_path=args.report, progress=not args.no_progress)
    except KeyboardInterrupt:
        print("labelspace download: interrupted; rerun the same command to resume", flush=True)
        return 130
    counts = ", ".join(f"{outcome} {n}" for outcome, n in report["counts"].items() if n)
    report_path = args.report or Path(args.out) / "download-report.json"
    print(f"{report['valid_images']} of {report['images']} images valid under {Path(args.out) / 'Flickr'} "
          f"({counts}); report: {report_path}")
    return 0
