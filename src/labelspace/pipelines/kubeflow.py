"""The training pipeline on Kubeflow Pipelines: container and per-step resource settings, and an
offline compiler of the KFP pipeline spec (IR YAML, schemaVersion 2.1.0) and its recurring run.

Why not ZenML's own compiler: ZenML 0.98's Kubeflow orchestrator writes the same kind of spec, but
only inside `submit_pipeline`, from a snapshot stored on a ZenML server, with built images, a remote
stack and the `kfp` package; `kfp` 2.17 needs protobuf < 7 (and other pins) where
requirements.lock has protobuf 7.36.2, so it cannot be installed beside the project. This module
builds the spec from the same pipeline definition instead: it prepares `training_pipeline` with the
arguments `labelspace run` passes (pipelines.training.pipeline_arguments), walks ZenML's step invocations and
their input artifacts, and writes one container component per step that runs ZenML's own step
entrypoint (`python -m zenml.entrypoints.entrypoint ... --step_name S --snapshot_id ID`, the command
ZenML's Kubeflow orchestrator writes), with `dependentTasks` from each step's upstream steps. A step
added to the pipeline appears in the spec with no change here. Layout of the output follows KFP's
published PipelineSpec (components, deploymentSpec.executors.*.container with image, command, args,
env and resources, root.dag.tasks, pipelineInfo, schemaVersion, sdkVersion) and a second YAML
document with the Kubernetes platform spec (secrets as environment variables, GPU tolerations), as
`kfp` and `kfp-kubernetes` write them. docs/scale-out.md and stacks/kubeflow/README.md say how to
apply both.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from zenml.config import DockerSettings, ResourceSettings

from labelspace import __version__
from labelspace.config import Config
from labelspace.pipelines.training import pipeline_arguments, training_pipeline
from labelspace.training.fit import HeldOut

ORCHESTRATORS = ("kubeflow",)
PIPELINES = {"training": "labelspace-training", "retrain": "labelspace-retrain"}
DEFAULT_RETRAIN_CRON = "0 2 * * *"  # docs/lifecycle.md's nightly retrain
DEFAULT_IMAGE = f"labelspace:{__version__}"
# CUDA 12.8 runtime with the lock's torch: requirements.lock reinstalls torch==2.14.1 over it.
DEFAULT_PARENT_IMAGE = "pytorch/pytorch:2.7.1-cuda12.8-cudnn9-runtime"
SNAPSHOT_PARAMETER = "zenml_snapshot_id"
GPU = "nvidia.com/gpu"
SCHEMA_VERSION = "2.1.0"
RESOLVED_AT_RUN_TIME = "resolved-at-run-time"

# Per step function (both `train` invocations, the label space and the BCE baseline, share it).
STEP_RESOURCES: dict[str, ResourceSettings] = {
    "ingest": ResourceSettings(cpu_count=8, memory="16GiB"),       # decoding threads, shards
    "embed_labels": ResourceSettings(cpu_count=1, memory="8GiB"),  # GoogleNews vectors: 3.6 GB
    "train": ResourceSettings(cpu_count=8, memory="32GiB", gpu_count=1),
    "evaluate": ResourceSettings(cpu_count=4, memory="16GiB"),
    "register": ResourceSettings(cpu_count=2, memory="8GiB"),
    "gate": ResourceSettings(cpu_count=4, memory="16GiB"),
}
DEFAULT_RESOURCES = ResourceSettings(cpu_count=2, memory="8GiB")  # a step not listed above

# Kubernetes secrets each step container reads as environment variables (key name = variable).
SECRETS: dict[str, tuple[str, ...]] = {
    "labelspace-zenml": ("ZENML_STORE_URL", "ZENML_STORE_API_KEY"),
    "labelspace-mlflow": ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"),
    "labelspace-s3": ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL"),
}
ENVIRONMENT = {"ZENML_ANALYTICS_OPT_IN": "false", "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true",
               "DVC_NO_ANALYTICS": "1", "HF_HUB_OFFLINE": "1", "KFP_RUN_ID": "{{$.pipeline_job_name}}"}


@dataclass
class StepNode:
    """One step invocation of the ZenML pipeline: its name, its step function, what it reads."""

    name: str
    step: str
    upstream: list[str]
    inputs: dict[str, str] = field(default_factory=dict)  # input -> "producer.output"
    resources: ResourceSettings = DEFAULT_RESOURCES

    @property
    def gpus(self) -> int:
        return self.resources.gpu_count or 0


def docker_settings(parent_image: str = DEFAULT_PARENT_IMAGE) -> DockerSettings:
    """The step image: the parent image, requirements.lock's exact pins, then the project itself."""
    return DockerSettings(
        parent_image=parent_image,
        requirements="requirements.lock",
        install_stack_requirements=False,  # the lock holds the stack's packages (s3fs, mlflow)
        local_project_install_command="pip install --no-deps .",
        environment={k: v for k, v in ENVIRONMENT.items() if k != "KFP_RUN_ID"},
    )


def pipeline_graph(config: Config) -> list[StepNode]:
    """The steps of `labelspace_training` in order, from ZenML's own invocations, prepared with the
    arguments `labelspace run` passes (data versions and held-out labels are placeholders: the graph
    does not depend on them)."""
    pipeline = training_pipeline.copy()
    pipeline.prepare(**pipeline_arguments(
        config, dataset_version=RESOLVED_AT_RUN_TIME, vectors_version=RESOLVED_AT_RUN_TIME,
        held_out=HeldOut(labels=[], not_concepts=[], rule=RESOLVED_AT_RUN_TIME)))
    nodes = []
    for name, invocation in pipeline.invocations.items():
        step = invocation.step.entrypoint.__name__
        nodes.append(StepNode(
            name=name, step=step, upstream=sorted(invocation.upstream_steps),
            inputs={k: f"{a.invocation_id}.{a.output_name}" for k, a in invocation.input_artifacts.items()},
            resources=STEP_RESOURCES.get(step, DEFAULT_RESOURCES)))
    return nodes


def kubeflow_options(nodes: list[StepNode], parent_image: str = DEFAULT_PARENT_IMAGE) -> dict[str, Any]:
    """`training_pipeline.with_options(**kubeflow_options(pipeline_graph(config)))` runs the pipeline on
    a Kubeflow stack with the image and the resources the compiled spec shows. ZenML's Kubeflow
    orchestrator requests a GPU only for steps whose pod settings name an `accelerator` node selector."""
    steps: dict[str, Any] = {}
    for node in nodes:
        settings: dict[str, Any] = {"resources": node.resources}
        if node.gpus:
            settings["orchestrator.kubeflow"] = {"pod_settings": {"node_selectors": {"accelerator": GPU}}}
        steps[node.name] = {"settings": settings}
    return {"settings": {"docker": docker_settings(parent_image)}, "steps": steps}


_CRON_FIELD = re.compile(r"^[0-9A-Za-z*/,?LW#-]+$")


def kfp_cron(cron: str) -> str:
    """KFP's cron has a seconds field first: '0 2 * * *' (5 fields) -> '0 0 2 * * *'; 6 fields pass."""
    fields = cron.split()
    if len(fields) not in (5, 6) or not all(_CRON_FIELD.match(f) for f in fields):
        raise ValueError(f"not a cron expression: {cron!r}; give 5 fields (minute hour day-of-month month "
                         f"day-of-week), e.g. {DEFAULT_RETRAIN_CRON!r}")
    return " ".join(["0", *fields] if len(fields) == 5 else fields)


def _task_name(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _resources(r: ResourceSettings) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if r.gpu_count:
        count = str(r.gpu_count)
        out["accelerator"] = {"count": count, "resourceCount": count, "resourceType": GPU, "type": GPU}
    if r.cpu_count:
        out.update(cpuLimit=float(r.cpu_count), cpuRequest=float(r.cpu_count),
                   resourceCpuLimit=f"{r.cpu_count:g}", resourceCpuRequest=f"{r.cpu_count:g}")
    if r.memory:
        from zenml.config.resource_settings import ByteUnit

        gib = r.get_memory(ByteUnit.GIB)
        quantity = f"{gib:g}Gi"
        out.update(memoryLimit=round(r.get_memory(ByteUnit.GB), 9), memoryRequest=round(r.get_memory(ByteUnit.GB), 9),
                   resourceMemoryLimit=quantity, resourceMemoryRequest=quantity)
    return out


def _entrypoint(step_name: str) -> tuple[list[str], list[str]]:
    """ZenML's step entrypoint, as its Kubeflow orchestrator writes it, the snapshot id a KFP input."""
    from zenml.entrypoints.step_entrypoint_configuration import StepEntrypointConfiguration

    nil = uuid.UUID(int=0)
    args = StepEntrypointConfiguration.get_entrypoint_arguments(step_name=step_name, snapshot_id=nil)
    placeholder = f"{{{{$.inputs.parameters['{SNAPSHOT_PARAMETER}']}}}}"
    return list(StepEntrypointConfiguration.get_entrypoint_command()), [
        placeholder if a == str(nil) else a for a in args]


def compile_kfp(config: Config, *, pipeline: str = "training", image: str = DEFAULT_IMAGE,
                schedule: str | None = None, snapshot_id: str | None = None,
                nodes: list[StepNode] | None = None) -> tuple[list[dict[str, Any]], dict[str, Any] | None, list[StepNode]]:
    """([pipeline spec, Kubernetes platform spec], the recurring run or None, the steps). `pipeline`
    'retrain' is the training pipeline as the scheduler runs it: nightly unless `schedule` says when."""
    if pipeline not in PIPELINES:
        raise ValueError(f"unknown pipeline {pipeline!r}: choose one of {', '.join(PIPELINES)}")
    if pipeline == "retrain" and schedule is None:
        schedule = DEFAULT_RETRAIN_CRON
    cron = kfp_cron(schedule) if schedule else None
    nodes = nodes if nodes is not None else pipeline_graph(config)
    name = PIPELINES[pipeline]
    snapshot_input = {"parameterType": "STRING"}
    components, executors, tasks, platform = {}, {}, {}, {}
    for node in nodes:
        task = _task_name(node.name)
        command, args = _entrypoint(node.name)
        env = {**ENVIRONMENT, "LABELSPACE_TORCH_THREADS": f"{node.resources.cpu_count or 1:g}"}
        container: dict[str, Any] = {"image": image, "command": command, "args": args,
                                     "env": [{"name": k, "value": v} for k, v in env.items()]}
        resources = _resources(node.resources)
        if resources:
            container["resources"] = resources
        components[f"comp-{task}"] = {"executorLabel": f"exec-{task}",
                                      "inputDefinitions": {"parameters": {SNAPSHOT_PARAMETER: snapshot_input}}}
        executors[f"exec-{task}"] = {"container": container}
        tasks[task] = {
            # ZenML's cache decides what reruns (keyed on code, config and inputs), not KFP's.
            "cachingOptions": {"enableCache": False},
            "componentRef": {"name": f"comp-{task}"},
            **({"dependentTasks": [_task_name(u) for u in node.upstream]} if node.upstream else {}),
            "inputs": {"parameters": {SNAPSHOT_PARAMETER: {"componentInputParameter": SNAPSHOT_PARAMETER}}},
            "taskInfo": {"name": node.name},
        }
        kube: dict[str, Any] = {"secretAsEnv": [
            {"secretName": secret, "keyToEnv": [{"secretKey": k, "envVar": k} for k in keys]}
            for secret, keys in SECRETS.items()]}
        if node.gpus:  # GPU node pools are usually tainted nvidia.com/gpu:NoSchedule
            kube["tolerations"] = [{"key": GPU, "operator": "Exists", "effect": "NoSchedule"}]
        platform[f"exec-{task}"] = kube
    root_input: dict[str, Any] = {"parameterType": "STRING"}
    if snapshot_id:
        root_input.update(defaultValue=snapshot_id, isOptional=True)
    description = ("labelspace training pipeline (ZenML labelspace_training): "
                   + " -> ".join(n.name for n in nodes))
    spec = {
        "components": components,
        "deploymentSpec": {"executors": executors},
        "pipelineInfo": {"description": description, "name": name},
        "root": {"dag": {"tasks": tasks}, "inputDefinitions": {"parameters": {SNAPSHOT_PARAMETER: root_input}}},
        "schemaVersion": SCHEMA_VERSION,
        "sdkVersion": f"labelspace-{__version__}",
    }
    platform_spec = {"platforms": {"kubernetes": {"deploymentSpec": {"executors": platform}}}}
    recurring = None
    if cron:
        recurring = {  # KFP v2beta1 RecurringRun fields
            "display_name": name, "description": f"{name}: {schedule} (cron), never two at once",
            "mode": "ENABLE", "max_concurrency": "1", "no_catchup": True,
            "trigger": {"cron_schedule": {"cron": cron}},
            "runtime_config": {"parameters": {SNAPSHOT_PARAMETER: snapshot_id or "SNAPSHOT_ID"}},
        }
    return [spec, platform_spec], recurring, nodes


class _PlainDumper(yaml.SafeDumper):
    """No anchors and aliases: every component spells out its inputs, as kfp writes them."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def recurring_run_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(f"{out.stem}.recurring-run.yaml")


def write_kfp(out: str | Path, docs: list[dict[str, Any]], recurring: dict[str, Any] | None,
              nodes: list[StepNode]) -> list[Path]:
    """The spec (two YAML documents, with a header naming the steps and what each reads), and beside
    it, when scheduled, `<name>.recurring-run.yaml`. Returns the files written."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    spec = docs[0]
    header = ["# PIPELINE DEFINITION (labelspace compile --orchestrator kubeflow)",
              f"# Name: {spec['pipelineInfo']['name']}",
              "# Inputs:", f"#    {SNAPSHOT_PARAMETER}: str (the ZenML snapshot the steps run)", "# Steps:"]
    for node in nodes:
        reads = ", ".join(f"{k} <- {v}" for k, v in node.inputs.items()) or "pipeline parameters only"
        gpu = f", {node.gpus} GPU" if node.gpus else ""
        header.append(f"#    {node.name} ({node.step}; {node.resources.cpu_count:g} CPU, {node.resources.memory}{gpu}): {reads}")
    body = "---\n".join(yaml.dump(d, Dumper=_PlainDumper, sort_keys=True, width=120) for d in docs)
    out.write_text("\n".join(header) + "\n" + body, encoding="utf-8")
    written = [out]
    if recurring is not None:
        path = recurring_run_path(out)
        cron = recurring["trigger"]["cron_schedule"]["cron"]
        note = [f"# KFP recurring run of {out.name} (v2beta1 RecurringRun fields): {recurring['description']}",
                "# Apply with the KFP SDK (docs/scale-out.md):",
                f"#   kfp.Client(host=...).create_recurring_run(experiment_id=..., job_name={recurring['display_name']!r},",
                f"#       pipeline_package_path={out.name!r}, cron_expression={cron!r}, max_concurrency=1,",
                f"#       no_catchup=True, params={json.dumps(recurring['runtime_config']['parameters'])})",
                "# or POST it to /apis/v2beta1/recurringruns with pipeline_version_reference set after upload."]
        path.write_text("\n".join(note) + "\n" + yaml.dump(recurring, Dumper=_PlainDumper, sort_keys=True),
                        encoding="utf-8")
        written.append(path)
    return written
