"""`labelspace reproduce`: a registered version rebuilt from its lineage, and the verdict.

The end-to-end tests train one tiny version in a project of its own: a temporary git repository holding a
copy of this working tree's code (committed, so the version's tree is clean), the tiny dataset and the
vectors `dvc add`ed, and its own MLflow and ZenML stores; the reproductions run in worktrees of that
commit. The verdict's rules are checked on their own with the tags a real training records.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from labelspace.lifecycle.reproduction_verdict import (
    BIT_IDENTICAL,
    NOT_REPRODUCED,
    WITHIN_TOLERANCE,
    judge,
    lock_pins,
    package_differences,
)

BIN = Path(sys.executable).parent
GIT = ["git", "-c", "user.name=labelspace tests", "-c", "user.email=tests@labelspace.invalid"]
RULES = {"auto": True, "metrics": ["labelspace.top3.O-F1"], "minimum": {"labelspace.top3.O-F1": 0.0},
         "max_regression": {"labelspace.top3.O-F1": 1.0}}


# ---------------------------------------------------------------- lineage and verdict, no training


def test_lineage_names_the_pretrained_file_and_the_trained_weights_apart_and_records_the_environment(repo_root):
    import numpy
    import torch

    from labelspace.lifecycle.lineage import (
        ENVIRONMENT_KEYS,
        LINEAGE_KEYS,
        code_checkout,
        lineage_tags,
        lock_hash,
    )
    from labelspace.training.runtime import describe_runtime

    provenance = {"weights_file": "/x/efficientnet_lite0.pth", "weights_hash": "579344248a93e230", "seed": 7,
                  "runtime": describe_runtime("cpu", 2)}
    tags = lineage_tags(dataset_version="d.dir", vectors_version="v", params_hash="p", zenml_run_id="r",
                        backbone="efficientnet_lite0", pretrained_hash="579344248a93e230", repo_root=repo_root,
                        provenance=provenance, params_file=code_checkout(repo_root) / "params.yaml")
    assert set(LINEAGE_KEYS) | set(ENVIRONMENT_KEYS) <= set(tags)
    assert "model.weights_hash" not in tags  # the old name, misread as the trained weights
    assert tags["backbone.pretrained_hash"] == "579344248a93e230"
    assert tags["backbone.pretrained_file"] == "efficientnet_lite0.pth"
    assert tags["env.torch_threads"] == "2" and tags["env.device"] == "cpu" and tags["seed.train"] == "7"
    assert tags["env.torch"] == torch.__version__ and tags["env.numpy"] == numpy.__version__
    assert tags["env.lock_hash"] == lock_hash(code_checkout(repo_root)) != "none"
    assert tags["params.path"] == "params.yaml"  # where the worktree of the commit holds it


RECORDED = {"model.content_hash": "d0e1375f6fd880dd", "env.torch": "2.14.1", "env.numpy": "2.4.6",
            "env.packages_hash": "aaaa", "env.lock_hash": "l1", "env.torch_threads": "2", "env.device": "cpu",
            "env.cpu": "Intel(R) Xeon(R) Processor", "data.dataset_version": "x.dir", "params.hash": "p"}
METRICS = {"labelspace_top3_O-F1": 0.511, "labelspace_mAP": 0.80, "bce_top3_O-F1": 0.47,
           "labelspace_top3_n_images_without_labels": 3.0}


def test_the_same_weights_are_bit_identical_and_a_changed_lock_is_still_named():
    again = {**RECORDED, "env.lock_hash": "l2"}
    v = judge(RECORDED, again, METRICS, METRICS, lock_changes=package_differences({"numpy": "2.4.6"},
                                                                                   {"numpy": "2.4.5"}))
    assert v.verdict == BIT_IDENTICAL
    assert v.differences == ["packages: lock_hash l1 -> l2 (numpy 2.4.6 -> 2.4.5)"]


def test_other_threads_allow_two_points_and_other_packages_three():
    # 1 against 2 threads on a small run: top-3 O-F1 49.6 against 51.1
    threads = {**RECORDED, "model.content_hash": "1816fa9ef990a1e9", "env.torch_threads": "1"}
    near = {**METRICS, "labelspace_top3_O-F1": 0.496}
    v = judge(RECORDED, threads, METRICS, near)
    assert (v.verdict, v.tolerance, v.kinds) == (WITHIN_TOLERANCE, 0.02, ["threads"])
    assert v.differences == ["threads: torch_threads 2 -> 1"]
    assert [m["key"] for m in v.metrics] == ["bce_top3_O-F1", "labelspace_mAP", "labelspace_top3_O-F1"]  # no counts
    far = {**METRICS, "labelspace_top3_O-F1": 0.47}
    assert judge(RECORDED, threads, METRICS, far).verdict == NOT_REPRODUCED
    packages = {**threads, "env.torch": "2.15.0", "env.packages_hash": "bbbb"}
    v = judge(RECORDED, packages, METRICS, {**METRICS, "labelspace_top3_O-F1": 0.486},
              packages=package_differences({"torch": "2.14.1"}, {"torch": "2.15.0"}))
    assert (v.verdict, v.tolerance) == (WITHIN_TOLERANCE, 0.03)
    assert "packages: packages_hash aaaa -> bbbb (torch 2.14.1 -> 2.15.0)" in v.differences


def test_other_weights_with_nothing_different_or_other_inputs_are_not_reproduced():
    v = judge(RECORDED, {**RECORDED, "model.content_hash": "ffff"}, METRICS, METRICS)
    assert v.verdict == NOT_REPRODUCED and "not deterministic" in v.note
    v = judge(RECORDED, {**RECORDED, "model.content_hash": "ffff", "data.dataset_version": "y.dir"}, METRICS, METRICS)
    assert v.verdict == NOT_REPRODUCED and v.kinds == ["inputs"]


def test_a_gpu_on_either_side_allows_its_tolerance():
    gpu = {**RECORDED, "env.device": "cuda", "env.gpu": "NVIDIA H100 80GB HBM3"}
    v = judge(gpu, {**gpu, "model.content_hash": "ffff"}, METRICS, {**METRICS, "labelspace_mAP": 0.78})
    assert (v.verdict, v.kinds, v.tolerance) == (WITHIN_TOLERANCE, ["gpu"], 0.03)


def test_lock_pins_are_read_by_name():
    assert lock_pins("# header\nNumPy==2.4.6\ntyping_extensions==4.1 ; python_version<'3.12'\n") == \
        {"numpy": "2.4.6", "typing-extensions": "4.1"}
    hashed = "tqdm==4.70.1 \\\n    --hash=sha256:c293e525e6fef9c20e8728fd4612df02a0aa31bb5fe91ecd93e123b1b7bffa73\n"
    assert lock_pins(hashed) == {"tqdm": "4.70.1"}


# ---------------------------------------------------------------- end to end


def _run(args, *, cwd, env, timeout=900, check=True):
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check:
        assert done.returncode == 0, f"{args}: {done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return done


def _project_env(root: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "ZENML_", "LABELSPACE_"))}
    env.update(PYTHONPATH=str(root / "src"), LABELSPACE_PARAMS=str(root / "params.yaml"),
               ZENML_CONFIG_PATH=str(root / ".zenml"), MLFLOW_TRACKING_URI=f"sqlite:///{root / 'mlflow' / 'mlflow.db'}",
               ZENML_ANALYTICS_OPT_IN="false", MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true",
               DVC_NO_ANALYTICS="1", HF_HUB_OFFLINE="1", LABELSPACE_PROGRESS="log", GIT_AUTHOR_NAME="labelspace tests",
               GIT_AUTHOR_EMAIL="tests@labelspace.invalid", GIT_COMMITTER_NAME="labelspace tests",
               GIT_COMMITTER_EMAIL="tests@labelspace.invalid")
    return env


def _labelspace(env, *args, cwd, check=True):
    return _run([str(BIN / "labelspace"), *args], cwd=cwd, env=env, check=check)


@pytest.fixture(scope="module")
def project(tiny_dataset, small_vectors, tmp_path_factory, repo_root):
    """A committed project (this working tree's code, tiny params, DVC-added data) and its version 1."""
    root = tmp_path_factory.mktemp("reproduce") / "project"
    shutil.copytree(repo_root / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "requirements.lock"):
        shutil.copy(repo_root / name, root / name)
    params = yaml.safe_load((repo_root / "params.yaml").read_text())
    params["ingest"].update(dataset="data/fashion-canvas", image_size=32)
    params["vectors"]["path"] = "data/vectors/glove-6b-50d.bin"
    params["train"].update(epochs=1, batch_size=32)
    params["register"]["open_vocabulary_size"] = 2000
    params["promote"] = RULES
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    shutil.copytree(tiny_dataset[0], root / "data" / "fashion-canvas")
    (root / "data" / "vectors").mkdir()
    os.link(small_vectors, root / "data" / "vectors" / "glove-6b-50d.bin")
    (root / ".gitignore").write_text("/mlflow/\n/.zenml/\n/reports/\n/checkpoints/\n/data/cache/\n")
    (root / "NOTES.md").write_text("a tracked file the dirty-tree test edits\n")
    env = _project_env(root)
    _run(["git", "init", "-q", str(root)], cwd=root, env=env)
    _run([str(BIN / "dvc"), "init", "-q"], cwd=root, env=env)
    _run([str(BIN / "dvc"), "add", "-q", "data/fashion-canvas", "data/vectors/glove-6b-50d.bin"], cwd=root, env=env)
    _run(["git", "add", "."], cwd=root, env=env)
    _run(["git", "commit", "-qm", "tiny project"], cwd=root, env=env)
    _labelspace(env, "run", cwd=root)
    return root, env


def _registry(root: Path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{root / 'mlflow' / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _reproduce(env, root, workdir, *extra, ref="1", check=True):
    done = _labelspace(env, "reproduce", ref, "--workdir", str(workdir), "--json", *extra, cwd=root, check=False)
    if check:
        assert done.returncode in (0, 1), done.stdout[-3000:] + done.stderr[-5000:]
        return json.loads(done.stdout[done.stdout.index("{\n"):])
    return done


@pytest.mark.slow
def test_a_version_is_rebuilt_bit_for_bit_from_its_recorded_data_even_after_the_data_changed(project, tmp_path):
    root, env = project
    labels = sorted((root / "data" / "fashion-canvas").rglob("Labels_*_Train.txt"))[0]
    flipped = "".join("0\n" if line.strip() == "1" else "1\n" for line in labels.read_text().splitlines())
    labels.write_text(flipped)  # the work tree's data is no longer the version's
    result = _reproduce(env, root, tmp_path / "work", ref="@champion")  # production's alias, followed to version 1
    assert result["version"] == "1", result
    assert result["verdict"]["verdict"] == BIT_IDENTICAL, result
    assert result["reproduced_hash"] == result["recorded_hash"] != "unknown"
    assert result["threads"] == _registry(root).get_model_version("labelspace", "1").tags["env.torch_threads"]
    assert labels.read_text() == flipped  # restored by hash into the worktree, the user's files untouched
    assert [str(v.version) for v in _registry(root).search_model_versions("name='labelspace'")] == ["1"]  # nothing new
    worktrees = _run(["git", "worktree", "list"], cwd=root, env=env).stdout.strip().splitlines()
    assert len(worktrees) == 1  # the reproduction's worktree is gone
    audit = json.loads(_labelspace(env, "audit", "1", "--json", cwd=root).stdout)
    assert audit["reproduced"]["reproduced.verdict"] == BIT_IDENTICAL
    assert audit["reproduced"]["reproduced.differences"] == "none"
    assert {"model.content_hash", "backbone.pretrained_hash", "seed.train", "params.path"} <= set(audit["lineage"])
    assert {"env.torch", "env.torchvision", "env.numpy", "env.cpu", "env.cuda", "env.cudnn", "env.lock_hash",
            "env.torch_threads"} <= set(audit["environment"])
    text = _labelspace(env, "audit", "1", cwd=root).stdout
    assert "last reproduction" in text and BIT_IDENTICAL in text


@pytest.mark.slow
def test_a_changed_lock_file_and_thread_count_are_named_and_judged_by_tolerance(project, tmp_path):
    root, env = project
    lock = root / "requirements.lock"
    text = lock.read_text()
    pin = next(line for line in text.splitlines() if line.startswith("numpy==")).split()[0]  # the lock's line ends " \\"
    lock.write_text(text.replace(pin, "numpy==1.26.4", 1))
    _run(["git", "commit", "-qam", "numpy pinned elsewhere"], cwd=root, env=env)
    recorded = int(_registry(root).get_model_version("labelspace", "1").tags["env.torch_threads"])
    result = _reproduce(env, root, tmp_path / "work", "--threads", str(1 if recorded > 1 else 2))
    verdict = result["verdict"]
    assert verdict["verdict"] in (WITHIN_TOLERANCE, NOT_REPRODUCED), verdict
    assert any(d.startswith("packages: lock_hash") and f"(numpy {pin.split('==')[1]} -> 1.26.4)" in d
               for d in verdict["differences"]), verdict["differences"]
    assert f"threads: torch_threads {recorded} -> {1 if recorded > 1 else 2}" in verdict["differences"]
    assert verdict["tolerance"] == 0.03 and verdict["metrics"]
    tags = _registry(root).get_model_version("labelspace", "1").tags
    assert tags["reproduced.verdict"] == verdict["verdict"] and "numpy" in tags["reproduced.differences"]


@pytest.mark.slow
def test_a_fresh_clone_without_the_data_fails_in_one_line_naming_the_version_and_where_it_looked(project, tmp_path):
    root, env = project
    clone = tmp_path / "clone"
    _run(["git", "clone", "-q", str(root), str(clone)], cwd=tmp_path, env=env)
    clone_env = {**_project_env(clone), "MLFLOW_TRACKING_URI": env["MLFLOW_TRACKING_URI"]}
    done = _reproduce(clone_env, clone, tmp_path / "work", check=False)
    assert done.returncode == 2
    version = _registry(root).get_model_version("labelspace", "1").tags["data.dataset_version"]
    error = done.stderr.strip().splitlines()[-1]
    assert error.startswith("labelspace reproduce: error: data version " + version)
    assert str(clone / ".dvc" / "cache") in error and "no DVC remote" in error


@pytest.mark.slow
def test_a_version_trained_from_a_dirty_tree_is_refused(project, tmp_path):
    root, env = project
    notes = root / "NOTES.md"
    notes.write_text("an edit nobody committed\n")
    try:
        script = textwrap.dedent(f"""
            from pathlib import Path
            from labelspace.lifecycle.lineage import code_version
            from labelspace.lifecycle.registry import register_model
            from labelspace.lifecycle.retry import client
            v1 = client().get_model_version("labelspace", "1")
            code = {{f"code.{{k}}": v for k, v in code_version(Path({str(root)!r})).items()}}
            print(register_model(v1.source, tags={{**v1.tags, **code}}, alias="dirty").version)
        """)
        number = _run([sys.executable, "-c", script], cwd=root, env=env).stdout.strip().splitlines()[-1]
    finally:
        _run(["git", "checkout", "--", "NOTES.md"], cwd=root, env=env)
    assert _registry(root).get_model_version("labelspace", number).tags["code.git_dirty"] == "true"
    done = _labelspace(env, "reproduce", number, "--workdir", str(tmp_path / "work"), cwd=root, check=False)
    assert done.returncode == 2
    assert "uncommitted changes" in done.stderr and "cannot be rebuilt" in done.stderr
    assert not (tmp_path / "work").exists()  # refused before any work
