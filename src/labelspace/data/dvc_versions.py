"""The data version of a DVC-tracked path: DVC's md5 of the output (`<md5>.dir` for a folder), read
from the repository's dvc.lock (pipeline outputs) or `<path>.dvc` (`dvc add`ed data), for lineage.

dvc.lock says what `dvc repro` last produced. With `verify=True` the workspace is hashed with DVC's
own API and a mismatch (data edited, or not yet checked out) is an error rather than a wrong record.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

import yaml


def _normalize(path: str) -> str:
    return PurePosixPath(str(path).replace("\\", "/")).as_posix().removeprefix("./").rstrip("/")


def _relative_to_repo(path: str | os.PathLike, repo_root: Path) -> str:
    p = Path(path)
    if p.is_absolute():
        try:
            p = p.resolve().relative_to(repo_root.resolve())
        except ValueError:
            raise ValueError(f"{path} is outside the DVC repository {repo_root.resolve()}") from None
    return _normalize(p.as_posix())


def tracked_outputs(repo_root: str | os.PathLike = ".") -> dict[str, str]:
    """{output path relative to the repo root: md5} of every output in the repository's dvc.lock."""
    return _lock_outputs(Path(repo_root), Path(repo_root) / "dvc.lock")


def _lock_outputs(repo_root: Path, lock: Path) -> dict[str, str]:
    if not lock.is_file():
        return {}
    stages = (yaml.safe_load(lock.read_text(encoding="utf-8")) or {}).get("stages", {})
    prefix = lock.parent.relative_to(repo_root).as_posix()
    return {_normalize(f"{prefix}/{out['path']}"): out["md5"]
            for stage in stages.values() for out in stage.get("outs", []) if out.get("md5")}


def _dvc_files(repo_root: Path) -> list[Path]:
    """Every dvc.lock and .dvc file of the repository, from git's index (no walk through the data)."""
    import subprocess

    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--",
                              "*dvc.lock", "*.dvc"], cwd=repo_root, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return [repo_root / "dvc.lock"]
    return [repo_root / name for name in out.decode().split("\0") if name]


def all_tracked_outputs(repo_root: Path) -> dict[str, str]:
    """Outputs of every dvc.lock (sub-folder pipelines too) and every `dvc add`ed .dvc file."""
    outputs: dict[str, str] = {}
    for f in _dvc_files(repo_root):
        if f.name == "dvc.lock":
            outputs.update(_lock_outputs(repo_root, f))
        else:
            rel = f.relative_to(repo_root).as_posix().removesuffix(".dvc")
            version = _added_output(rel, repo_root)
            if version:
                outputs[_normalize(rel)] = version
    return outputs


def _combined_version(parts: dict[str, str]) -> str:
    """One version for a folder DVC tracks in pieces (release files added, images from a stage)."""
    import hashlib

    listing = "".join(f"{path}\t{md5}\n" for path, md5 in sorted(parts.items()))
    return "parts-" + hashlib.md5(listing.encode()).hexdigest()


def _added_output(rel_path: str, repo_root: Path) -> str | None:
    """md5 recorded by `dvc add` in `<path>.dvc`, if there is one."""
    dvc_file = repo_root / (rel_path + ".dvc")
    if not dvc_file.is_file():
        return None
    outs = (yaml.safe_load(dvc_file.read_text(encoding="utf-8")) or {}).get("outs", [])
    name = PurePosixPath(rel_path).name
    return next((out.get("md5") for out in outs if _normalize(out.get("path", "")) == name), None)


def _check_workspace(rel_path: str, repo_root: Path) -> None:
    from dvc.repo import Repo

    with Repo(str(repo_root)) as repo:
        (out,) = repo.find_outs_by_path(str(repo_root.resolve() / rel_path))
        status = out.workspace_status()
    if status:
        state = next(iter(status.values()))
        raise RuntimeError(
            f"{rel_path} is {state} since dvc.lock recorded it: run `dvc repro` (or `dvc checkout {rel_path}` "
            "to restore the recorded version) before recording its data version"
        )


def data_version(path: str | os.PathLike, repo_root: str | os.PathLike = ".", verify: bool = False) -> str:
    """DVC's hash of the tracked output at `path` (relative to repo_root, or absolute), e.g. 'ab12...ef.dir';
    for a folder DVC tracks in pieces, `parts-<md5>` of the pieces' paths and hashes."""
    repo_root = Path(repo_root)
    rel_path = _relative_to_repo(path, repo_root)
    outputs = tracked_outputs(repo_root)
    version = outputs.get(rel_path) or _added_output(rel_path, repo_root)
    if version:
        if verify:
            _check_workspace(rel_path, repo_root)
        return version
    inside = {o: v for o, v in all_tracked_outputs(repo_root).items() if o.startswith(rel_path + "/")}
    if inside:  # e.g. datasets/nuswide: metadata `dvc add`ed, images from its own dvc.yaml
        if verify:
            for part in inside:
                _check_workspace(part, repo_root)
        return _combined_version(inside)
    parent = next((o for o in outputs if rel_path.startswith(o + "/")), None)
    if parent is not None:
        raise ValueError(f"{rel_path} is inside the DVC output {parent}: ask for the version of {parent} "
                         f"({outputs[parent]}) instead")
    known = ", ".join(sorted(outputs)) or "none"
    raise ValueError(
        f"{rel_path} is not tracked by DVC in {repo_root.resolve()}: it is no output in dvc.lock and has no "
        f"{rel_path}.dvc file (tracked: {known}). Run `dvc repro` if a dvc.yaml stage produces it, or `dvc add {rel_path}`"
    )


def _data_files(path: Path) -> list[Path]:
    """The files under `path`, less those of a project folder nested in it (a sub-folder with its own
    params.yaml, e.g. datasets/nuswide/zsl/: its runs write MLflow, ZenML and reports there)."""
    files = []
    for folder, subfolders, names in os.walk(path):
        if Path(folder) != path and "params.yaml" in names:
            subfolders[:] = []
            continue
        files.extend(Path(folder) / name for name in names if os.path.isfile(os.path.join(folder, name)))
    return sorted(files)


def fingerprint_path(path: Path) -> str:
    """Hash of the names, sizes and modification times of every file under `path` (or of one file);
    a project folder nested in it is not data (`_data_files`)."""
    import hashlib

    h = hashlib.sha256()
    files = [path] if path.is_file() else _data_files(path)
    for f in files:
        st = f.stat()
        h.update(f"{f.relative_to(path) if f != path else f.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return f"untracked-{h.hexdigest()[:32]}"


def dataset_version(path: Path, repo_root: Path) -> str:
    """DVC's hash of a tracked output, checked against the workspace; a fingerprint of the files of
    anything DVC does not track (a dataset passed with --dataset from elsewhere)."""
    try:
        return data_version(path, repo_root=repo_root, verify=True)
    except (KeyError, ValueError, FileNotFoundError, LookupError):
        return fingerprint_path(path)
