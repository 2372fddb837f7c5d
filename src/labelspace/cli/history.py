"""`labelspace history [--json]`: the moves of champion in order (labelspace.lifecycle.history)."""

from __future__ import annotations

import argparse
import json

from labelspace.lifecycle.registry import DEFAULT_MODEL_NAME


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL_NAME, help="registered model name (default: %(default)s)")
    p.add_argument("--alias", default="champion", help="whose moves (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="one JSON document instead of the table")


def run_cli(args: argparse.Namespace) -> int:
    from labelspace.lifecycle.history import events
    from labelspace.lifecycle.registry import alias_holder
    from labelspace.lifecycle.retry import client

    moves = events(client(), args.model, args.alias)
    holder = alias_holder(args.model, args.alias)
    previous = alias_holder(args.model, "previous-champion") if args.alias == "champion" else None
    if args.json:
        print(json.dumps({"model": args.model, "alias": args.alias, "holder": holder, "previous": previous,
                          "events": [e.to_dict() for e in moves]}, indent=2))
        return 0
    if not moves:
        print(f"{args.model}@{args.alias} has never moved" + (f" (it names version {holder}, set outside "
                                                              "labelspace)" if holder else ""))
        return 0
    print(f"{'#':>3}  {'time (UTC)':<25} {'version':>7} {'previous':>8}  {'source':<8} {'by':<20} reason")
    for e in moves:
        state = "" if e.status == "moved" else f"  [{e.status}]"
        print(f"{e.seq:>3}  {e.time:<25} {e.version:>7} {e.previous or '-':>8}  {e.source:<8} {e.actor:<20} "
              f"{e.reason}{state}")
    line = f"{args.model}@{args.alias} now names version {holder}" if holder else f"{args.model}@{args.alias} is unset"
    print(line + (f"; previous-champion: version {previous}" if previous else ""))
    return 0
