"""The one place that reads params.yaml, shared by DVC stages, ZenML steps and the CLI."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import yaml

PARAMS_ENV = "LABELSPACE_PARAMS"


def find_params_file(start: str | os.PathLike | None = None) -> Path:
    """params.yaml named by $LABELSPACE_PARAMS, else the nearest one at or above `start` (cwd)."""
    if os.environ.get(PARAMS_ENV):
        path = Path(os.environ[PARAMS_ENV])
        if not path.is_file():
            raise FileNotFoundError(f"{PARAMS_ENV}={path} does not exist: point it at a params.yaml")
        return path
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "params.yaml").is_file():
            return folder / "params.yaml"
    raise FileNotFoundError(
        f"no params.yaml in {here} or above: run from the project root or set {PARAMS_ENV}"
    )


def load_params(path: str | os.PathLike | None = None) -> dict[str, Any]:
    path = Path(path) if path else find_params_file()
    with open(path, encoding="utf-8") as f:
        params = yaml.safe_load(f) or {}
    if not isinstance(params, dict):
        raise ValueError(f"{path} must hold a mapping of sections, got {type(params).__name__}")
    return params


def section(params: dict[str, Any], name: str) -> dict[str, Any]:
    if name not in params:
        raise KeyError(f"params.yaml has no '{name}' section (sections: {', '.join(sorted(params))})")
    return params[name]


def params_hash(params: dict[str, Any]) -> str:
    """Stable short hash of a params dict, recorded as lineage on every model version."""
    blob = json.dumps(params, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
