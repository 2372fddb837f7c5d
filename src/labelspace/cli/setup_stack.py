"""`labelspace setup-stack`: register and activate the ZenML stack (idempotent)."""

from __future__ import annotations

import argparse


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or the project's sqlite)")


def run_cli(args: argparse.Namespace) -> int:
    from labelspace.app import prepare_environment
    from labelspace.lifecycle.tracking import configure_mlflow

    root = prepare_environment()
    uri = args.tracking_uri or configure_mlflow(root)
    from labelspace.pipelines.stack import ensure_stack

    stack = ensure_stack(uri)
    print(f"ZenML stack '{stack}' is active: local orchestrator, MLflow tracker and registry at {uri}")
    return 0
