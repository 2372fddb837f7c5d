"""`labelspace compile --orchestrator kubeflow`: the KFP pipeline spec of the real ZenML pipeline,
written offline: every step of the pipeline and its dependencies, the image, a GPU for the two
train steps only, the schedule's recurring run; a wrong orchestrator or cron is one clear error."""

from __future__ import annotations

import pytest
import yaml

from labelspace.cli import main

IMAGE = "registry.example.com/ml/labelspace:test"
KFP_KEYS = {"components", "deploymentSpec", "pipelineInfo", "root", "schemaVersion", "sdkVersion"}


@pytest.fixture(scope="module")
def zenml_steps(project_config):
    """The pipeline's own step invocations, as ZenML prepares them: name -> upstream step names."""
    from labelspace.pipelines.training import pipeline_arguments, training_pipeline
    from labelspace.training.fit import HeldOut

    arguments = pipeline_arguments(project_config, dataset_version="x", vectors_version="y",
                                   held_out=HeldOut(labels=[], not_concepts=[]))
    pipeline = training_pipeline.copy()
    pipeline.prepare(**arguments)
    return {name: set(inv.upstream_steps) for name, inv in pipeline.invocations.items()}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    out = tmp_path_factory.mktemp("kfp")
    assert main(["compile", "--orchestrator", "kubeflow", "--out", str(out / "training.yaml"), "--image", IMAGE]) == 0
    assert main(["compile", "--orchestrator", "kubeflow", "--pipeline", "retrain", "--out", str(out / "retrain.yaml"),
                 "--image", IMAGE]) == 0
    assert main(["compile", "--orchestrator", "kubeflow", "--out", str(out / "weekly.yaml"), "--image", IMAGE,
                 "--schedule", "30 1 * * 0", "--snapshot-id", "0d6f3b5e-0000-4000-8000-000000000001"]) == 0
    return out


def _load(path):
    docs = list(yaml.safe_load_all(path.read_text()))
    assert len(docs) == 2, "the pipeline spec, then the Kubernetes platform spec"
    return docs


@pytest.mark.parametrize("name", ["training", "retrain", "weekly"])
def test_the_spec_holds_every_step_of_the_zenml_pipeline_with_its_dependencies(compiled, zenml_steps, name):
    spec, platform = _load(compiled / f"{name}.yaml")
    assert KFP_KEYS <= set(spec) and spec["schemaVersion"] == "2.1.0"
    tasks = spec["root"]["dag"]["tasks"]
    by_step = {task["taskInfo"]["name"]: key for key, task in tasks.items()}
    assert set(by_step) == set(zenml_steps)
    executors = spec["deploymentSpec"]["executors"]
    for step, upstream in zenml_steps.items():
        task = tasks[by_step[step]]
        assert set(task.get("dependentTasks", [])) == {by_step[u] for u in upstream}, step
        component = spec["components"][task["componentRef"]["name"]]
        container = executors[component["executorLabel"]]["container"]
        assert container["image"] == IMAGE
        assert container["command"] == ["python", "-m", "zenml.entrypoints.entrypoint"]
        assert container["args"][container["args"].index("--step_name") + 1] == step
        assert "{{$.inputs.parameters['zenml_snapshot_id']}}" in container["args"]
        assert container["resources"]["resourceCpuLimit"] and container["resources"]["resourceMemoryLimit"]
        secrets = {s["secretName"] for s in platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"][
            component["executorLabel"]]["secretAsEnv"]}
        assert secrets == {"labelspace-zenml", "labelspace-mlflow", "labelspace-s3"}
    assert spec["pipelineInfo"]["name"] == {"training": "labelspace-training", "retrain": "labelspace-retrain",
                                            "weekly": "labelspace-training"}[name]


def test_only_the_two_train_steps_request_a_gpu(compiled):
    spec, platform = _load(compiled / "training.yaml")
    executors = spec["deploymentSpec"]["executors"]
    gpu = {}
    for task in spec["root"]["dag"]["tasks"].values():
        label = spec["components"][task["componentRef"]["name"]]["executorLabel"]
        gpu[task["taskInfo"]["name"]] = (executors[label]["container"]["resources"].get("accelerator"),
                                         platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"][label]
                                         .get("tolerations"))
    wanted = {"count": "1", "resourceCount": "1", "resourceType": "nvidia.com/gpu", "type": "nvidia.com/gpu"}
    assert {step for step, (accelerator, _) in gpu.items() if accelerator} == {"train", "train_baseline"}
    for step in ("train", "train_baseline"):
        assert gpu[step][0] == wanted and gpu[step][1][0]["key"] == "nvidia.com/gpu"
    assert all(tolerations is None for step, (_, tolerations) in gpu.items() if step not in ("train", "train_baseline"))


def test_the_schedules_are_kfp_recurring_runs(compiled):
    assert not (compiled / "training.recurring-run.yaml").exists()  # not scheduled
    nightly = yaml.safe_load((compiled / "retrain.recurring-run.yaml").read_text())
    assert nightly["trigger"]["cron_schedule"]["cron"] == "0 0 2 * * *"  # docs/lifecycle.md's 02:00, seconds first
    assert nightly["max_concurrency"] == "1" and nightly["mode"] == "ENABLE" and nightly["no_catchup"] is True
    assert nightly["display_name"] == "labelspace-retrain"
    weekly = yaml.safe_load((compiled / "weekly.recurring-run.yaml").read_text())
    assert weekly["trigger"]["cron_schedule"]["cron"] == "0 30 1 * * 0"
    snapshot = "0d6f3b5e-0000-4000-8000-000000000001"
    assert weekly["runtime_config"]["parameters"]["zenml_snapshot_id"] == snapshot
    spec, _ = _load(compiled / "weekly.yaml")
    assert spec["root"]["inputDefinitions"]["parameters"]["zenml_snapshot_id"]["defaultValue"] == snapshot


def test_a_wrong_orchestrator_or_cron_is_one_clear_error(tmp_path, capsys):
    assert main(["compile", "--orchestrator", "airflow", "--out", str(tmp_path / "x.yaml")]) == 2
    err = capsys.readouterr().err
    assert "unknown orchestrator 'airflow'" in err and "kubeflow" in err
    assert main(["compile", "--orchestrator", "kubeflow", "--out", str(tmp_path / "x.yaml"),
                 "--schedule", "every night"]) == 2
    assert "not a cron expression: 'every night'" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_a_run_gets_the_kubeflow_settings_only_on_a_kubeflow_stack(project_config):
    from labelspace.pipelines.kubeflow import kubeflow_options, pipeline_graph
    from labelspace.pipelines.run import orchestrator_options

    assert orchestrator_options(project_config) == {}  # the local orchestrator: nothing to add
    options = kubeflow_options(pipeline_graph(project_config))
    gpu_steps = {name for name, step in options["steps"].items() if "orchestrator.kubeflow" in step["settings"]}
    assert gpu_steps == {"train", "train_baseline"}
    assert options["settings"]["docker"].parent_image
