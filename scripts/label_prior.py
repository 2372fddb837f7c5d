"""Top-k of each head ranked by its scores and by its calibrated probabilities, on trained runs.

The calibration fits one offset per training label on validation (labelspace.evaluation.calibration);
ranking by the calibrated probability is ranking by score + offset / slope, a per-label prior added
after training. This script measures what that prior does to top-k without retraining: for each
folder written by `scripts/test_seeds.py` (its ZenML store and MLflow database), it loads the last
pipeline run's evaluate inputs (the manifest, the images and both trained heads), scores the test
split and prints top-k C-F1 / O-F1 and mAP both ways, one JSON line per folder and head.

    .venv/bin/python scripts/label_prior.py DIR [DIR ...] [--k 3]

Each folder is read in its own process (ZenML's client is bound to one store per process).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from test_seeds import store_env


def measure(folder: Path, k: int) -> list[dict]:
    import numpy as np
    from zenml.client import Client

    from labelspace.data.prepared import prepared
    from labelspace.data.splits import split_indices, target_matrix
    from labelspace.evaluation.calibration import calibrated_probabilities
    from labelspace.evaluation.report import evaluate_scores
    from labelspace.model.inference import extract_features, resolve_device, scores_from_features

    runs = Client().list_pipeline_runs(sort_by="desc:created", size=1).items
    if not runs:
        raise SystemExit(f"{folder}: no pipeline run in its ZenML store")
    step = runs[0].steps["evaluate"]
    inputs = {name: (v[0] if isinstance(v, list) else v).load() for name, v in step.inputs.items()}
    manifest, images = inputs["manifest"], prepared(inputs["prepared_data"]).images()
    test_idx = split_indices(manifest)["test"]
    device = resolve_device("cpu")
    rows = []
    for head in ("labelspace_model", "bce_model"):
        trained = inputs[head]
        model = trained.build().to(device)
        feats = extract_features(model, images, test_idx, device, 128, desc=f"{head} test features")
        scores = np.asarray(scores_from_features(model, feats, trained.label_vectors, device), dtype=np.float64)
        targets = target_matrix(manifest.iloc[test_idx], trained.labels)
        row = {"folder": str(folder), "head": head.removesuffix("_model")}
        for name, s in (("scores", scores), ("calibrated", calibrated_probabilities(scores, trained.calibration))):
            report = evaluate_scores(s, targets, (k,), None)
            row[name] = {"C-F1": round(100 * report[f"top{k}"]["C-F1"], 1),
                         "O-F1": round(100 * report[f"top{k}"]["O-F1"], 1), "mAP": round(100 * report["mAP"], 1)}
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # the per-folder child
    args = parser.parse_args()
    if args.one:
        for row in measure(args.folders[0], args.k):
            print(json.dumps(row), flush=True)
        return
    for folder in args.folders:
        folder = folder.resolve()
        out = subprocess.run([sys.executable, __file__, str(folder), "--k", str(args.k), "--one"], env=store_env(folder),
                             capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"{folder}:\n{out.stderr[-3000:]}")
        print("".join(line + "\n" for line in out.stdout.splitlines() if line.startswith("{")), end="", flush=True)


if __name__ == "__main__":
    main()
