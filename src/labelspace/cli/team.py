"""`labelspace team up|down|status|env`: the team stack (PostgreSQL, S3, MLflow with logins) under .team/."""

from __future__ import annotations

import argparse


def configure_parser(p: argparse.ArgumentParser) -> None:
    from labelspace.deploy.team import configure_parser as configure

    configure(p)


def run_cli(args: argparse.Namespace) -> int:
    from labelspace.deploy.team import run_cli as run

    return run(args)
