"""The ZenML stack is registered idempotently and follows the MLflow backend, local or a server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import json, logging, sys
    from labelspace.pipelines.stack import STACK, TRACKER, ensure_stack
    from zenml.client import Client
    from zenml.enums import StackComponentType
    seen = []
    for uri in sys.argv[1:]:
        ensure_stack(uri)
        client = Client()
        tracker = client.get_stack_component(StackComponentType.EXPERIMENT_TRACKER, TRACKER)
        seen.append({"active": client.active_stack_model.name, "uri": tracker.configuration["tracking_uri"],
                     "user": tracker.configuration.get("tracking_username"),
                     "n_stacks": len([s for s in client.list_stacks(size=100).items if s.name == STACK])})
    print(json.dumps(seen))
""")


def test_stack_is_idempotent_and_follows_the_tracking_server(tmp_path, repo_root):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "ZENML_"))}
    env.update(ZENML_CONFIG_PATH=str(tmp_path / "zenml"), ZENML_ANALYTICS_OPT_IN="false",
               PYTHONPATH=str(repo_root), MLFLOW_TRACKING_USERNAME="alice", MLFLOW_TRACKING_PASSWORD="s3cret")
    local = f"sqlite:///{tmp_path}/mlflow.db"
    out = subprocess.run([sys.executable, "-c", SCRIPT, local, local, "http://127.0.0.1:5999"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    first, again, server = json.loads(out.stdout.strip().splitlines()[-1])
    assert first == again == {"active": "labelspace", "uri": local, "user": None, "n_stacks": 1}
    # A remote server: ZenML's tracker insists on credentials; MLflow's own variables provide them.
    assert server == {"active": "labelspace", "uri": "http://127.0.0.1:5999", "user": "alice", "n_stacks": 1}
