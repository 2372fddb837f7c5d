"""The ZenML side of a champion move: ZenML's model version stages follow the MLflow aliases
(labelspace.lifecycle.champion calls the hook; the gate step and `labelspace promote` pass it)."""

from zenml.client import Client
from zenml.enums import ModelStages


def zenml_stage_hook(promoted, replaced) -> str:
    """ZenML's model versions follow a champion move: `production` for the MLflow version now champion
    (ZenML archives the one that was), `archived` for the one it replaced. The MLflow versions name their
    ZenML model version in the tags zenml.model_name / zenml.model_version. Returns what was done."""
    notes = []
    for version, stage in ((promoted, ModelStages.PRODUCTION), (replaced, ModelStages.ARCHIVED)):
        if version is None:
            continue
        name, number = version.tags.get("zenml.model_name"), version.tags.get("zenml.model_version")
        if not name or not number or "unknown" in (name, number):
            notes.append(f"MLflow version {version.version} names no ZenML model version")
            continue
        try:
            Client().update_model_version(name, number, stage=stage, force=True)
        except (KeyError, ValueError, RuntimeError) as e:
            notes.append(f"ZenML model {name} version {number} not updated ({str(e).splitlines()[0][:200]})")
            continue
        notes.append(f"ZenML model {name} version {number}: {stage.value}")
    return "; ".join(notes)
