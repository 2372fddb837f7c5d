"""`labelspace run`: the training pipeline on params.yaml (ingest, embed, train, evaluate, register, gate)."""

from __future__ import annotations

import argparse


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", help="a NUS-WIDE-layout dataset folder (default: ingest.dataset in params.yaml)")
    p.add_argument("--vectors", help="word2vec-format vectors (default: vectors.path in params.yaml)")
    p.add_argument("--no-cache", action="store_true",
                   help="rerun every step and retrain from scratch (no ZenML cache, no checkpoint resume)")


def run_cli(args: argparse.Namespace) -> int:
    from labelspace.app import prepare_environment
    from labelspace.config import load_config

    prepare_environment()
    config = load_config()  # checked whole before any step runs
    from labelspace.lifecycle.tracking import tracking_uri
    from labelspace.pipelines.run import run_training

    # Read before the pipeline: ZenML's MLflow tracker ends each step with mlflow.set_tracking_uri(""),
    # which leaves MLFLOW_TRACKING_URI empty in this process (a team's server would read as local sqlite).
    uri = tracking_uri(config.root)
    # The evaluate step printed the metrics table; `labelspace report` prints it again.
    run_training(config, dataset=args.dataset, vectors=args.vectors, no_cache=args.no_cache)
    print(f"\nMLflow: {uri}")
    return 0
