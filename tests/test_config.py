"""params.yaml: found upward from the working directory, overridable by env, hashed stably, and
checked whole by labelspace.config before any work starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from labelspace.app import PARAMS_ENV, find_params_file, params_hash
from labelspace.config import SECTIONS, ConfigError, load_config, load_params


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
    assert load_params()["train"] == {"epochs": 99}


def test_an_env_variable_naming_no_file_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv(PARAMS_ENV, str(tmp_path / "missing.yaml"))
    with pytest.raises(FileNotFoundError, match=f"{PARAMS_ENV}=.*missing.yaml does not exist"):
        find_params_file()


def test_no_params_yaml_anywhere_says_what_to_do(tmp_path):
    if any((folder / "params.yaml").is_file() for folder in tmp_path.parents):
        pytest.skip("a params.yaml above the temporary directory")
    with pytest.raises(FileNotFoundError, match=f"run from a project folder .* or set {PARAMS_ENV}"):
        find_params_file(start=tmp_path)


def test_an_explicit_path_is_read_as_given(tmp_path):
    path = write(tmp_path / "p.yaml", "model:\n  k: 10\n  backbone: resnet18\n")
    assert load_params(path) == {"model": {"k": 10, "backbone": "resnet18"}}
    assert load_params(write(tmp_path / "empty.yaml", "")) == {}


def test_a_file_that_is_not_a_mapping_is_rejected(tmp_path):
    with pytest.raises(ConfigError, match="must hold a mapping of sections, got \\['a', 'b'\\]"):
        load_params(write(tmp_path / "p.yaml", "- a\n- b\n"))


def test_params_hash_is_stable_under_key_order_and_changes_with_values():
    a = {"model": {"k": 10, "backbone": "resnet18"}, "train": {"lr": 0.001, "epochs": 3}}
    b = {"train": {"epochs": 3, "lr": 0.001}, "model": {"backbone": "resnet18", "k": 10}}
    assert params_hash(a) == params_hash(b)
    assert len(params_hash(a)) == 16 and int(params_hash(a), 16) >= 0
    changed = {"model": {"k": 11, "backbone": "resnet18"}, "train": {"lr": 0.001, "epochs": 3}}
    assert params_hash(changed) != params_hash(a)
    # Pinned, so lineage tags stay comparable across releases: sha256(b'{"a": 1}') starts f9d86028c6e0d64e.
    assert params_hash({"a": 1}) == "f9d86028c6e0d64e"


def test_the_project_params_yaml_is_complete_and_valid(repo_root):
    config = load_config(repo_root / "params.yaml")
    assert config.root == repo_root.resolve()
    assert set(config.params) == set(SECTIONS)
    assert config.train.val_fraction == load_params(repo_root / "params.yaml")["train"]["val_fraction"]


def _broken(tmp_path, repo_root, old: str, new: str) -> Path:
    text = (repo_root / "params.yaml").read_text(encoding="utf-8")
    assert old in text, old
    return write(tmp_path / "params.yaml", text.replace(old, new, 1))


def _line_of(path: Path, needle: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if needle in line)


@pytest.mark.parametrize("old, new, message", [
    ("  k: 10 ", '  k: "ten" ', r"model\.k = 'ten' is not an integer"),
    ("  epochs: 5 ", "  epochs: -3 ", r"train\.epochs = -3 must be at least 1"),
    ("  backbone: efficientnet_lite0", "  backbone: vgg99", r"model\.backbone = 'vgg99' must be one of .*resnet18"),
    ("  lr_decay: cosine", "  lr_decay: linear", r"train\.lr_decay = 'linear' must be one of cosine, step, none"),
    ("  normalize: true ", "  normalize: 1 ", r"model\.normalize = 1 is not true or false"),
    ("  top_k: [3, 5]", "  top_k: [3, x]", r"evaluate\.top_k = \[3, 'x'\] is not a list of integers"),
    ("  val_fraction: 0.1 ", "  val_fraction: 1.5 ", r"train\.val_fraction = 1\.5 must be in \[0, 1\)"),
    ("  labels: concepts ", "  labels: tags1k ", r"ingest\.labels = 'tags1k' must be one of concepts, nuswide-zsl"),
    ("  frozen_stages: 0 ", "  frozen_stages: -1 ", r"model\.frozen_stages = -1 must be 0 \(the whole backbone trains\)"),
    ("  open_words_cost: 0.01", "  open_words_cost: 5", r"model\.open_words_cost = 5\.0 must be null .* in \[0, 1\)"),
    ("  open_words_cost: 0.01", "  open_words_cost: cheap", r"model\.open_words_cost = 'cheap' is not"),
])
def test_a_bad_value_names_key_value_what_is_allowed_file_and_line(tmp_path, repo_root, old, new, message):
    path = _broken(tmp_path, repo_root, old, new)
    with pytest.raises(ConfigError, match=message) as error:
        load_config(path)
    assert f"{path}:{_line_of(path, new.strip().split(':')[0] + ':')}:" in str(error.value)


def test_an_unknown_key_is_named_with_its_line_and_the_known_keys(tmp_path, repo_root):
    path = _broken(tmp_path, repo_root, "  epochs: 5 ", "  epochs: 5\n  num_workers: 4 ")
    with pytest.raises(ConfigError, match=r"unknown key train\.num_workers; the train section has seed, epochs"):
        load_config(path)


def test_a_missing_key_or_section_is_an_error_not_a_silent_default(tmp_path, repo_root):
    path = _broken(tmp_path, repo_root, "  margin: 0.2 ", "  # margin removed ")
    with pytest.raises(ConfigError, match="section 'loss' has no key\\(s\\) margin"):
        load_config(path)
    text = (repo_root / "params.yaml").read_text()
    without_model = text[: text.index("\nmodel:")] + text[text.index("\nloss:"):]
    with pytest.raises(ConfigError, match="no section\\(s\\) model"):
        load_config(write(tmp_path / "no-model.yaml", without_model))


def test_a_yaml_syntax_error_is_one_line_with_file_line_and_column(tmp_path, repo_root):
    path = _broken(tmp_path, repo_root, "  epochs: 5 ", "  epochs: [5 ")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert message.startswith(f"{path}:") and "YAML syntax error" in message and "\n" not in message


def test_replace_checks_the_changed_section(project_config):
    changed = project_config.replace(train={"epochs": 2})
    assert changed.train.epochs == 2 and changed.params["train"]["epochs"] == 2
    assert project_config.train.epochs != 2 and changed.hash != project_config.hash
    with pytest.raises(ConfigError, match="train.epochs = 0 must be at least 1"):
        project_config.replace(train={"epochs": 0})


def test_the_choices_params_yaml_is_checked_against_are_the_ones_the_torch_modules_implement():
    """labelspace.choices lists them without torch; the backbone registry and the networks take the same."""
    from labelspace.choices import BACKBONES
    from labelspace.model.backbones import list_backbones

    assert list_backbones() == sorted(BACKBONES)
