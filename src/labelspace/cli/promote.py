"""`labelspace promote --version N [--alias champion]`: move a registry alias to a model version."""

from __future__ import annotations

import argparse

from labelspace.lifecycle.registry import DEFAULT_MODEL_NAME, _client, alias_holder, promote


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL_NAME, help="registered model name (default: %(default)s)")
    p.add_argument("--version", required=True, help="the model version the alias should name")
    p.add_argument("--alias", default="champion", help="alias to move (default: %(default)s)")


def run_cli(args: argparse.Namespace) -> int:
    previous = alias_holder(args.model, args.alias)
    promote(args.model, args.version, args.alias)
    now = _client().get_model_version(args.model, str(args.version))
    before = f"version {previous}" if previous is not None else "no version"
    if previous == str(now.version):
        print(f"{args.model}@{args.alias} already names version {now.version}; nothing moved")
    else:
        print(f"{args.model}@{args.alias}: {before} -> version {now.version}")
    lineage = {k: v for k, v in now.tags.items() if k.startswith(("data.", "code.", "params.", "zenml."))}
    for key in sorted(lineage):
        print(f"  {key} = {lineage[key]}")
    print(f"load it with mlflow.pyfunc.load_model('models:/{args.model}@{args.alias}')")
    return 0
