"""`labelspace rollback [--reason ...]`: the production model's champion back to the previous champion,
recorded in the history (approvers, `retrain` and admins on a team's server)."""

from __future__ import annotations

import argparse

from labelspace.lifecycle.registry import DEFAULT_MODEL_NAME


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL_NAME,
                   help="the candidates' registered model (default: %(default)s; production is NAME-production)")
    p.add_argument("--reason", help="why (recorded in the history; default: 'rollback from version N')")


def run_cli(args: argparse.Namespace) -> int:
    from labelspace.cli.promote import stage_hook
    from labelspace.lifecycle.champion import rollback

    move = rollback(args.model, reason=args.reason, stage_hook=stage_hook())
    print(move.line())
    if move.note:
        print(f"  {move.note}")
    print(f"  previous-champion now names {move.candidate} version {move.previous} (a second rollback returns to it)")
    return 0
