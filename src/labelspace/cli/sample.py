"""`labelspace sample`: build the embedded Fashion-MNIST dataset in the NUS-WIDE layout (params `sample`)."""

from __future__ import annotations

import argparse
import dataclasses

from labelspace.config import SampleConfig, load_config
from labelspace.data.sample import build_sample

_FLAGS = {f.name: f.type for f in dataclasses.fields(SampleConfig) if f.name != "out"}
_TYPES = {"str": str, "int": int, "float": float}


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", help="output folder (default: sample.out in params.yaml)")
    for key, type_name in _FLAGS.items():
        p.add_argument(f"--{key.replace('_', '-')}", dest=key, type=_TYPES[type_name],
                       help=f"default: sample.{key} in params.yaml")


def run_cli(args: argparse.Namespace) -> int:
    config = load_config()
    changes = {key: getattr(args, key) for key in _FLAGS if getattr(args, key) is not None}
    if args.out:
        changes["out"] = args.out
    sample = config.replace(sample=changes).sample
    out = config.resolve(sample.out)
    summary = build_sample(out, sample)
    print(f"wrote {summary['train']} train + {summary['test']} test canvases ({summary['blank']} blank) to {out}")
    return 0
