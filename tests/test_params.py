"""params.yaml: found upward from the working directory, overridable by env, hashed stably."""

from __future__ import annotations

from pathlib import Path

import pytest

from labelspace.params import PARAMS_ENV, find_params_file, load_params, params_hash, section


@pytest.fixture(autouse=True)
def _no_params_override(monkeypatch):
    monkeypatch.delenv(PARAMS_ENV, raising=False)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_params_yaml_is_found_upward_from_the_working_directory(tmp_path, monkeypatch):
    params = write(tmp_path / "project" / "params.yaml", "train:\n  epochs: 3\n")
    nested = tmp_path / "project" / "steps" / "deep"
    nested.mkdir(parents=True)
    monkeypatch.chdir(nested)
    assert find_params_file() == params
    assert load_params() == {"train": {"epochs": 3}}
    assert find_params_file(start=tmp_path / "project") == params


def test_the_env_variable_overrides_the_upward_search(tmp_path, monkeypatch):
    write(tmp_path / "params.yaml", "train:\n  epochs: 3\n")
    other = write(tmp_path / "elsewhere" / "experiment.yaml", "train:\n  epochs: 99\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(PARAMS_ENV, str(other))
    assert find_params_file() == other
    assert section(load_params(), "train") == {"epochs": 99}


def test_an_env_variable_naming_no_file_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv(PARAMS_ENV, str(tmp_path / "missing.yaml"))
    with pytest.raises(FileNotFoundError, match=f"{PARAMS_ENV}=.*missing.yaml does not exist"):
        find_params_file()


def test_no_params_yaml_anywhere_says_what_to_do(tmp_path):
    if any((folder / "params.yaml").is_file() for folder in tmp_path.parents):
        pytest.skip("a params.yaml above the temporary directory")
    with pytest.raises(FileNotFoundError, match=f"run from the project root or set {PARAMS_ENV}"):
        find_params_file(start=tmp_path)


def test_an_explicit_path_is_read_as_given(tmp_path):
    path = write(tmp_path / "p.yaml", "model:\n  k: 10\n  backbone: resnet18\n")
    assert load_params(path) == {"model": {"k": 10, "backbone": "resnet18"}}
    assert load_params(write(tmp_path / "empty.yaml", "")) == {}


def test_a_file_that_is_not_a_mapping_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="must hold a mapping of sections, got list"):
        load_params(write(tmp_path / "p.yaml", "- a\n- b\n"))


def test_a_missing_section_names_the_ones_there():
    with pytest.raises(KeyError, match="no 'evaluate' section.*model, train"):
        section({"train": {}, "model": {}}, "evaluate")


def test_params_hash_is_stable_under_key_order_and_changes_with_values():
    a = {"model": {"k": 10, "backbone": "resnet18"}, "train": {"lr": 0.001, "epochs": 3}}
    b = {"train": {"epochs": 3, "lr": 0.001}, "model": {"backbone": "resnet18", "k": 10}}
    assert params_hash(a) == params_hash(b)
    assert len(params_hash(a)) == 16 and int(params_hash(a), 16) >= 0
    changed = {"model": {"k": 11, "backbone": "resnet18"}, "train": {"lr": 0.001, "epochs": 3}}
    assert params_hash(changed) != params_hash(a)
    # Pinned, so lineage tags stay comparable across releases: sha256(b'{"a": 1}') starts f9d86028c6e0d64e.
    assert params_hash({"a": 1}) == "f9d86028c6e0d64e"


def test_the_project_params_yaml_has_every_stage_section(repo_root):
    params = load_params(repo_root / "params.yaml")
    for name in ("sample", "vectors", "embedding", "ingest", "model", "loss", "train", "evaluate", "register"):
        assert isinstance(section(params, name), dict), name
