"""A non-editable install: the built wheel alone (steps and pipelines inside it) runs the commands
from any project folder holding a params.yaml, with no checkout on sys.path."""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def _run(cmd, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kwargs)


@pytest.fixture(scope="module")
def installed(tmp_path_factory, repo_root):
    """A fresh venv holding the labelspace wheel; its dependencies come from the test environment's
    site-packages, whose .pth files (the editable install of the checkout among them) are not read."""
    tmp = tmp_path_factory.mktemp("install")
    built = _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                  "-w", str(tmp / "dist"), str(repo_root)])
    assert built.returncode == 0, built.stderr[-3000:]
    wheel = next((tmp / "dist").glob("labelspace-*.whl"))
    venv = tmp / "venv"
    assert _run([sys.executable, "-m", "venv", str(venv)]).returncode == 0
    python = venv / "bin" / "python"
    purelib = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    Path(purelib, "labelspace-test-deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    # --ignore-installed: the editable install's metadata is visible through the .pth file, and pip
    # would otherwise call labelspace installed already.
    done = _run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--ignore-installed",
                 str(wheel)])
    assert done.returncode == 0, done.stderr[-3000:]
    return venv


def _env(project: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "ZENML_", "LABELSPACE_"))}
    env.pop("PYTHONPATH", None)
    env.update(ZENML_CONFIG_PATH=str(project / ".zenml"), ZENML_ANALYTICS_OPT_IN="false")
    return env


def test_the_installed_package_is_not_the_checkout(installed, repo_root):
    where = _run([str(installed / "bin" / "python"), "-c", "import labelspace, labelspace.steps.train; "
                  "print(labelspace.__file__)"], cwd=installed, env=_env(installed))
    assert where.returncode == 0, where.stderr[-3000:]
    assert str(installed) in where.stdout and str(repo_root / "src") not in where.stdout


def test_commands_run_from_a_project_folder_outside_the_checkout(installed, repo_root, tmp_path):
    project = tmp_path / "elsewhere"
    project.mkdir()
    shutil.copy(repo_root / "params.yaml", project / "params.yaml")
    labelspace = str(installed / "bin" / "labelspace")
    env = _env(project)
    helped = _run([labelspace, "run", "--help"], cwd=project, env=env)
    assert helped.returncode == 0 and "--no-cache" in helped.stdout, helped.stderr[-2000:]
    stack = _run([labelspace, "setup-stack"], cwd=project, env=env)
    assert stack.returncode == 0, stack.stderr[-3000:]
    assert f"sqlite:///{project}/mlflow/mlflow.db" in stack.stdout
    missing = _run([labelspace, "report"], cwd=project, env=env)
    assert missing.returncode == 2 and "run `make run` (or `labelspace run`) first" in missing.stderr
    (project / "reports").mkdir()
    (project / "reports" / "metrics.json").write_text(json.dumps(_a_report()))
    report = _run([labelspace, "report"], cwd=project, env=env)
    assert report.returncode == 0, report.stderr[-2000:]
    rows = [line.split() for line in report.stdout.splitlines() if line.startswith(("labelspace", "bce"))]
    assert [row[:2] for row in rows] == [["labelspace", "3"], ["labelspace", "5"], ["bce", "3"], ["bce", "5"]]
    assert f"--backend-store-uri sqlite:///{project}/mlflow/mlflow.db" in report.stdout


def _a_report() -> dict:
    """A metrics report as evaluate writes it, from random scores."""
    import numpy as np

    from labelspace.evaluation.report import evaluate_scores

    rng = np.random.default_rng(0)
    targets = (rng.random((40, 6)) < 0.3).astype(np.uint8)
    return {name: evaluate_scores(rng.normal(size=(40, 6)), targets, (3, 5)) for name in ("labelspace", "bce")}
