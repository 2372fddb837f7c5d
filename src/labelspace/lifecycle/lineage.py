"""Lineage of a model version: which data, code, parameters, pipeline run and weights produced it.

Every registered version carries these as tags, so an auditor can answer "where did this model come
from" from the registry alone, and the pipeline can tell that nothing changed since the last one.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import labelspace

UNKNOWN = "unknown"

LINEAGE_KEYS = (
    "data.dataset_version",
    "data.vectors_version",
    "code.git_commit",
    "code.git_dirty",
    "params.hash",
    "zenml.run_id",
    "model.backbone",
    "model.weights_hash",
)


def _git(repo_root: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(repo_root), *args], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def code_version(repo_root: str | os.PathLike) -> dict[str, str]:
    """{'git_commit': HEAD sha, 'git_dirty': 'true'|'false'}; both 'unknown' outside a git checkout.

    Dirty means tracked files differ from HEAD (as `git describe --dirty`); untracked files do not
    count, so a stray notebook or output file does not mark every model dirty.
    """
    root = Path(repo_root)
    commit = _git(root, "rev-parse", "HEAD")
    if not commit:
        return {"git_commit": UNKNOWN, "git_dirty": UNKNOWN}
    status = _git(root, "status", "--porcelain", "--untracked-files=no")
    dirty = UNKNOWN if status is None else str(bool(status)).lower()
    return {"git_commit": commit, "git_dirty": dirty}


def code_checkout(project_root: str | os.PathLike) -> Path:
    """The git checkout holding the code that runs: the labelspace source itself when it is installed
    from a checkout (editable), else the project folder (a non-editable install records its version)."""
    source = Path(labelspace.__file__).resolve().parents[2]
    return source if _git(source, "rev-parse", "--show-toplevel") else Path(project_root)


def _text(value: object) -> str:
    text = "" if value is None else str(value)
    return text if text else UNKNOWN


def lineage_tags(
    *,
    dataset_version: str,
    vectors_version: str,
    params_hash: str,
    zenml_run_id: str,
    backbone: str,
    weights_hash: str,
    repo_root: str | os.PathLike,
    zenml_model_name: str | None = None,
    zenml_model_version: str | None = None,
    extra: dict[str, object] | None = None,
) -> dict[str, str]:
    """Tags for a model version, every value a string ('unknown' where a value is missing).

    The keys in LINEAGE_KEYS are always present; the ZenML model link and `extra` are added when given.
    """
    code = code_version(code_checkout(repo_root))
    project = code_version(repo_root)
    tags = {
        "data.dataset_version": _text(dataset_version),
        "data.vectors_version": _text(vectors_version),
        "code.git_commit": code["git_commit"],
        "code.git_dirty": code["git_dirty"],
        "params.hash": _text(params_hash),
        "zenml.run_id": _text(zenml_run_id),
        "model.backbone": _text(backbone),
        "model.weights_hash": _text(weights_hash),
        "code.labelspace_version": labelspace.__version__,
        "project.git_commit": project["git_commit"],
    }
    if zenml_model_name is not None:
        tags["zenml.model_name"] = _text(zenml_model_name)
    if zenml_model_version is not None:
        tags["zenml.model_version"] = _text(zenml_model_version)
    for key, value in (extra or {}).items():
        tags[str(key)] = _text(value)
    return tags
