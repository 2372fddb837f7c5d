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

# Under pytest-xdist (`make test` runs two workers): a ZenML global configuration of each worker's own,
# so two workers never share one ZenML store; a test that sets ZENML_CONFIG_PATH itself still wins.
if os.environ.get("PYTEST_XDIST_WORKER") and "ZENML_CONFIG_PATH" not in os.environ:
    import tempfile

    os.environ["ZENML_CONFIG_PATH"] = tempfile.mkdtemp(prefix=f"zenml-{os.environ['PYTEST_XDIST_WORKER']}-")


def pytest_collection_modifyitems(config, items):
    """The longest files first: those that start the team stack (marked `team`), then those with slow
    end-to-end tests, then the rest, each group in its usual order and each file's tests in theirs.
    `make test` runs pytest-xdist with --dist loadfile --no-loadscope-reorder, which hands files out in
    this order, so the quick files fill in at the end instead of one worker finishing a team file alone
    (xdist's own order, most tests first, put the team files, with few long tests, last)."""
    def group(item) -> int:
        return 0 if item.get_closest_marker("team") else 1 if item.get_closest_marker("slow") else 2

    files: dict[str, int] = {}
    for item in items:  # a file goes with its earliest group: one slow test makes it a slow file
        files[str(item.path)] = min(files.get(str(item.path), 2), group(item))
    position = {path: i for i, path in enumerate(files)}
    items.sort(key=lambda item: (files[str(item.path)], position[str(item.path)]))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session", autouse=True)
def _torch_threads():
    import torch

    torch.set_num_threads(2)
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """A small real embedded dataset (Fashion-MNIST canvases in the NUS-WIDE layout), ingested and
    decoded at 32 px: (root, manifest, concepts, images)."""
    from support import sample_config

    from labelspace.data.nuswide import ingest, read_manifest
    from labelspace.data.preprocess import build_image_arrays, load_image_arrays
    from labelspace.data.sample import build_sample

    base = tmp_path_factory.mktemp("tiny")
    root = base / "fashion-canvas"
    build_sample(root, sample_config(n_train=96, n_test=32, seed=1))
    ingest(root, base / "manifest.parquet")
    manifest, concepts = read_manifest(base / "manifest.parquet")
    arrays = build_image_arrays(base / "manifest.parquet", root, 32, base / "images-32")
    return root, manifest, concepts, load_image_arrays(arrays)


@pytest.fixture(scope="session")
def small_vectors(tmp_path_factory) -> Path:
    """The packaged GloVe vectors, all 400k words (the garment names include rare ones), word2vec binary."""
    from labelspace.data.word_vectors import export_glove

    path = tmp_path_factory.mktemp("vectors") / "glove-6b-50d.bin"
    export_glove(path)
    return path


@pytest.fixture(scope="session")
def project_config():
    """The project's params.yaml, typed (labelspace.config): tests change fields with .replace()."""
    from labelspace.config import load_config

    return load_config(REPO_ROOT / "params.yaml")


@pytest.fixture(scope="session")
def recipe(project_config):
    """recipe(head, n_labels, d, image_size, model={...}, loss={...}, train={...}) ->
    (ModelSpec, LossConfig, TrainConfig): the project's defaults with the given fields changed."""
    from labelspace.model.spec import ModelSpec

    def make(head="labelspace", n_labels=4, d=8, image_size=32, model=None, loss=None, train=None):
        config = project_config.replace(model=model or {}, loss=loss or {}, train=train or {})
        spec = ModelSpec.from_config(config.model, head=head, n_labels=n_labels, d=d, image_size=image_size)
        return spec, config.loss, config.train

    return make
