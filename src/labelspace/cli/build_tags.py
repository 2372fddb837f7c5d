"""`labelspace build-tags`: build a real-tag dataset in the NUS-WIDE layout from an installed package
(labelspace.data.realtags; the DVC stages in datasets/openmoji/dvc.yaml and datasets/tabler/dvc.yaml)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def configure_parser(p: argparse.ArgumentParser) -> None:
    from labelspace.data.realtags import SOURCES

    p.add_argument("--source", choices=sorted(SOURCES), default="openmoji", help="the package the dataset comes from")
    p.add_argument("--out", required=True, help="output folder (the dataset root)")
    p.add_argument("--package", help="the unpacked package (default: data/packages/<source>-<version> of the project, "
                                     "installed by `make datasets`)")
    p.add_argument("--vectors", help="word2vec-format vectors the concepts must have (default: vectors.path in params.yaml)")
    p.add_argument("--n-concepts", type=int, default=80, help="how many of the most frequent tags become concepts")
    p.add_argument("--image-size", type=int, default=64, help="pixels per side of the rendered PNGs")
    p.add_argument("--seed", type=int, default=0, help="seed of the train/test split")
    p.add_argument("--test-fraction", type=float, default=0.2, help="share of the (base) images in the test split")
    p.add_argument("--variants", "--skin-tones", dest="variants", action="store_true",
                   help="add the variants: OpenMoji's skin tones (the base emoji's tags), Tabler's -off icons")
    p.add_argument("--max-images", type=int, help="keep a seeded draw of this many base images (default: all)")
    p.add_argument("--report", help="the build's JSON report (default: <out>.report.json beside the folder)")
    p.add_argument("--workers", type=int, help="rendering threads (default: up to 4)")


def run_cli(args: argparse.Namespace) -> int:
    from labelspace.app import project_root
    from labelspace.data.realtags import PACKAGE_DIRS, build_tag_dataset, format_statistics, vector_lookup

    package = Path(args.package) if args.package else project_root() / PACKAGE_DIRS[args.source]
    if args.vectors:
        vectors = Path(args.vectors)
    else:
        from labelspace.config import load_config

        config = load_config()
        vectors = config.resolve(config.vectors.path)
    out = Path(args.out)
    report = build_tag_dataset(out, source=args.source, package=package, has_vector=vector_lookup(vectors),
                               n_concepts=args.n_concepts, image_size=args.image_size, seed=args.seed,
                               test_fraction=args.test_fraction, variants=args.variants,
                               max_images=args.max_images, workers=args.workers)
    report["vectors"] = os.fspath(vectors)
    report_path = Path(args.report) if args.report else out.with_name(out.name + ".report.json")
    report_path.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    skipped = report["concept_rule"]["skipped"]
    print(f"wrote {out}: {format_statistics(report['statistics'])}")
    print("tags skipped by the concept rule (distinct tags, at or above the cutoff of "
          f"{report['concept_rule']['concept_cutoff_images']} images): "
          + ", ".join(f"{k.replace('_', ' ')} {v['distinct_tags']} ({v['at_or_above_cutoff']})" for k, v in skipped.items()))
    print(f"report: {report_path}")
    return 0
