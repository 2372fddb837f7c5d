"""Where the wall time of `labelspace run` goes: imports, MLflow and ZenML start-up, each step, the
library's work inside the steps, MLflow's log_model, and the time outside any step; prints the
breakdown and the pipeline's overhead as a share of the whole run, from one invocation.

1. Builds the embedded dataset (params.yaml's `sample` sizes unless --train/--test) in a
   temporary folder with a copy of params.yaml pointing at it (--epochs overrides train.epochs),
   and ZenML, MLflow, checkpoints and reports isolated in that folder.
2. Runs `labelspace run --no-cache` once untimed (--warm-up, default on: ZenML's database, the
   stack and the decoded images then exist, as they do for every run after a project's first),
   then once timed, as `python -X importtime benchmarks/_instrument.py ... run --no-cache`:
   _instrument.py wraps the step runner and the library's entry points with wall and CPU timers.
3. Prints: the interpreter's start-up, the imports by top-level package (-X importtime), the set-up
   before the pipeline (data versions, MLflow, ZenML stack), the pipeline's compilation until its
   first step, every step (wall, CPU) with the library work inside it and ZenML's own part, the gaps
   between steps, MLflow's log_model, what follows the last step; then
   `work` = the library's work in the steps (decoding, word vectors, fit_head, evaluate_models and
   the plots, the gate's scoring) and `overhead` = the rest of the wall time, as a share of it.

    .venv/bin/python benchmarks/bench_pipeline.py [--train N] [--test N] [--epochs N] [--set SECTION.KEY=VALUE]
        [--no-warm-up] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from labelspace.app import PARAMS_ENV
from labelspace.config import load_config
from labelspace.data.sample import build_sample
from labelspace.data.word_vectors import export_glove

REPO = Path(__file__).resolve().parents[1]
TELEMETRY_OFF = {"ZENML_ANALYTICS_OPT_IN": "false", "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true",
                 "DVC_NO_ANALYTICS": "1", "HF_HUB_OFFLINE": "1", "ZENML_LOGGING_VERBOSITY": "WARN"}
# The library's work inside the steps (the _instrument.py timer names); everything else is overhead.
WORK = ("ingest: manifest and decoded images", "word vectors read (embed_labels, register)",
        "embed_labels: resolve labels", "train: fit_head", "evaluate: evaluate_models",
        "evaluate: report and plots written", "gate: champion scoring")
IMPORT_LINE = re.compile(r"import time:\s+(\d+)\s+\|\s+(\d+)\s+\|(\s*)(\S+)")


def prepare_workdir(work: Path, args: argparse.Namespace) -> dict[str, str]:
    config = load_config(REPO / "params.yaml")
    params = config.params
    sample = {"n_train": args.train or params["sample"]["n_train"], "n_test": args.test or params["sample"]["n_test"]}
    build_sample(work / "fashion-canvas", config.replace(sample=sample).sample)
    vectors = REPO / params["vectors"]["path"]
    if not vectors.is_file():
        vectors = work / "glove-6b-50d.bin"
        export_glove(vectors)
    params["ingest"].update(dataset=str(work / "fashion-canvas"), cache_dir=str(work / "cache"))
    params["vectors"]["path"] = str(vectors)
    params["train"]["checkpoint_dir"] = str(work / "checkpoints")
    if args.epochs:
        params["train"]["epochs"] = args.epochs
    for setting in args.set:
        key, sep, value = setting.partition("=")
        section, _, name = key.partition(".")
        if not sep or name not in params.get(section, {}):
            raise SystemExit(f"--set wants SECTION.KEY=VALUE with a key of params.yaml, got {setting!r}")
        params[section][name] = yaml.safe_load(value)
    params["evaluate"]["report"] = str(work / "reports" / "metrics.json")
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return {**TELEMETRY_OFF, PARAMS_ENV: str(work / "params.yaml"), "ZENML_CONFIG_PATH": str(work / "zenml"),
            "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}"}


def run(work: Path, env: dict[str, str], name: str) -> tuple[float, dict, str]:
    timers, log = work / f"{name}.json", work / f"{name}.log"
    command = [sys.executable, "-X", "importtime", str(REPO / "benchmarks" / "_instrument.py"), str(timers),
               "run", "--no-cache"]
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.run(command, cwd=REPO, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    text = log.read_text()
    if proc.returncode != 0:
        sys.exit(f"`labelspace run` failed (exit {proc.returncode}); the end of {log}:\n"
                 + "\n".join(line for line in text.splitlines() if not line.startswith("import time:"))[-4000:])
    return wall, json.loads(timers.read_text()), text


def import_seconds(log: str) -> tuple[float, dict[str, float]]:
    """(all imports, seconds by package): the outermost `import time:` lines add up to the whole; a
    package's own line (`torch`, `zenml`) holds everything its import pulled in first."""
    total, by_package = 0.0, {}
    for line in log.splitlines():
        match = IMPORT_LINE.match(line)
        if not match:
            continue
        module, cumulative = match.group(4), int(match.group(2)) / 1e6
        if len(match.group(3)) == 1:  # one space: not imported from inside another module's import
            total += cumulative
        if "." not in module and module not in by_package:
            by_package[module] = cumulative
    return total, by_package


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train", type=int, help="train canvases (default: params.yaml's sample.n_train)")
    parser.add_argument("--test", type=int, help="test canvases (default: params.yaml's sample.n_test)")
    parser.add_argument("--epochs", type=int, help="default: params.yaml's train.epochs")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="another value of a params.yaml key for both runs, e.g. --set model.frozen_stages=3")
    parser.add_argument("--no-warm-up", dest="warm_up", action="store_false",
                        help="time the very first run of a fresh project (ZenML's database and the decoded "
                             "images are created during it)")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it")
    parser.add_argument("--cache-distributions", action="store_true",
                        help="what-if: the timed run with importlib.metadata.packages_distributions cached "
                             "(ZenML calls it for every artifact it stores); see _instrument.py")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        work = (args.keep or Path(tmp)).resolve()
        work.mkdir(parents=True, exist_ok=True)
        env = prepare_workdir(work, args)
        if args.warm_up:
            run(work, env, "warm-up")
        if args.cache_distributions:
            env["LABELSPACE_BENCH_CACHE_DISTRIBUTIONS"] = "1"
        wall, timers, log = run(work, env, "timed")
    report(wall, timers, *import_seconds(log), load, args)


def report(wall: float, timers: dict, import_total: float, imports: dict[str, float], load: float, args) -> None:
    process, calls, steps = timers["process"], timers["calls"], timers["steps"]
    seconds = {name: c["wall"] for name, c in calls.items()}
    rows: list[tuple[str, float, str]] = []
    startup = process["startup_before_instrument"]
    rows.append(("interpreter start-up", startup, ""))
    top = sorted(imports.items(), key=lambda kv: -kv[1])
    rows.append(("imports (-X importtime; overlaps the rows below)", import_total,
                 "first imported with: " + ", ".join(f"{k} {v:.1f}" for k, v in top[:8])))
    for name in ("before: data versions (DVC hashes)", "before: MLflow set-up and experiment",
                 "before: ZenML client and stack"):
        rows.append((name[len("before: "):], seconds.get(name, 0.0), ""))
    first_step = min((s["start"] for s in steps), default=process.get("pipeline_return", 0.0))
    rows.append(("pipeline compile and launch (until the first step)",
                 first_step - process.get("pipeline_call", first_step), ""))
    inside = {"ingest": ["ingest: manifest and decoded images"],
              "embed_labels": ["word vectors read (embed_labels, register)", "embed_labels: resolve labels"],
              "train": ["train: fit_head"], "train_baseline": ["train: fit_head"],
              "evaluate": ["evaluate: evaluate_models", "evaluate: report and plots written"],
              "register": ["register: register_trained_model"], "gate": ["gate: champion scoring"]}
    fit_heads = [s for s in steps if s["name"] in ("train", "train_baseline")]
    gaps, previous_end = 0.0, None
    for step in steps:
        if previous_end is not None:
            gaps += step["start"] - previous_end
        previous_end = step["start"] + step["wall"]
        note = f"CPU {step['cpu']:.1f} s"
        if step["name"] in ("train", "train_baseline"):
            per_head = seconds.get("train: fit_head", 0.0) / max(len(fit_heads), 1)
            note += f"; fit_head about {per_head:.1f} s of it (both heads' mean)"
        elif step["name"] in inside:
            work_inside = sum(seconds.get(n, 0.0) for n in inside[step["name"]])
            note += f"; library {work_inside:.1f} s, ZenML and MLflow {step['wall'] - work_inside:.1f} s"
            if step["name"] == "register":
                note += f" (log_model {seconds.get('register: MLflow log_model', 0.0):.1f} s)"
        rows.append((f"step {step['name']}", step["wall"], note))
    rows.append(("between steps", gaps, ""))
    after = process["command_wall"] - (previous_end or 0.0)
    rows.append(("after the last step (run summary, metrics table, exit)", after, ""))
    accounted = startup + process["command_wall"]
    work_seconds = sum(seconds.get(name, 0.0) for name in WORK)
    overhead = wall - work_seconds

    if process.get("what_if"):
        print(f"what-if: {process['what_if']}")
    if args.set:
        print(f"params.yaml changed: {', '.join(args.set)}")
    print(f"`labelspace run --no-cache`: {wall:.1f} s wall (timed run{', after a warm-up run' if args.warm_up else ''}; "
          f"{process['command_cpu'] + process.get('cpu_before_instrument', 0):.1f} s CPU)")
    width = max(len(r[0]) for r in rows)
    for name, value, note in rows:
        print(f"  {name:<{width}}  {value:7.1f} s  {100 * value / wall:5.1f} %  {note}")
    print(f"  {'(accounted: start-up + the command)':<{width}}  {accounted:7.1f} s")
    print("library work inside steps: " + ", ".join(f"{n} {seconds.get(n, 0.0):.1f} s" for n in WORK if n in seconds))
    print(f"work {work_seconds:.1f} s, overhead {overhead:.1f} s = {100 * overhead / wall:.1f} % of the wall time "
          f"(MLflow log_model {seconds.get('register: MLflow log_model', 0.0):.1f} s of it)")
    print(f"1-min load average {load:.1f} before, {os.getloadavg()[0]:.1f} after ({os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
