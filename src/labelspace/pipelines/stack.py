"""The ZenML stack labelspace runs on, registered idempotently: the local orchestrator and artifact
store, an MLflow experiment tracker and an MLflow model registry on the project's MLflow backend."""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

STACK = "labelspace"
TRACKER = "labelspace_mlflow_tracker"
REGISTRY = "labelspace_mlflow_registry"


def tracker_configuration(tracking_uri: str) -> dict[str, str]:
    """ZenML's MLflow tracker wants credentials for any http(s) server: the ones MLflow reads from the
    environment, or placeholders, which a server without authentication ignores."""
    config = {"tracking_uri": tracking_uri}
    if not tracking_uri.startswith(("http://", "https://")):
        return config
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if token:
        config["tracking_token"] = token
    elif user and password:
        config.update(tracking_username=user, tracking_password=password)
    else:
        log.warning("no MLFLOW_TRACKING_USERNAME/PASSWORD or MLFLOW_TRACKING_TOKEN: using %s without "
                    "credentials; set them if the server requires authentication", tracking_uri)
        config.update(tracking_username="labelspace", tracking_password="no-authentication")
    return config


def ensure_stack(tracking_uri: str) -> str:
    """Create or update the stack so its tracker points at `tracking_uri`, and activate it; on a
    ZenML server ($ZENML_STORE_URL, `labelspace team env`), activate the team's stack instead."""
    from zenml.client import Client
    from zenml.enums import StackComponentType

    from labelspace.deploy.zenml_server import on_zenml_server
    from labelspace.pipelines.team_stack import use_team_stack
    from labelspace.steps import use_package_as_source_root

    use_package_as_source_root()
    if on_zenml_server():
        return use_team_stack(tracking_uri)
    client = Client()
    components = {
        TRACKER: (StackComponentType.EXPERIMENT_TRACKER, tracker_configuration(tracking_uri)),
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
