"""`labelspace retrain [--wait SECONDS] [--force]`: the scheduler's command (labelspace.lifecycle.retrain).

Exit codes: 0 promoted or nothing to do; 3 the gate rejected the new version; 75 another retrain holds
the lock; 2 errors. docs/lifecycle.md has a systemd timer and a cron line that call it.
"""

from __future__ import annotations

import argparse
import signal
import sys


def configure_parser(p: argparse.ArgumentParser) -> None:
    from labelspace.lifecycle.retrain import EXIT_CODES

    p.add_argument("--dataset", help="a NUS-WIDE-layout dataset folder (default: ingest.dataset in params.yaml)")
    p.add_argument("--vectors", help="word2vec-format vectors (default: vectors.path in params.yaml)")
    p.add_argument("--wait", type=float, default=0, metavar="SECONDS",
                   help="wait this long for another retrain to finish (default: exit 75 at once)")
    p.add_argument("--force", action="store_true", help="train even when nothing changed since the newest version")
    p.epilog = "exit codes: " + "; ".join(f"{code} {what}" for code, what in EXIT_CODES.items())


def run_cli(args: argparse.Namespace) -> int:
    from labelspace.app import prepare_environment
    from labelspace.config import load_config

    prepare_environment()
    config = load_config()  # checked whole before anything else
    from labelspace.lifecycle.retrain import retrain

    # SIGTERM (systemd stop, a CI timeout) unwinds like Ctrl-C: the lock's ticket is given back.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    result = retrain(config, dataset=args.dataset, vectors=args.vectors, wait_s=args.wait, force=args.force)
    print(f"labelspace retrain: {result.message}", file=sys.stderr if result.code else sys.stdout)
    return result.code
