"""`labelspace reproduce VERSION|@ALIAS [--workdir DIR] [--threads N] [--json]`: retrain a registered
version from its lineage in a worktree of its commit, with its data restored by hash, in stores of its
own, and say whether the weights match (labelspace.lifecycle.reproduce). Exit 0 bit-identical or within
tolerance, 1 not reproduced, 2 an error or a refusal (a version trained from a dirty tree; a login that may
not tag the version, unless --no-record)."""

from __future__ import annotations

import argparse
import json

from labelspace.lifecycle.registry import DEFAULT_MODEL_NAME


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("version", help="a version number or an @alias (e.g. 3, @champion)")
    p.add_argument("--workdir", help="folder for the worktree, the ZenML and MLflow stores and run.log "
                                     "(default: a new temporary folder, kept)")
    p.add_argument("--threads", type=int, help="torch threads (default: the count the version recorded)")
    p.add_argument("--model", default=DEFAULT_MODEL_NAME, help="registered model name (default: %(default)s)")
    p.add_argument("--no-record", action="store_true", help="do not tag the version with the verdict (tagging needs "
                   "EDIT on the registered model: a login without it, such as a team reader, is refused unless given this)")
    p.add_argument("--json", action="store_true", help="one JSON document instead of text")


def run_cli(args: argparse.Namespace) -> int:
    from pathlib import Path

    from labelspace.app import prepare_environment
    from labelspace.lifecycle.reproduce import format_reproduction, reproduce
    from labelspace.lifecycle.reproduction_verdict import NOT_REPRODUCED

    root = prepare_environment()
    result = reproduce(args.model, args.version, project_root=root, workdir=Path(args.workdir) if args.workdir else None,
                       threads=args.threads, record=not args.no_record)
    print(json.dumps(result.to_dict(), indent=2) if args.json else format_reproduction(result))
    return 1 if result.verdict.verdict == NOT_REPRODUCED else 0
