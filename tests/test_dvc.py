"""The project's DVC pipeline in a temporary git repo (real `dvc`, tiny params), and data_version."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from labelspace.data.dvc_versions import data_version

VENV_BIN = Path(sys.executable).parent


# The data stages; the training stage runs the whole pipeline and is covered by test_pipeline.py.
DATA_STAGES = ("sample", "vectors")


def _run(cmd: list[str], cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k != "LABELSPACE_PARAMS"}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"  # as the Makefile sets it
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def dvc_repo(tmp_path_factory, repo_root) -> Path:
    """A git repo holding the project's dvc.yaml, DVC config and a params.yaml with tiny sizes."""
    if not (VENV_BIN / "dvc").exists() or not (VENV_BIN / "labelspace").exists():
        pytest.skip("dvc and labelspace must be installed in the test interpreter's environment")
    repo = tmp_path_factory.mktemp("dvc") / "project"
    stages = yaml.safe_load((repo_root / "dvc.yaml").read_text())["stages"]
    deps = [dep for name in DATA_STAGES for dep in stages[name]["deps"]]  # the scripts those stages depend on
    for name in ("dvc.yaml", ".dvcignore", ".gitignore", *deps):
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(repo_root / name, repo / name)
    params = yaml.safe_load((repo_root / "params.yaml").read_text())
    params["sample"].update(n_train=24, n_test=8)
    params["vectors"]["limit"] = 2000
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run(["git", "init", "-q"], repo)
    _run(["dvc", "init", "-q"], repo)
    shutil.copy(repo_root / ".dvc/config", repo / ".dvc/config")  # the committed default remote
    return repo


def test_repro_builds_both_stages_then_has_nothing_to_do(dvc_repo):
    first = _run(["dvc", "repro", *DATA_STAGES], dvc_repo)
    assert "Running stage 'sample'" in first and "Running stage 'vectors'" in first
    assert len((dvc_repo / "data/fashion-canvas/ImageList/TrainImagelist.txt").read_text().splitlines()) == 24
    header = (dvc_repo / "data/vectors/glove-6b-50d.bin").open("rb").readline()
    assert header.split() == [b"2000", b"50"]

    untracked = _run(["git", "status", "--porcelain", "--untracked-files=all"], dvc_repo).split("\n")
    assert not [line for line in untracked if line[3:].startswith("data/")]  # data never reaches git

    second = _run(["dvc", "repro", *DATA_STAGES], dvc_repo)
    assert "Running stage" not in second
    assert "Stage 'sample' didn't change" in second and "Stage 'vectors' didn't change" in second

    lock = yaml.safe_load((dvc_repo / "dvc.lock").read_text())
    outs = {out["path"]: out["md5"] for stage in lock["stages"].values() for out in stage["outs"]}
    assert lock["stages"]["sample"]["params"]["params.yaml"]["sample"]["n_train"] == 24
    version = data_version("data/fashion-canvas", repo_root=dvc_repo, verify=True)
    assert version == outs["data/fashion-canvas"] and version.endswith(".dir")
    absolute = dvc_repo / "data/vectors/glove-6b-50d.bin"
    assert data_version(absolute, repo_root=dvc_repo) == outs["data/vectors/glove-6b-50d.bin"]


def test_push_and_pull_through_the_default_remote(dvc_repo):
    _run(["dvc", "repro", *DATA_STAGES], dvc_repo)
    listing = sorted(p.relative_to(dvc_repo).as_posix() for p in (dvc_repo / "data").rglob("*") if p.is_file())
    _run(["dvc", "push", *DATA_STAGES], dvc_repo)
    assert (dvc_repo / "dvc-remote").is_dir()  # `url = ../dvc-remote` in .dvc/config: beside .dvc/
    shutil.rmtree(dvc_repo / "data")
    shutil.rmtree(dvc_repo / ".dvc/cache")
    _run(["dvc", "pull", *DATA_STAGES], dvc_repo)  # the training stages' outputs were never produced here
    assert sorted(p.relative_to(dvc_repo).as_posix() for p in (dvc_repo / "data").rglob("*") if p.is_file()) == listing


def test_verify_catches_data_edited_after_the_lock(dvc_repo):
    _run(["dvc", "repro", *DATA_STAGES], dvc_repo)
    concepts = dvc_repo / "data/fashion-canvas/ConceptsList/Concepts81.txt"
    original = concepts.read_bytes()
    try:
        concepts.write_bytes(original + b"hat\n")
        recorded = data_version("data/fashion-canvas", repo_root=dvc_repo)  # the lock's word, unchecked
        assert recorded.endswith(".dir")
        with pytest.raises(RuntimeError, match="modified since dvc.lock recorded it"):
            data_version("data/fashion-canvas", repo_root=dvc_repo, verify=True)
    finally:
        concepts.write_bytes(original)


def test_untracked_paths_are_clear_errors(dvc_repo):
    _run(["dvc", "repro", *DATA_STAGES], dvc_repo)  # data/fashion-canvas an output in dvc.lock (a no-op when built)
    with pytest.raises(ValueError, match=r"params\.yaml is not tracked by DVC.*dvc add params\.yaml"):
        data_version("params.yaml", repo_root=dvc_repo)
    with pytest.raises(ValueError, match="inside the DVC output data/fashion-canvas"):
        data_version("data/fashion-canvas/Flickr", repo_root=dvc_repo)


def test_data_version_reads_dvc_add_files(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data/images.dvc").write_text("outs:\n- md5: 0123abcd.dir\n  path: images\n  hash: md5\n")
    assert data_version("./data/images/", repo_root=tmp_path) == "0123abcd.dir"


def test_a_folder_tracked_in_pieces_gets_one_version(dvc_repo):
    """Like datasets/nuswide: release files `dvc add`ed one by one inside a dataset folder."""
    folder = dvc_repo / "datasets/toy"
    (folder / "ImageList").mkdir(parents=True)
    (folder / "ImageList/TrainImagelist.txt").write_text("a\\1.jpg\n")
    (folder / "NUS-WIDE-urls.txt").write_text("%%% header\n")
    _run(["dvc", "add", "datasets/toy/ImageList", "datasets/toy/NUS-WIDE-urls.txt"], dvc_repo)
    first = data_version("datasets/toy", repo_root=dvc_repo, verify=True)
    assert first.startswith("parts-") and first == data_version(folder, repo_root=dvc_repo)
    (folder / "NUS-WIDE-urls.txt").write_text("%%% header\nC:\\ImageData\\Flickr\\a\\1.jpg 1 null null null null\n")
    with pytest.raises(RuntimeError, match="NUS-WIDE-urls.txt is modified"):
        data_version("datasets/toy", repo_root=dvc_repo, verify=True)
    _run(["dvc", "add", "datasets/toy/NUS-WIDE-urls.txt"], dvc_repo)
    assert data_version("datasets/toy", repo_root=dvc_repo, verify=True) not in (first, None)
