"""Shared test set-up: telemetry off, no hub downloads, and ZenML/MLflow isolated per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

for _key, _value in {
    "ZENML_ANALYTICS_OPT_IN": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "DVC_NO_ANALYTICS": "1",
    "HF_HUB_OFFLINE": "1",
    "ZENML_LOGGING_VERBOSITY": "WARN",
}.items():
    os.environ[_key] = _value

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session", autouse=True)
def _torch_threads():
    import torch

    torch.set_num_threads(2)
    torch.manual_seed(0)
