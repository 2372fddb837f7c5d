"""The application boundary: where the project is, what its params.yaml says, the process environment.

Every command and pipeline starts here. A project is a folder holding `params.yaml` (or the file
named by $LABELSPACE_PARAMS); relative paths in it are relative to that folder, whatever the cwd.
Telemetry of ZenML, MLflow, DVC and the Hugging Face hub is switched off before any of them loads.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

PARAMS_ENV = "LABELSPACE_PARAMS"

TELEMETRY_OFF = {
    "ZENML_ANALYTICS_OPT_IN": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "DVC_NO_ANALYTICS": "1",
    "HF_HUB_OFFLINE": "1",
}


def telemetry_off() -> None:
    for key, value in TELEMETRY_OFF.items():
        os.environ.setdefault(key, value)


def find_params_file(start: str | os.PathLike | None = None) -> Path:
    """params.yaml named by $LABELSPACE_PARAMS, else the nearest one at or above `start` (cwd)."""
    if os.environ.get(PARAMS_ENV):
        path = Path(os.environ[PARAMS_ENV])
        if not path.is_file():
            raise FileNotFoundError(f"{PARAMS_ENV}={path} does not exist: point it at a params.yaml")
        return path.resolve()
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "params.yaml").is_file():
            return folder / "params.yaml"
    raise FileNotFoundError(
        f"no params.yaml in {here} or above: run from a project folder (one holding params.yaml) "
        f"or set {PARAMS_ENV}"
    )


def project_root(root: str | os.PathLike | None = None) -> Path:
    """`root` when given, else the folder of the params.yaml found from the cwd upward."""
    return Path(root).resolve() if root is not None else find_params_file().parent


def resolve_path(path: str | os.PathLike, root: str | os.PathLike | None = None) -> Path:
    """An absolute path: `path` as given when absolute, else relative to the project root."""
    p = Path(path)
    return (p if p.is_absolute() else project_root(root) / p).resolve()


def params_hash(params: dict[str, Any]) -> str:
    """Stable short hash of a params dict, recorded as lineage on every model version."""
    blob = json.dumps(params, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def prepare_environment() -> Path:
    """Telemetry off, ZenML's store inside the project unless the team points it elsewhere (a ZenML
    server, `ZENML_CONFIG_PATH`); returns the project root. Call before importing ZenML."""
    telemetry_off()
    root = project_root()
    os.environ.setdefault("ZENML_CONFIG_PATH", str(root / ".zenml"))
    os.environ.setdefault("ZENML_LOGGING_VERBOSITY", "WARN")
    quiet_artifact_downloads()
    return root


def quiet_artifact_downloads() -> None:
    """MLflow draws a tqdm bar for every artifact it downloads; written to a log (DVC's, CI's) that is
    one line per file, over a hundred for `labelspace analyze`. Off unless progress is drawn as bars."""
    from labelspace.progress import progress_mode

    if progress_mode() != "bar":
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
