"""`labelspace data-version PATH`: DVC's hash of a tracked dataset (lineage)."""

from __future__ import annotations

import argparse

from labelspace.data.dvc_versions import data_version


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="a DVC-tracked output, e.g. data/fashion-canvas")
    p.add_argument("--repo-root", default=".", help="the DVC repository (default: current folder)")
    p.add_argument("--verify", action="store_true", help="also hash the workspace and fail if it differs from the lock")


def run_cli(args: argparse.Namespace) -> int:
    print(data_version(args.path, args.repo_root, verify=args.verify))
    return 0
