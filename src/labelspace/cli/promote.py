"""`labelspace promote --version N --reason "..." [--alias champion]`: candidate version N copied into the
production model and production's alias moved to it, under the champion lock, recorded in the history
(labelspace.lifecycle.champion). On a team's server only approvers, `retrain` and admins may."""

from __future__ import annotations

import argparse

from labelspace.lifecycle.registry import DEFAULT_MODEL_NAME


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL_NAME,
                   help="the candidates' registered model (default: %(default)s; production is NAME-production)")
    p.add_argument("--version", required=True, help="the candidate version the alias should name (N or @alias, "
                                                    "e.g. @challenger)")
    p.add_argument("--reason", required=True, help="why (recorded in the history with who and when)")
    p.add_argument("--alias", default="champion", help="alias to move (default: %(default)s)")


def stage_hook():
    """ZenML's model version stages follow champion moves when a ZenML store is at hand (a project's
    .zenml, or $ZENML_CONFIG_PATH); ZenML is imported only if a moved version names a ZenML model version."""
    import os

    from labelspace.app import prepare_environment, telemetry_off

    telemetry_off()
    try:
        prepare_environment()
    except FileNotFoundError:
        if not os.environ.get("ZENML_CONFIG_PATH"):
            return None

    def hook(promoted, replaced) -> str:
        if not any(v is not None and v.tags.get("zenml.model_version") for v in (promoted, replaced)):
            return ""
        from labelspace.steps.model_stages import zenml_stage_hook

        return zenml_stage_hook(promoted, replaced)

    return hook


def run_cli(args: argparse.Namespace) -> int:
    from labelspace.lifecycle.champion import promote_version
    from labelspace.lifecycle.registry import resolve_version

    move = promote_version(args.model, args.version, reason=args.reason, alias=args.alias, stage_hook=stage_hook())
    print(move.line())
    if move.note:
        print(f"  {move.note}")
    now = resolve_version(move.candidate, move.version, ready=False)
    lineage = {k: v for k, v in now.tags.items() if k.startswith(("data.", "code.", "params.", "zenml."))}
    for key in sorted(lineage):
        print(f"  {key} = {lineage[key]}")
    print(f"load it with mlflow.pyfunc.load_model('models:/{move.model}@{args.alias}')")
    return 0
