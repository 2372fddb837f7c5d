"""`labelspace history [--json]`: the moves of the production model's champion in order
(labelspace.lifecycle.history); versions are the candidates' numbers, the production copy beside them."""

from __future__ import annotations

import argparse
import json

from labelspace.lifecycle.registry import DEFAULT_MODEL_NAME


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL_NAME,
                   help="the candidates' registered model (default: %(default)s; production is NAME-production)")
    p.add_argument("--alias", default="champion", help="whose moves (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="one JSON document instead of the table")


def run_cli(args: argparse.Namespace) -> int:
    from labelspace.lifecycle.history import events
    from labelspace.lifecycle.registry import alias_holder, candidate_model, candidate_of, production_model
    from labelspace.lifecycle.retry import client

    c = client()
    candidate, production = candidate_model(args.model), production_model(args.model)
    moves = events(c, production, args.alias)
    served = alias_holder(production, args.alias)
    holder = candidate_of(c, production, served)
    previous = (candidate_of(c, production, alias_holder(production, "previous-champion"))
                if args.alias == "champion" else None)
    legacy = alias_holder(candidate, args.alias) if args.alias == "champion" else None
    if args.json:
        print(json.dumps({"model": candidate, "production_model": production, "alias": args.alias, "holder": holder,
                          "production_version": served, "previous": previous,
                          "events": [e.to_dict() for e in moves]}, indent=2))
        return 0
    if legacy is not None and served is None:
        print(f"{candidate}@{args.alias} names version {legacy}: the layout before {production}. Production moves "
              f"to {production} at the next promote, rollback or passing gate; `labelspace promote --version "
              f"{legacy} --reason 'carry over'` does only that. Its earlier moves are the runs of "
              f"the experiment {candidate}-lifecycle")
    if not moves:
        print(f"{production}@{args.alias} has never moved" + (f" (it names version {served}, set outside "
                                                              "labelspace)" if served else ""))
        return 0
    print(f"versions of {candidate}; 'served' is the copy in {production}")
    print(f"{'#':>3}  {'time (UTC)':<25} {'version':>7} {'previous':>8} {'served':>6}  {'source':<9} {'by':<20} reason")
    for e in moves:
        state = "" if e.status == "moved" else f"  [{e.status}]"
        print(f"{e.seq:>3}  {e.time:<25} {e.version:>7} {e.previous or '-':>8} {e.production_version or '-':>6}  "
              f"{e.source:<9} {e.actor:<20} {e.reason}{state}")
    line = f"{production}@{args.alias} now names version {holder}" if served else f"{production}@{args.alias} is unset"
    line += f"; previous-champion: version {previous}" if previous else ""
    print(line + (f" (versions of {candidate}; served as {production} version {served})" if served else ""))
    return 0
