"""`labelspace audit VERSION|@ALIAS [--json]`, `audit --diff A B`, `audit --dataset-version HASH`: what
produced a model version, how two differ, which versions one dataset made (labelspace.lifecycle.audit);
`audit --verify`: whether the production model's champion history is whole (its hash chain,
labelspace.lifecycle.history_chain; and the chain of the layout before production, where a store has one),
exit 1 naming each altered or missing record. VERSION is a candidate's number; @champion and
@previous-champion are production's aliases, audited as the candidate version they copy."""

from __future__ import annotations

import argparse
import json

from labelspace.lifecycle.registry import DEFAULT_MODEL_NAME


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("version", nargs="?", help="a version number or an @alias (e.g. 3, @champion)")
    p.add_argument("--diff", nargs=2, metavar=("A", "B"), help="params, data, code and metrics of B against A")
    p.add_argument("--dataset-version", metavar="HASH", help="every version trained on this data version (or prefix)")
    p.add_argument("--verify", action="store_true",
                   help="check that the champion history is whole: exit 1 naming each altered or missing record")
    p.add_argument("--model", default=DEFAULT_MODEL_NAME,
                   help="the candidates' registered model (default: %(default)s; production is NAME-production)")
    p.add_argument("--json", action="store_true", help="one JSON document instead of text")


def _project_root():
    from labelspace.app import find_params_file

    try:
        return find_params_file().parent
    except FileNotFoundError:
        return None


def run_cli(args: argparse.Namespace) -> int:
    from labelspace.lifecycle import audit

    chosen = [x for x in (args.version, args.diff, args.dataset_version, args.verify) if x]
    if len(chosen) != 1:
        raise ValueError("give exactly one of VERSION|@ALIAS, --diff A B, --dataset-version HASH, --verify")
    if args.verify:
        return _verify(args)
    if args.diff:
        result = audit.diff(args.model, *args.diff, project_root=_project_root())
        text = audit.format_diff(result)
    elif args.dataset_version:
        result = audit.by_dataset(args.model, args.dataset_version)
        text = audit.format_by_dataset(args.model, args.dataset_version, result)
    else:
        result = audit.audit(args.model, args.version, project_root=_project_root())
        text = audit.format_audit(result)
    print(json.dumps(result, indent=2, default=str) if args.json else text)
    return 0


def _verify(args: argparse.Namespace) -> int:
    from labelspace.lifecycle.history import events, verify
    from labelspace.lifecycle.registry import candidate_model, production_model
    from labelspace.lifecycle.retry import client

    c = client()
    model, candidate = production_model(args.model), candidate_model(args.model)
    problems, notes = verify(c, model)
    count = len(events(c, model))
    earlier = len(events(c, candidate))
    if earlier:  # moves recorded before production existed, on the candidates' model
        old_problems, old_notes = verify(c, candidate)
        problems += [f"{candidate} (before {model}): {line}" for line in old_problems]
        notes += [f"{candidate} (before {model}): {line}" for line in old_notes]
        notes.append(f"{earlier} earlier records of {candidate}@champion (before {model}) checked too")
    if args.json:
        print(json.dumps({"model": model, "records": count, "earlier_records": earlier, "whole": not problems,
                          "problems": problems, "notes": notes}, indent=2))
    else:
        for line in notes:
            print(f"note: {line}")
        for line in problems:
            print(f"NOT WHOLE: {line}")
        if not problems:
            print(f"the champion history of {model} is whole: {count} records, every link and the anchor check out")
    return 1 if problems else 0
