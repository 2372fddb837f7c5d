"""`labelspace card VERSION|@ALIAS --out DIR`: the model card of a registered version, as Markdown and a
self-contained HTML page, logged to the version's run (artifacts card/) and linked from its description."""

from __future__ import annotations

import argparse


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("version", help="N or @ALIAS, e.g. 3 or @challenger")
    p.add_argument("--out", required=True, help="folder for model_card.md, model_card.html and plots/")
    p.add_argument("--model", help="registered model name (default: register.model_name of params.yaml)")
    p.add_argument("--no-log", action="store_true", help="write the files only; log nothing to MLflow")


def run_cli(args: argparse.Namespace) -> int:
    from pathlib import Path

    from labelspace.app import prepare_environment

    prepare_environment()
    from labelspace.config import load_config
    from labelspace.evaluation.card_render import build_card
    from labelspace.lifecycle.version_record import load_version, log_card

    name = args.model or load_config().register.model_name
    record = load_version(args.version, name)
    card = build_card(record.card_inputs())
    out = Path(args.out)
    files = card.write(out)
    print(f"model card of {name} version {record.version.version}: {out / 'model_card.html'} "
          f"and {out / 'model_card.md'} ({len(files) - 2} plots)")
    if record.analysis is None:
        print(f"note: no analysis logged for this version; run `labelspace analyze --version "
              f"{record.version.version}` for the committee, row diversity, label map and k sweep")
    if not args.no_log:
        link = log_card(record, out)
        print(f"logged to MLflow run {record.run_id} (artifacts card/); the version's description links {link}")
    return 0
