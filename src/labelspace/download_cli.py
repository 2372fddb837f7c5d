"""`labelspace download`: the images of a NUS-WIDE-urls.txt into the release layout (see labelspace.download)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from labelspace.download import DEFAULTS, SIZES, download_nuswide


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.description = (p.description or "") + (
        ". Unset options come from the `download` section of params.yaml, else the built-in defaults. "
        "Faults are counted in the report, never fatal; rerun the same command to resume."
    )
    p.add_argument("--urls", required=True, help="the release's NUS-WIDE-urls.txt")
    p.add_argument("--out", required=True, help="dataset root; images go to OUT/Flickr/<folder>/<file>")
    p.add_argument("--size", choices=SIZES, help=f"preferred URL column (default {DEFAULTS['size']}); others are fallbacks")
    p.add_argument("--workers", type=int, help=f"concurrent downloads (default {DEFAULTS['workers']})")
    p.add_argument("--mirror", help="base URL replacing scheme and host of every URL, e.g. http://127.0.0.1:8765")
    p.add_argument("--timeout", type=float, help=f"seconds per connect or read (default {DEFAULTS['timeout']})")
    p.add_argument("--retries", type=int, help=f"retries of a 5xx or timeout (default {DEFAULTS['retries']})")
    p.add_argument("--backoff", type=float, help=f"first retry delay in s, doubled each time (default {DEFAULTS['backoff']})")
    p.add_argument("--min-bytes", type=int, help=f"smaller files are not photos (default {DEFAULTS['min_bytes']})")
    p.add_argument("--placeholder-sha256", action="append", metavar="HEX",
                   help="SHA-256 of a placeholder image to reject (repeatable; adds to params.yaml's list)")
    p.add_argument("--retry-failed", action="store_true",
                   help="also retry the permanent failures (404, placeholder, ...) the previous report lists")
    p.add_argument("--report", help="JSON report path (default OUT/download-report.json)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _params_section() -> dict[str, Any]:
    from labelspace.params import load_params

    try:
        section = dict(load_params().get("download") or {})
    except FileNotFoundError:
        return {}  # a standalone download outside the project: the built-in defaults
    unknown = sorted(set(section) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"params.yaml download section has unknown key(s) {', '.join(unknown)}; "
                       f"known: {', '.join(DEFAULTS)}")
    return section


def run_cli(args: argparse.Namespace) -> int:
    settings = {**DEFAULTS, **_params_section()}
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
