"""The served model's limits and the server's file access, as a serving process sees them.

The limits are params.yaml's `serving` section (config.ServingConfig), written into the model when it
is logged (the pyfunc's `model_config`). An operator overrides any one at serve time, without
re-logging, with LABELSPACE_SERVING_<KEY>: LABELSPACE_SERVING_MAX_IMAGE_PIXELS,
LABELSPACE_SERVING_MAX_REQUEST_PIXELS, LABELSPACE_SERVING_MAX_IMAGE_BYTES, LABELSPACE_SERVING_MAX_IMAGES,
LABELSPACE_SERVING_MAX_LABELS. A bad value stops the model from loading, with a message naming it.

An `image` cell may name a file on the server only where the server sets
LABELSPACE_SERVING_READ_FILES=1, and then only a file under LABELSPACE_SERVING_ROOT.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from labelspace.config import ServingConfig

ENV_PREFIX = "LABELSPACE_SERVING_"
READ_FILES_ENV = "LABELSPACE_SERVING_READ_FILES"  # "1": an `image` cell may be a path under the root below
ROOT_ENV = "LABELSPACE_SERVING_ROOT"  # the only folder the server reads images from


def limit_names() -> list[str]:
    return [f.name for f in dataclasses.fields(ServingConfig)]


def env_name(key: str) -> str:
    return ENV_PREFIX + key.upper()


def serving_limits(model_config: dict[str, Any] | None) -> ServingConfig:
    """The model's limits (`model_config`, written at log time), each overridden by its
    LABELSPACE_SERVING_<KEY> variable when that is set. A model logged before the limits existed
    takes the ones of the project's params.yaml."""
    names = limit_names()
    values = {key: value for key, value in (model_config or {}).items() if key in names}
    for key in names:
        raw = os.environ.get(env_name(key), "").strip()
        if raw:
            try:
                values[key] = int(raw.replace("_", ""))
            except ValueError:
                raise ValueError(f"{env_name(key)}={raw!r} is not an integer; unset it or give a whole number") from None
    missing = [key for key in names if key not in values]
    if missing:
        from labelspace.config import load_config

        try:
            project = load_config().serving
        except FileNotFoundError:
            raise ValueError(
                f"the model carries no serving limit {', '.join(missing)} and there is no params.yaml here: "
                f"set {', '.join(env_name(k) for k in missing)}"
            ) from None
        values = {**dataclasses.asdict(project), **values}
    bad = next((k for k in names if isinstance(values[k], bool) or not isinstance(values[k], int)), None)
    if bad is not None:
        raise ValueError(f"serving limit {bad} = {values[bad]!r} is not an integer")
    limits = ServingConfig(**{key: values[key] for key in names})
    problems = limits.check()
    if problems:
        key, allowed = next(iter(problems.items()))
        source = env_name(key) if os.environ.get(env_name(key), "").strip() else f"the model's serving limit {key}"
        raise ValueError(f"{source} = {getattr(limits, key)} must be {allowed}")
    return limits


def file_root() -> Path | None:
    """The folder `image` cells may name files under, or None when the server reads no files."""
    flag = os.environ.get(READ_FILES_ENV, "").strip()
    if flag in ("", "0"):
        return None
    if flag != "1":
        raise ValueError(f"{READ_FILES_ENV}={flag!r}: set it to 1 (read images under {ROOT_ENV}) or 0")
    root = os.environ.get(ROOT_ENV, "").strip()
    if not root:
        raise ValueError(f"{READ_FILES_ENV}=1 needs {ROOT_ENV}, the one folder the server may read images from")
    path = Path(root).resolve()
    if not path.is_dir():
        raise ValueError(f"{ROOT_ENV}={root} is not a folder")
    return path
