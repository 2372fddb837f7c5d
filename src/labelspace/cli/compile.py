"""`labelspace compile --orchestrator kubeflow --out FILE [--pipeline training|retrain] [--schedule CRON]`:
the pipeline's Kubeflow Pipelines spec (KFP IR YAML) written offline, no cluster needed, with a KFP
recurring run beside it when scheduled (labelspace.pipelines.kubeflow; docs/scale-out.md)."""

from __future__ import annotations

import argparse

ORCHESTRATORS = ("kubeflow",)  # labelspace.pipelines.kubeflow.ORCHESTRATORS, without importing ZenML here


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--orchestrator", required=True, help=f"the orchestrator to compile for: {', '.join(ORCHESTRATORS)}")
    p.add_argument("--out", required=True, metavar="FILE", help="the pipeline spec to write (YAML)")
    p.add_argument("--pipeline", default="training", choices=("training", "retrain"),
                   help="training (default), or retrain: the same steps as the scheduler runs them, nightly "
                        "(0 2 * * *) unless --schedule says otherwise")
    p.add_argument("--schedule", metavar="CRON", help="a 5-field cron expression: also write FILE's "
                   "recurring run (<FILE stem>.recurring-run.yaml)")
    p.add_argument("--image", help="the step image (default labelspace:<version>; stacks/kubeflow/README.md builds it)")
    p.add_argument("--snapshot-id", help="the ZenML snapshot the steps run (default: a run-time input)")


def run_cli(args: argparse.Namespace) -> int:
    if args.orchestrator not in ORCHESTRATORS:
        raise ValueError(f"unknown orchestrator {args.orchestrator!r}: labelspace compiles for "
                         f"{', '.join(ORCHESTRATORS)} (other ZenML orchestrators compile when a run is submitted)")
    from labelspace.app import prepare_environment
    from labelspace.config import load_config

    prepare_environment()
    config = load_config()
    from labelspace.pipelines.kubeflow import DEFAULT_IMAGE, compile_kfp, write_kfp

    docs, recurring, nodes = compile_kfp(config, pipeline=args.pipeline, image=args.image or DEFAULT_IMAGE,
                                         schedule=args.schedule, snapshot_id=args.snapshot_id)
    for path in write_kfp(args.out, docs, recurring, nodes):
        print(f"wrote {path}")
    gpu = [n.name for n in nodes if n.gpus]
    print(f"{docs[0]['pipelineInfo']['name']}: {len(nodes)} steps ({', '.join(n.name for n in nodes)}); "
          f"GPU: {', '.join(gpu) or 'none'}"
          + (f"; schedule {recurring['trigger']['cron_schedule']['cron']} (KFP cron, seconds first)" if recurring else ""))
    return 0
