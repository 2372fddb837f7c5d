"""Run a `labelspace` command with timers around what it spends its time on; write them as JSON.

    python benchmarks/_instrument.py OUT.json run --no-cache

The benchmarks start this instead of `python -m labelspace` (bench_pipeline.py adds `-X importtime`
to read the imports). Nothing in the library changes: functions are wrapped by module attribute
before the command looks them up (the steps import what they call inside their bodies), and each
timer records wall and process CPU seconds:
- `steps`: every ZenML step as the step runner runs it (inputs, the step function, outputs, MLflow
  run start and end), in order, with the wall time between them;
- `calls`: the library's work inside steps (ingest and decoding, word vectors, fit_head,
  evaluate_models, registration, MLflow's log_model, the open vocabulary) and before the pipeline
  (data versions, MLflow set-up, the ZenML stack, the pipeline's compilation until its first step);
- `process`: the interpreter's start-up until this file ran, and the whole command.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import sys
import time

WALL0, CPU0 = time.perf_counter(), time.process_time()
RECORD: dict = {"steps": [], "calls": {}, "process": {}}


def _process_age() -> float:
    """Seconds since this process started (from /proc), so the interpreter's own start-up counts."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


RECORD["process"]["startup_before_instrument"] = _process_age()


def _add(name: str, wall: float, cpu: float) -> None:
    entry = RECORD["calls"].setdefault(name, {"wall": 0.0, "cpu": 0.0, "n": 0})
    entry["wall"] += wall
    entry["cpu"] += cpu
    entry["n"] += 1


def _timed(name: str, fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            return fn(*args, **kwargs)
        finally:
            _add(name, time.perf_counter() - wall, time.process_time() - cpu)

    return wrapper


def wrap(module: str, attribute: str, name: str | None = None) -> None:
    """Replace module.attribute (a function, or Class.method as "Class.method") by a timed copy."""
    try:
        mod = importlib.import_module(module)
    except ImportError:
        return
    owner, _, leaf = attribute.rpartition(".")
    target = getattr(mod, owner) if owner else mod
    if not hasattr(target, leaf):
        return
    setattr(target, leaf, _timed(name or f"{module}.{attribute}", getattr(target, leaf)))


def _wrap_step_runner() -> None:
    from zenml.orchestrators import step_runner

    original = step_runner.StepRunner.run

    @functools.wraps(original)
    def run(self, *args, **kwargs):
        step_run = kwargs.get("step_run") or (args[1] if len(args) > 1 else None)
        name = getattr(step_run, "name", "?")
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            return original(self, *args, **kwargs)
        finally:
            RECORD["steps"].append({"name": name, "start": wall - WALL0, "wall": time.perf_counter() - wall,
                                    "cpu": time.process_time() - cpu})

    step_runner.StepRunner.run = run


def _wrap_pipeline_call() -> None:
    from zenml.pipelines import pipeline_definition

    original = pipeline_definition.Pipeline.__call__

    @functools.wraps(original)
    def call(self, *args, **kwargs):
        RECORD["process"]["pipeline_call"] = time.perf_counter() - WALL0
        try:
            return original(self, *args, **kwargs)
        finally:
            RECORD["process"]["pipeline_return"] = time.perf_counter() - WALL0

    pipeline_definition.Pipeline.__call__ = call


def _cache_distributions() -> None:
    """What-if (LABELSPACE_BENCH_CACHE_DISTRIBUTIONS=1): ZenML resolves the source of every artifact's
    type and materializer through importlib.metadata.packages_distributions(), which reads every
    installed distribution's metadata each time; cached, it is read once per process."""
    import importlib.metadata

    importlib.metadata.packages_distributions = functools.cache(importlib.metadata.packages_distributions)
    try:
        import importlib_metadata

        importlib_metadata.packages_distributions = functools.cache(importlib_metadata.packages_distributions)
    except ImportError:
        pass


def main() -> int:
    out, argv = sys.argv[1], sys.argv[2:]
    wall = time.perf_counter()
    from labelspace.app import telemetry_off

    telemetry_off()
    if os.environ.get("LABELSPACE_BENCH_CACHE_DISTRIBUTIONS") == "1":
        _cache_distributions()
        RECORD["process"]["what_if"] = "packages_distributions cached"
    _wrap_step_runner()
    _wrap_pipeline_call()
    for module, attribute, name in [
        ("labelspace.data.dvc_versions", "dataset_version", "before: data versions (DVC hashes)"),
        ("labelspace.lifecycle.tracking", "ensure_experiment", "before: MLflow set-up and experiment"),
        ("labelspace.pipelines.stack", "ensure_stack", "before: ZenML client and stack"),
        ("labelspace.data.prepared", "PreparedData.ensure", "ingest: manifest and decoded images"),
        ("labelspace.data.word_vectors", "load_word_vectors", "word vectors read (embed_labels, register)"),
        ("labelspace.data.word_vectors", "resolve_label_vectors", "embed_labels: resolve labels"),
        ("labelspace.training.fit", "fit_head", "train: fit_head"),
        ("labelspace.evaluation.evaluate", "evaluate_models", "evaluate: evaluate_models"),
        ("labelspace.evaluation.evaluate", "write_report", "evaluate: report and plots written"),
        ("labelspace.lifecycle.registry", "register_trained_model", "register: register_trained_model"),
        ("mlflow.pyfunc", "log_model", "register: MLflow log_model"),
        ("labelspace.lifecycle.registry", "register_model", "register: registry version and tags"),
        ("labelspace.lifecycle.promotion_gate", "run_gate", "gate: champion scoring"),
    ]:
        wrap(module, attribute, name)
    RECORD["process"]["instrument_setup"] = time.perf_counter() - wall
    from labelspace.cli import main as cli_main

    code = 1
    try:
        code = cli_main(argv)
    finally:
        RECORD["process"]["command_wall"] = time.perf_counter() - WALL0
        RECORD["process"]["command_cpu"] = time.process_time() - CPU0
        RECORD["process"]["cpu_before_instrument"] = CPU0
        with open(out, "w") as f:
            json.dump(RECORD, f, indent=1)
    return code


if __name__ == "__main__":
    from labelspace.cli import exit_promptly

    exit_promptly(main())  # as the console script ends, so the benchmark times the same exit
