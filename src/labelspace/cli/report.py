"""`labelspace report`: the metrics table of the last run and how to look at the results."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from labelspace.config import load_config
from labelspace.evaluation.report import metrics_table


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--metrics", help="metrics file (default: evaluate.report in params.yaml)")


def run_cli(args: argparse.Namespace) -> int:
    from labelspace.lifecycle.tracking import tracking_uri

    config = load_config()
    root = config.root
    path = Path(args.metrics) if args.metrics else config.resolve(config.evaluate.report)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist yet: run `make run` (or `labelspace run`) first")
    report = json.loads(path.read_text())
    print(f"Test-split metrics (%), from {path}:\n")
    print(metrics_table(report))
    uri = tracking_uri(root)
    print("\nLook at the runs, plots and registered models in the MLflow UI:")
    if uri.startswith(("http://", "https://")):
        print(f"  open {uri}")
    else:
        print(f"  .venv/bin/mlflow ui --backend-store-uri {uri} --port 5000   # then open http://127.0.0.1:5000")
    return 0
