"""Lineage of a model version: which data, code, parameters, pipeline run, packages and machine produced it.

Every registered version carries these as tags (and its MLflow run the same tags, params.yaml itself
and the installed packages), so an auditor can answer "where did this model come from" from the
registry alone, `labelspace reproduce` can rebuild it, and the pipeline can tell that nothing changed
since the last one. Two hashes name two different weights and say which:

* `backbone.pretrained_hash`: the pretrained backbone file training started from (the same on every
  version with that backbone);
* `model.content_hash`: the trained weights (every tensor of the state dict) and label vocabulary,
  what `reproduce` compares and the registry never registers twice.

`env.*` says what the arithmetic ran on (recorded by the training itself, training.runtime): exact
torch / torchvision / numpy / Python versions, `env.packages_hash` over every installed package,
`env.lock_hash` of the checkout's requirements.lock, the torch thread count, the device (CPU model,
GPU name, CUDA and cuDNN versions) and the processes; `seed.train` the training seed.
"""

from __future__ import annotations

import hashlib
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
    "backbone.pretrained_hash",
)

# Recorded by the training itself (TrainedModel.provenance["runtime"]), as env.<key>.
RUNTIME_KEYS = ("python", "torch", "torchvision", "numpy", "packages_hash", "device", "cpu", "gpu", "cuda", "cudnn",
                "torch_threads", "train_processes")
ENVIRONMENT_KEYS = tuple(f"env.{key}" for key in RUNTIME_KEYS) + ("env.lock_hash", "seed.train")
LOCK_FILE = "requirements.lock"
PACKAGES_ARTIFACT = "lineage/packages.json"
PARAMS_ARTIFACT = "params/params.yaml"


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


def lock_hash(checkout: str | os.PathLike) -> str:
    """sha256 (16 hex digits) of the checkout's requirements.lock, the package set its environment is
    installed from (`make setup`); 'none' where there is no such file."""
    path = Path(checkout) / LOCK_FILE
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() else "none"


def params_path(params_file: Path, checkout: Path) -> str:
    """Where params.yaml lies in the code's checkout (what `reproduce` reads in the recorded commit)."""
    try:
        return params_file.resolve().relative_to(checkout.resolve()).as_posix()
    except ValueError:
        return f"outside the checkout: {params_file}"


def recorded_params(project_root: str | os.PathLike, expected_hash: str) -> tuple[Path, dict] | None:
    """(path, contents) of the params file a run read, found as the run found it ($LABELSPACE_PARAMS, else
    the project's params.yaml), when its hash is still `expected_hash`; None when it changed since."""
    from labelspace.app import find_params_file, params_hash
    from labelspace.config import load_params

    try:
        path = find_params_file(project_root)
    except FileNotFoundError:
        return None
    params = load_params(path)
    return (path, params) if params_hash(params) == expected_hash else None


def lineage_tags(
    *,
    dataset_version: str,
    vectors_version: str,
    params_hash: str,
    zenml_run_id: str,
    backbone: str,
    pretrained_hash: str | None,
    repo_root: str | os.PathLike,
    provenance: dict | None = None,
    params_file: Path | None = None,
    zenml_model_name: str | None = None,
    zenml_model_version: str | None = None,
    extra: dict[str, object] | None = None,
) -> dict[str, str]:
    """Tags for a model version, every value a string ('unknown' where a value is missing).

    The keys in LINEAGE_KEYS and ENVIRONMENT_KEYS are always present (the environment from the
    training's `provenance`, a TrainedModel's); `params.path`, the ZenML model link and `extra` when given.
    """
    checkout = code_checkout(repo_root)
    code = code_version(checkout)
    project = code_version(repo_root)
    provenance = provenance or {}
    runtime = provenance.get("runtime") or {}
    tags = {
        "data.dataset_version": _text(dataset_version),
        "data.vectors_version": _text(vectors_version),
        "code.git_commit": code["git_commit"],
        "code.git_dirty": code["git_dirty"],
        "params.hash": _text(params_hash),
        "zenml.run_id": _text(zenml_run_id),
        "model.backbone": _text(backbone),
        "backbone.pretrained_hash": _text(pretrained_hash),
        "code.labelspace_version": labelspace.__version__,
        "project.git_commit": project["git_commit"],
        **{f"env.{key}": _text(runtime.get(key)) for key in RUNTIME_KEYS},
        "env.lock_hash": lock_hash(checkout),
        "seed.train": _text(provenance.get("seed")),
    }
    if provenance.get("weights_file"):
        tags["backbone.pretrained_file"] = Path(str(provenance["weights_file"])).name
    if params_file is not None:
        tags["params.path"] = params_path(params_file, checkout)
    if zenml_model_name is not None:
        tags["zenml.model_name"] = _text(zenml_model_name)
    if zenml_model_version is not None:
        tags["zenml.model_version"] = _text(zenml_model_version)
    for key, value in (extra or {}).items():
        tags[str(key)] = _text(value)
    return tags


def record_on_run(tags: dict[str, str], *, packages: dict[str, str] | None, params: dict | None) -> None:
    """The version's lineage on its MLflow run too (the active one): the same tags, the installed
    packages (`lineage/packages.json`, what `reproduce` lists differences from) and params.yaml itself."""
    import mlflow

    mlflow.set_tags({k: v[:5000] for k, v in tags.items()})
    if packages:
        mlflow.log_dict(packages, PACKAGES_ARTIFACT)
    if params is not None:
        mlflow.log_dict(params, PARAMS_ARTIFACT)
