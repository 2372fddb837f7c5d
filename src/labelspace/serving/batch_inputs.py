"""What a batch inference run scores (serving.batch): the images of a folder or of a list, and the
data version written beside their predictions."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp")


@dataclass
class BatchInput:
    """The images of a run: `ids` as written in the output (relative to `root`, forward slashes)."""

    root: Path
    ids: list[str]
    source: str
    listed: int
    skipped: list[dict[str, str]] = field(default_factory=list)  # listed but not there: missing, duplicate
    ignored_files: int = 0  # files under --images whose suffix is not an image's


def images_in(folder: str | os.PathLike) -> BatchInput:
    """Every file under `folder` with an image suffix (jpg, jpeg, png, webp, gif, bmp), sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"--images {folder} is not a folder")
    ids, ignored = [], 0
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if path.suffix.lower() in IMAGE_SUFFIXES:
            ids.append(path.relative_to(folder).as_posix())
        else:
            ignored += 1
    return BatchInput(root=folder, ids=ids, source=f"images {folder}", listed=len(ids), ignored_files=ignored)


def images_of_manifest(manifest: str | os.PathLike, root: str | os.PathLike | None = None,
                       split: str | None = None) -> BatchInput:
    """The images a list names: a `labelspace ingest` manifest (.parquet with a `path` column, and
    `split`), or a text file with one path per line (blank lines and `#` comments skipped; backslashes
    read as slashes, as in NUS-WIDE's image lists). Paths are relative to `root`: by default the
    dataset folder in the ingest report beside the manifest, else the manifest's folder."""
    manifest = Path(manifest)
    if not manifest.is_file():
        raise FileNotFoundError(f"--manifest {manifest} does not exist")
    if manifest.suffix == ".parquet":
        import pandas as pd

        table = pd.read_parquet(manifest)
        if "path" not in table.columns:
            raise ValueError(f"{manifest} has no column 'path': give a labelspace ingest manifest or a text list")
        if split is not None:
            if "split" not in table.columns:
                raise ValueError(f"--split {split}: {manifest} has no column 'split'")
            table = table[table["split"] == split]
        paths = [str(p) for p in table["path"]]
        if root is None:
            report = manifest.with_name(manifest.name.removesuffix(".parquet") + ".report.json")
            if report.is_file():
                root = json.loads(report.read_text(encoding="utf-8")).get("root")
    else:
        if split is not None:
            raise ValueError("--split needs a labelspace ingest manifest (.parquet); a text list has no splits")
        lines = manifest.read_text(encoding="utf-8-sig", errors="replace").splitlines()
        paths = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    root = Path(root) if root is not None else manifest.parent
    if not root.is_dir():
        raise FileNotFoundError(f"--root {root} is not a folder")
    ids, skipped, seen = [], [], set()
    for raw in paths:
        rel = raw.replace("\\", "/")
        if rel in seen:
            skipped.append({"image": rel, "reason": "duplicate", "message": "listed more than once; scored once"})
            continue
        seen.add(rel)
        if not (root / rel).is_file():
            skipped.append({"image": rel, "reason": "missing_file", "message": f"no file {rel} under the root"})
            continue
        ids.append(rel)
    return BatchInput(root=root, ids=ids, source=f"manifest {manifest}", listed=len(paths), skipped=skipped)


def inputs_fingerprint(inputs: BatchInput) -> str:
    """Hash of the images' names, sizes and modification times: what was scored."""
    h = hashlib.sha256(str(inputs.root.resolve()).encode())
    for rel in inputs.ids:
        st = (inputs.root / rel).stat()
        h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:32]


def input_data_version(folder: Path) -> dict[str, str]:
    """{data_version[, dvc_output]}: DVC's hash of the tracked output the images are in (checked
    against the workspace), else a fingerprint of the folder's files (labelspace.data.dvc_versions)."""
    from labelspace.app import project_root
    from labelspace.data.dvc_versions import all_tracked_outputs, dataset_version, fingerprint_path

    folder = folder.resolve()
    try:
        repo = project_root()
        rel = folder.relative_to(repo.resolve()).as_posix()
    except (FileNotFoundError, ValueError):
        return {"data_version": fingerprint_path(folder)}
    outputs = all_tracked_outputs(repo)
    owner = next((o for o in sorted(outputs, key=len, reverse=True) if rel == o or rel.startswith(o + "/")), None)
    if owner is None:
        return {"data_version": fingerprint_path(folder)}
    try:
        return {"data_version": dataset_version(repo / owner, repo), "dvc_output": owner}
    except RuntimeError as e:  # the workspace differs from what dvc.lock recorded
        log.warning("%s; recording a fingerprint of the files instead", e)
        return {"data_version": fingerprint_path(folder), "dvc_output": owner, "note": str(e)}
