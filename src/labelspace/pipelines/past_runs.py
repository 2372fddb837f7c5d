"""What past runs of the ZenML pipeline hold, read back through ZenML's client (the one place outside
the steps that asks ZenML): the BCE baseline a registered version was trained beside."""

from __future__ import annotations

from labelspace.console import keep_one_console_handler
from labelspace.model.bundle import TrainedModel


def load_baseline(tags: dict[str, str]) -> tuple[TrainedModel | None, str]:
    """The BCE baseline trained beside the version, from its ZenML run; (None, why) when it cannot be read."""
    run_id = tags.get("zenml.run_id", "")
    if not run_id or run_id == "unknown":
        return None, "the version has no zenml.run_id tag"
    try:
        from labelspace.app import prepare_environment

        prepare_environment()
        from zenml.client import Client

        keep_one_console_handler()  # importing ZenML added its own
        step = Client().get_pipeline_run(run_id).steps["train_baseline"]
        artifact = step.outputs["model"]
        model = (artifact[0] if isinstance(artifact, list) else artifact).load()
    except Exception as e:  # a deleted run, another ZenML store: the analyses go on without the baseline
        return None, f"the BCE baseline of ZenML run {run_id} could not be read ({type(e).__name__}: {e})"
    if not isinstance(model, TrainedModel) or model.head != "bce":
        return None, f"ZenML run {run_id}'s train_baseline output is not a BCE TrainedModel"
    return model, f"BCE baseline from ZenML run {run_id}"
