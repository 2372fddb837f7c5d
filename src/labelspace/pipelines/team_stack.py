"""The team's ZenML stack, `labelspace-team`, on the team stack's ZenML server: what `labelspace
team up` registers there, and how a member's `labelspace setup-stack` / `labelspace run` activates it
instead of registering a local stack. The server itself is labelspace.deploy.zenml_server.

    python -m labelspace.pipelines.team_stack < spec.json    # the registration, as the admin
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any

from labelspace.deploy.processes import TeamError
from labelspace.deploy.zenml_server import (
    ARTIFACT_STORE,
    CI_ACCOUNT,
    MLFLOW_SECRET,
    REGISTRY,
    S3_SECRET,
    TEAM_STACK,
    TEAM_USER,
    TRACKER,
    keep_zenml_config_private,
)

log = logging.getLogger(__name__)


def register_team_stack(spec: dict[str, Any]) -> dict[str, Any]:
    """What `labelspace team up` registers on its ZenML server (idempotent), run in a child process
    logged in as the admin (labelspace.deploy.zenml_server.ensure_team_stack): the `team` user, the
    `ci` service account and its API key (returned when made: the server keeps only its hash), the
    secrets, the components and the stack."""
    from zenml.client import Client
    from zenml.enums import StackComponentType

    client = Client()
    try:
        client.get_user(TEAM_USER, allow_name_prefix_match=False)
    except KeyError:
        client.create_user(TEAM_USER, password=spec["team_password"], is_admin=False)
    ci_key = None
    try:
        client.get_service_account(CI_ACCOUNT, allow_name_prefix_match=False)
    except KeyError:
        client.create_service_account(CI_ACCOUNT, description="CI: exports ZENML_STORE_API_KEY (labelspace team env --ci)")
    keys = {key.name: key for key in client.list_api_keys(CI_ACCOUNT, size=100).items}
    if spec["new_ci_key"] or CI_ACCOUNT not in keys:
        if CI_ACCOUNT in keys:
            client.delete_api_key(CI_ACCOUNT, CI_ACCOUNT)
        ci_key = client.create_api_key(CI_ACCOUNT, CI_ACCOUNT, description="labelspace team env --ci").key
    secret_values = {
        S3_SECRET: {"aws_access_key_id": spec["s3_access_key_id"], "aws_secret_access_key": spec["s3_secret_access_key"]},
    }
    # The tracker's MLflow login is each login's private secret (labelspace.deploy.users): a public one of
    # the same name, as older stacks had, would be read first and make every run act as its login.
    for public in client.list_secrets(name=f"equals:{MLFLOW_SECRET}", private=False).items:
        client.delete_secret(str(public.id))
    for name, values in secret_values.items():
        try:
            existing = client.get_secret(name, allow_partial_name_match=False, allow_partial_id_match=False)
        except KeyError:
            client.create_secret(name, values, private=False)  # every member's runs read it
            continue
        if existing.secret_values != values:
            client.update_secret(name, add_or_update_values=values)
    components = {
        ARTIFACT_STORE: (StackComponentType.ARTIFACT_STORE, "s3", {
            "path": f"s3://{spec['bucket']}", "authentication_secret": S3_SECRET,
            "client_kwargs": {"endpoint_url": spec["s3_endpoint"], "region_name": spec["region"]},
            "config_kwargs": {"s3": {"addressing_style": "path"}}}),
        TRACKER: (StackComponentType.EXPERIMENT_TRACKER, "mlflow", {
            "tracking_uri": spec["mlflow_uri"], "tracking_username": f"{{{{{MLFLOW_SECRET}.username}}}}",
            "tracking_password": f"{{{{{MLFLOW_SECRET}.password}}}}"}),
        REGISTRY: (StackComponentType.MODEL_REGISTRY, "mlflow", {}),
    }
    for name, (kind, flavor, configuration) in components.items():
        try:
            existing = client.get_stack_component(kind, name, allow_name_prefix_match=False)
        except KeyError:
            client.create_stack_component(name=name, flavor=flavor, component_type=kind, configuration=configuration)
            continue
        if any(existing.configuration.get(k) != v for k, v in configuration.items()):
            client.update_stack_component(name, kind, configuration=configuration)
    try:
        client.get_stack(TEAM_STACK, allow_name_prefix_match=False)
    except KeyError:
        client.create_stack(name=TEAM_STACK, components={
            StackComponentType.ORCHESTRATOR: "default", StackComponentType.ARTIFACT_STORE: ARTIFACT_STORE,
            StackComponentType.EXPERIMENT_TRACKER: TRACKER, StackComponentType.MODEL_REGISTRY: REGISTRY})
    return {"stack": TEAM_STACK, "ci_api_key": ci_key}




def use_team_stack(tracking_uri: str) -> str:
    """Activate the team's stack on the ZenML server this client is logged in to; returns its name."""
    keep_zenml_config_private()
    from zenml.client import Client
    from zenml.enums import StackComponentType

    client = Client()
    try:
        stack = client.get_stack(TEAM_STACK, allow_name_prefix_match=False)
    except KeyError:
        raise TeamError(f"the ZenML server at {os.environ.get('ZENML_STORE_URL')} has no stack {TEAM_STACK!r}: "
                        "`labelspace team up` registers it; ask whoever runs the team stack to run it") from None
    trackers = stack.components.get(StackComponentType.EXPERIMENT_TRACKER) or []
    if trackers and trackers[0].configuration.get("tracking_uri") != tracking_uri:
        log.warning("the team stack's MLflow tracker points at %s, this shell's MLflow at %s: runs are tracked on "
                    "the first; export the MLflow variables of `labelspace team env`",
                    trackers[0].configuration.get("tracking_uri"), tracking_uri)
    if client.active_stack_model.id != stack.id:
        client.activate_stack(stack.id)
    keep_zenml_config_private()  # the files the login just wrote
    return TEAM_STACK


def main() -> int:
    spec = json.loads(sys.stdin.read())
    print(json.dumps(register_team_stack(spec)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
