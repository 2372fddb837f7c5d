"""The one place that decides where MLflow keeps runs, models and artifacts.

$MLFLOW_TRACKING_URI wins (a team's `mlflow server`, or a test's sqlite file). Otherwise the project
keeps a sqlite database at `<project>/mlflow/mlflow.db` with artifacts beside it in
`<project>/mlflow/artifacts`, so nothing ever lands in an `./mlruns` of whatever folder a command
happens to run from.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote, urlparse

from labelspace import app

TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
REGISTRY_URI_ENV = "MLFLOW_REGISTRY_URI"


def project_root(root: str | os.PathLike | None = None) -> Path:
    """The project folder (labelspace.app.project_root), with a hint about $MLFLOW_TRACKING_URI."""
    try:
        return app.project_root(root)
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"cannot tell which MLflow backend to use: {e}; or set {TRACKING_URI_ENV} "
            "(e.g. http://host:5000 for a team's mlflow server)"
        ) from None


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///...` URI; None for any other backend or an in-memory db."""
    if not uri.startswith("sqlite:"):
        return None
    path = unquote(urlparse(uri).path)
    # sqlite:///rel.db has path "/rel.db"; sqlite:////abs.db has path "//abs.db".
    path = path[1:] if path.startswith("/") else path
    return None if path in ("", ":memory:") else Path(path)


def tracking_uri(root: str | os.PathLike | None = None) -> str:
    """$MLFLOW_TRACKING_URI if set, else `sqlite:///<root>/mlflow/mlflow.db` (its folder created)."""
    if os.environ.get(TRACKING_URI_ENV):
        return os.environ[TRACKING_URI_ENV]
    folder = project_root(root) / "mlflow"
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'mlflow.db'}"


def artifact_root(root: str | os.PathLike | None = None) -> str:
    """File URI of the artifact folder for experiments created against a local sqlite backend.

    It sits beside the database (`<root>/mlflow/artifacts` for the project default), so a sqlite
    file named by $MLFLOW_TRACKING_URI keeps its artifacts next to it rather than in the project.
    """
    db = sqlite_path(tracking_uri(root))
    folder = db.resolve().parent / "artifacts" if db is not None else project_root(root) / "mlflow" / "artifacts"
    folder.mkdir(parents=True, exist_ok=True)
    return folder.as_uri()


def configure_mlflow(root: str | os.PathLike | None = None) -> str:
    """Point mlflow's tracking and registry at the project backend; returns the tracking URI."""
    import mlflow

    uri = tracking_uri(root)
    db = sqlite_path(uri)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
    exported = {key: os.environ.get(key) for key in (TRACKING_URI_ENV, REGISTRY_URI_ENV)}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(exported[REGISTRY_URI_ENV] or uri)
    # mlflow exports both URIs to the environment; undo that, so $MLFLOW_TRACKING_URI keeps meaning
    # "the user chose a backend" and a later configure_mlflow(other_root) is not pinned to this one.
    for key, value in exported.items():
        if value is None:
            os.environ.pop(key, None)
    return uri


def ensure_experiment(name: str, root: str | os.PathLike | None = None) -> str:
    """Id of experiment `name`, created if missing (and restored if deleted).

    On a local sqlite backend a new experiment gets `artifact_root()` as its artifact location;
    MLflow's default there is `./mlruns` relative to the cwd. A tracking server chooses its own
    (`--artifacts-destination`), so nothing is forced there.
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    uri = configure_mlflow(root)
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment.experiment_id)
        return experiment.experiment_id
    location = artifact_root(root) if sqlite_path(uri) is not None else None
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException:
        # Another process (a parallel pipeline run) may have created it since we looked.
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


# ---------------------------------------------------------------- what the pipeline steps log


def _metric_name(key: str) -> str:
    return key.replace("-", "_")


def log_ingest_report(report: dict) -> dict[str, float]:
    """Every skipped image and stray label value (file and line) as a JSON artifact of the active
    run, and the counts as metrics; returns the counts."""
    import mlflow

    counts = {k: float(v) for k, v in report.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    mlflow.log_dict(report, "data/ingest_report.json")
    mlflow.log_metrics({f"ingest_{k}": v for k, v in counts.items()})
    return counts


class TrainingLogger:
    """MLflow logging of one head's training: its config as params, its curves as metrics by epoch."""

    def __init__(self, head: str) -> None:
        self.head = head

    def on_epoch(self, epoch: int, record: dict[str, float]) -> None:
        import mlflow

        mlflow.log_metrics({f"{self.head}/{k}": float(v) for k, v in record.items() if k != "epoch"}, step=epoch)

    def calibration(self, calibration: dict) -> None:
        import mlflow

        if not calibration:
            return
        mlflow.log_metrics({f"{self.head}/calibration_{k}": float(v) for k, v in calibration.items()
                            if isinstance(v, float)})
        mlflow.log_metrics({f"{self.head}/val_threshold_{_metric_name(k)}": float(v)
                            for k, v in calibration["validation"].items()})

    def open_words(self, fitted: dict[str, float]) -> None:
        """The offset κ words never trained on were fitted with (labelspace.training.fit._fit_open_words),
        and what the held-out labels cost the training labels on validation before and after."""
        import mlflow

        if fitted:
            mlflow.log_metrics({f"{self.head}/open_words_{k}": float(v) for k, v in fitted.items()})


def log_training(head: str, sections: dict) -> TrainingLogger:
    """Log `sections` (config dataclasses by name) as `<head>.<section>.<key>` params."""
    import dataclasses

    import mlflow

    mlflow.log_params({f"{head}.{name}.{k}": v for name, section in sections.items()
                       for k, v in dataclasses.asdict(section).items()})
    return TrainingLogger(head)


def log_evaluation(report: dict, files: list) -> dict[str, float]:
    """The report's numbers as metrics, the report and plots as artifacts; returns the flat metrics."""
    import mlflow

    from labelspace.evaluation.report import flat_metrics

    zero_shot = {k: v for k, v in report["zero_shot"].items() if k != "positives_per_label"}
    flat = {**flat_metrics(report["labelspace"], "labelspace"), **flat_metrics(report["bce"], "bce"),
            **flat_metrics(zero_shot, "zero_shot")}
    flat = {_metric_name(k): v for k, v in flat.items()}
    mlflow.log_metrics(flat)
    for path in files:
        mlflow.log_artifact(str(path), artifact_path="plots" if str(path).endswith(".png") else "reports")
    return flat
