"""The ZenML stack labelspace runs on, registered idempotently: the local orchestrator and artifact
store, an MLflow experiment tracker and an MLflow model registry on the project's MLflow backend."""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger(__name__)

STACK = "labelspace"
TRACKER = "labelspace_mlflow_tracker"
REGISTRY = "labelspace_mlflow_registry"


def ensure_stack(tracking_uri: str) -> str:
    """Create or update the stack so its tracker points at `tracking_uri`, and activate it."""
    from zenml.client import Client
    from zenml.enums import StackComponentType

    # No `zenml init` repository: it would pin one store's active stack into the checkout, and
    # pipelines.run sets the source root itself.
    client = Client()
    components = {
        TRACKER: (StackComponentType.EXPERIMENT_TRACKER, {"tracking_uri": tracking_uri}),
        REGISTRY: (StackComponentType.MODEL_REGISTRY, {}),
    }
    for name, (kind, configuration) in components.items():
        try:
            existing = client.get_stack_component(kind, name, allow_name_prefix_match=False)
        except KeyError:
            client.create_stack_component(name=name, flavor="mlflow", component_type=kind,
                                          configuration=configuration)
            log.info("registered %s %s", kind.value, name)
            continue
        if any(existing.configuration.get(k) != v for k, v in configuration.items()):
            client.update_stack_component(name, kind, configuration=configuration)
            log.info("updated %s %s: %s", kind.value, name, configuration)
    try:
        client.get_stack(STACK, allow_name_prefix_match=False)
    except KeyError:
        client.create_stack(name=STACK, components={
            StackComponentType.ORCHESTRATOR: "default",
            StackComponentType.ARTIFACT_STORE: "default",
            StackComponentType.EXPERIMENT_TRACKER: TRACKER,
            StackComponentType.MODEL_REGISTRY: REGISTRY,
        })
        log.info("registered stack %s", STACK)
    if client.active_stack_model.name != STACK:
        client.activate_stack(STACK)
    return STACK


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or the project's sqlite)")


def run_cli(args: argparse.Namespace) -> int:
    from labelspace.tracking import configure_mlflow
    from pipelines.run import prepare_environment

    project_root = prepare_environment()
    uri = args.tracking_uri or configure_mlflow(project_root)
    ensure_stack(uri)
    print(f"ZenML stack '{STACK}' is active: local orchestrator, MLflow tracker and registry at {uri}")
    return 0
