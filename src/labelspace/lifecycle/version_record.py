"""MLflow glue of the analyses and model cards: load a registered version with everything its card
needs, and log analyses and cards back to the version's run, linked from the version's description.

A version is named `N` or `@ALIAS`. What is read: the version (tags, aliases, description), its run
(params, metrics, `reports/metrics.json` and `plots/` from evaluation, `analysis/` from `labelspace
analyze`), and the model bundle inside the logged model (`artifacts/bundle/`). The BCE baseline is
not registered: it is read from the ZenML run named by the version's `zenml.run_id` tag, when that
run is still in the ZenML store.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from labelspace.lifecycle.tracking import configure_mlflow, sqlite_path
from labelspace.model.bundle import TrainedModel

log = logging.getLogger(__name__)

CARD_MARKER = "Model card:"  # the line of a version's description that links its card
ANALYSIS_DIR, CARD_DIR = "analysis", "card"


@dataclass
class VersionRecord:
    """One registered version and what its run holds."""

    name: str
    version: Any  # mlflow ModelVersion
    run: Any  # mlflow Run
    bundle: TrainedModel
    tracking_uri: str
    report: dict[str, Any] | None = None
    analysis: dict[str, Any] | None = None
    plots: dict[str, bytes] = field(default_factory=dict)

    @property
    def run_id(self) -> str:
        return self.version.run_id

    @property
    def tags(self) -> dict[str, str]:
        return dict(self.version.tags or {})

    def card_inputs(self):
        from labelspace.evaluation.card_render import CardInputs

        created = datetime.fromtimestamp(self.version.creation_timestamp / 1000, tz=UTC)
        return CardInputs(
            model_name=self.name, version=str(self.version.version), aliases=list(self.version.aliases or []),
            created=created.strftime("%Y-%m-%d %H:%M UTC"), run_id=self.run_id or "none",
            tracking_uri=_shown_uri(self.tracking_uri), tags=self.tags, spec=self.bundle.spec.to_dict(),
            labels=list(self.bundle.labels), calibration=dict(self.bundle.calibration or {}),
            params=dict(self.run.data.params) if self.run else {}, epochs=len(self.bundle.history) or None,
            report=self.report, analysis=self.analysis, plots=dict(self.plots))


def _client():
    from mlflow import MlflowClient

    uri = configure_mlflow()
    return MlflowClient(tracking_uri=uri), uri


def _shown_uri(uri: str) -> str:
    """A tracking URI without credentials (user:password@host)."""
    if "@" in uri and "://" in uri:
        scheme, rest = uri.split("://", 1)
        return f"{scheme}://{rest.split('@', 1)[1]}"
    return uri


def get_version(client, name: str, ref: str):
    """The ModelVersion `ref` names: "N" (a version number) or "@ALIAS" (or a bare alias)."""
    from mlflow.exceptions import MlflowException

    from labelspace.lifecycle.registry import (
        PRODUCTION_ALIASES,
        alias_holder,
        candidate_model,
        candidate_of,
        production_model,
    )

    ref = str(ref).strip()
    try:
        if ref.isdigit():
            return client.get_model_version(name, ref)
        alias = ref.removeprefix("@")
        if alias in PRODUCTION_ALIASES and name == candidate_model(name):  # production's alias: the candidate it copies
            held = alias_holder(production_model(name), alias)
            if held is not None:
                return client.get_model_version(name, candidate_of(client, name, held))
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as e:
        if e.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise
        try:
            versions = sorted(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
            aliases = client.get_registered_model(name).aliases or {}  # search results carry no aliases
        except MlflowException:
            versions, aliases = [], {}
        listing = ", ".join(f"{v}" + "".join(f" @{a}" for a, held in sorted(aliases.items()) if str(held) == str(v))
                            for v in versions) or "none: run `make run` first"
        raise ValueError(f"model {name!r} has no version {ref}; its versions are {listing}") from None


def load_version(ref: str, model_name: str = "labelspace", *, with_bundle: bool = True) -> VersionRecord:
    """The version `ref` of `model_name` with its run's report, analysis, plots and (by default) bundle."""
    client, uri = _client()
    version = get_version(client, model_name, ref)
    if version.status != "READY":
        raise ValueError(f"{model_name} version {version.version} is {version.status}, not READY")
    run = client.get_run(version.run_id) if version.run_id else None
    with tempfile.TemporaryDirectory(prefix="labelspace-card-") as tmp:
        bundle = _download_bundle(model_name, version, Path(tmp)) if with_bundle else None
        record = VersionRecord(name=model_name, version=version, run=run, bundle=bundle, tracking_uri=uri)
        if run is not None:
            record.report = _json_artifact(client, run.info.run_id, "reports/metrics.json", Path(tmp))
            record.analysis = _json_artifact(client, run.info.run_id, f"{ANALYSIS_DIR}/analysis.json", Path(tmp))
            for folder in ("plots", ANALYSIS_DIR):
                record.plots.update(_png_artifacts(client, run.info.run_id, folder, Path(tmp)))
    return record


def _download_bundle(name: str, version, tmp: Path) -> TrainedModel:
    import mlflow

    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version.version}",
                                                     dst_path=str(tmp / "model")))
    folder = local / "artifacts" / "bundle"
    if not folder.is_dir():
        raise ValueError(f"{name} version {version.version} holds no labelspace bundle (artifacts/bundle/): "
                         "it was not logged by labelspace's register step")
    return TrainedModel.load(folder)


def _json_artifact(client, run_id: str, path: str, tmp: Path) -> dict[str, Any] | None:
    parent = path.rsplit("/", 1)[0]
    if path not in {f.path for f in client.list_artifacts(run_id, parent)}:
        return None
    local = client.download_artifacts(run_id, path, str(tmp))
    return json.loads(Path(local).read_text(encoding="utf-8"))


def _png_artifacts(client, run_id: str, folder: str, tmp: Path) -> dict[str, bytes]:
    out = {}
    for item in client.list_artifacts(run_id, folder):
        if not item.is_dir and item.path.endswith(".png"):
            out[Path(item.path).name] = Path(client.download_artifacts(run_id, item.path, str(tmp))).read_bytes()
    return out


# ---------------------------------------------------------------- logging back


def log_analysis(record: VersionRecord, files: list[Path], metrics: dict[str, float]) -> None:
    """The analysis files as artifacts `analysis/` of the version's run, and its numbers as metrics."""
    from mlflow.entities import Metric

    client, _ = _client()
    for path in files:
        client.log_artifact(record.run_id, str(path), ANALYSIS_DIR)
    now = int(time.time() * 1000)
    items = [Metric(key, float(value), now, 0) for key, value in sorted(metrics.items())]
    for start in range(0, len(items), 200):
        client.log_batch(record.run_id, metrics=items[start : start + 200])


def log_card(record: VersionRecord, folder: Path) -> str:
    """model_card.md/.html and plots/ as artifacts `card/` of the version's run; the version's description
    gets (or has updated) a line linking the HTML card. Returns that link."""
    client, uri = _client()
    client.log_artifacts(record.run_id, str(folder), CARD_DIR)
    link = card_link(record, client, uri)
    description = with_card_link(record.version.description or "", link)
    client.update_model_version(record.name, record.version.version, description=description)
    return link


def card_link(record: VersionRecord, client, uri: str) -> str:
    """Where a person opens the HTML card: the MLflow UI's artifact page on a server, the file otherwise."""
    path = f"{CARD_DIR}/model_card.html"
    if uri.startswith(("http://", "https://")):
        experiment = record.run.info.experiment_id
        return f"{_shown_uri(uri).rstrip('/')}/#/experiments/{experiment}/runs/{record.run_id}/artifactPath/{path}"
    artifact_uri = client.get_run(record.run_id).info.artifact_uri.rstrip("/")
    if artifact_uri.startswith("file:") or sqlite_path(uri) is not None:
        return f"{artifact_uri}/{path}"
    return f"runs:/{record.run_id}/{path}"


def with_card_link(description: str, link: str) -> str:
    """`description` with its model-card line replaced by (or ended with) one linking `link`."""
    kept = [line for line in description.splitlines() if not line.startswith(CARD_MARKER)]
    while kept and not kept[-1].strip():
        kept.pop()
    return "\n".join([*kept, "", f"{CARD_MARKER} [{CARD_DIR}/model_card.html]({link})"]).lstrip("\n")


def flat_analysis_metrics(metrics: dict[str, Any], prefix: str = "analysis") -> dict[str, float]:
    """analysis/metrics.json as MLflow metric names: analysis_committee_vote_top1_O_F1, ..."""
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}_{key}".replace("-", "_")
        if isinstance(value, dict):
            flat.update(flat_analysis_metrics(value, name))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and value == value:
            flat[name] = float(value)
    return flat
