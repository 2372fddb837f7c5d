"""What a training run would be made of now: the data, vectors, code and params versions, and how they
compare with the lineage tags of a registered version (the no-op test of `labelspace retrain`).

The code version is the hash of the source that shapes the weights (`code.source_hash`, a lineage
tag of every version since the lifecycle issue; SOURCE_PARTS): the data path, the model, training,
the steps and pipelines, the config. It is shown with the git commit and dirty flag, which it
replaces as the test because a commit that changes none of that source (documentation, tests, the
serving or lifecycle code) is no reason to train, and an uncommitted edit of it is one, which the
commit alone cannot tell. Code outside SOURCE_PARTS cannot change the weights, and the registry never
registers the same weights twice (model.content_hash), so retraining for it would register nothing.
A version registered before `code.source_hash` existed is compared by commit, and only when its
checkout was clean.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import labelspace

# lineage tag -> the key of current_versions() it is compared with
COMPARED = {
    "data.dataset_version": "dataset_version",
    "data.vectors_version": "vectors_version",
    "params.hash": "params_hash",
    "code.source_hash": "source_hash",
}


# What produces the weights, relative to the package folder.
SOURCE_PARTS = ("__init__.py", "app.py", "config.py", "choices.py", "data", "model", "training", "steps", "pipelines")


def source_hash() -> str:
    """sha256 (16 hex digits) over the path and bytes of every .py file of SOURCE_PARTS of the running package."""
    root = Path(labelspace.__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        if "__pycache__" in path.parts or relative.parts[0] not in SOURCE_PARTS:
            continue
        h.update(path.relative_to(root).as_posix().encode() + b"\0")
        h.update(path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def input_paths(config, *, dataset: str | None = None, vectors: str | None = None) -> tuple[Path, Path]:
    """The dataset and word-vector paths a run of `config` reads (`dataset`/`vectors` override the
    config's), checked to exist, with what to do when one does not."""
    dataset_path = config.resolve(dataset or config.ingest.dataset)
    vectors_path = config.resolve(vectors or config.vectors.path)
    for what, path, fix in (("dataset", dataset_path, "run `dvc repro sample` or pass --dataset"),
                            ("word vectors", vectors_path, "run `dvc repro vectors` or pass --vectors")):
        if not path.exists():
            raise FileNotFoundError(f"{what} {path} does not exist: {fix}")
    return dataset_path, vectors_path


def current_versions(config, *, dataset: str | None = None, vectors: str | None = None) -> dict[str, Any]:
    """The versions a run of `config` (labelspace.config.Config) would record, computed without training."""
    from labelspace.data.dvc_versions import dataset_version
    from labelspace.lifecycle.lineage import code_checkout, code_version

    dataset_path, vectors_path = input_paths(config, dataset=dataset, vectors=vectors)
    code = code_version(code_checkout(config.root))
    return {"dataset": str(dataset_path), "vectors": str(vectors_path),
            "dataset_version": dataset_version(dataset_path, config.root),
            "vectors_version": dataset_version(vectors_path, config.root),
            "params_hash": config.hash, "source_hash": source_hash(),
            "git_commit": code["git_commit"], "git_dirty": code["git_dirty"]}


def lineage_differences(tags: dict[str, str], now: dict[str, Any]) -> list[str]:
    """What differs between a version's lineage `tags` and `now` (current_versions); [] = nothing."""
    differences = []
    for tag, key in COMPARED.items():
        if tag == "code.source_hash" and tag not in tags:
            if tags.get("code.git_commit") != now["git_commit"] or tags.get("code.git_dirty") != "false" \
                    or now["git_dirty"] != "false":
                differences.append(f"code: commit {tags.get('code.git_commit', '?')[:12]} "
                                   f"(dirty {tags.get('code.git_dirty', '?')}) -> {now['git_commit'][:12]} "
                                   f"(dirty {now['git_dirty']})")
            continue
        if tags.get(tag) != str(now[key]):
            differences.append(f"{tag}: {tags.get(tag, 'not recorded')} -> {now[key]}")
    return differences
