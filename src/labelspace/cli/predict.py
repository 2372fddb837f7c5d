"""`labelspace predict`: batch inference of a registered model over a folder or a list of images,
into a parquet file with a JSON report beside it (labelspace.serving.batch)."""

from __future__ import annotations

import argparse

from labelspace.lifecycle.registry import DEFAULT_MODEL_URI


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL_URI,
                   help="model URI (default: %(default)s, what serves): models:/NAME@ALIAS, "
                        "models:/NAME/VERSION (a candidate: models:/labelspace/3), "
                        "runs:/RUN/model or a model folder")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", help="a folder: every .jpg/.jpeg/.png/.webp/.gif/.bmp file under it")
    source.add_argument("--manifest", help="a list of images: a labelspace ingest manifest (.parquet) or a text file "
                                           "with one path per line (NUS-WIDE's ImageList files work as they are)")
    p.add_argument("--root", help="the folder the manifest's paths are relative to (default: the dataset of the "
                                  "ingest report beside the manifest, else the manifest's folder)")
    p.add_argument("--split", help="only this split of an ingest manifest (train or test)")
    p.add_argument("--out", required=True, help="predictions .parquet to write; the report goes beside it (.report.json)")
    p.add_argument("--top-k", type=int, help="labels ranked per image (default: the model's, 5)")
    p.add_argument("--labels", nargs="+", metavar="LABEL",
                   help="rank these words instead of the training labels (open vocabulary: ranked, not decided)")
    p.add_argument("--batch-size", type=int, default=64,
                   help="images per chunk: one model call and one resumable part (default: %(default)s)")


def run_cli(args: argparse.Namespace) -> int:
    from labelspace.lifecycle.tracking import configure_mlflow
    from labelspace.serving.batch import predict_to_parquet, report_path
    from labelspace.serving.batch_inputs import images_in, images_of_manifest

    if args.split and not args.manifest:
        raise ValueError("--split goes with --manifest")
    if args.root and not args.manifest:
        raise ValueError("--root goes with --manifest (--images is its own root)")
    inputs = (images_in(args.images) if args.images
              else images_of_manifest(args.manifest, root=args.root, split=args.split))
    configure_mlflow()
    report = predict_to_parquet(args.model, inputs, args.out, top_k=args.top_k, labels=args.labels,
                                batch_size=args.batch_size)
    model = report["model"]
    version = f"{model['name']} version {model['version']}" if model.get("version") else model["uri"]
    state = " (up to date: nothing to do)" if report.get("up_to_date") else ""
    print(f"{report['predicted']} of {report['listed']} listed images scored by {version}{state}; "
          f"{report['skipped']} skipped {report['skipped_by_reason'] or ''}".rstrip())
    print(f"data version: {report['data']['data_version']}")
    print(f"predictions: {args.out}\nreport:      {report_path(args.out)}")
    return 0
