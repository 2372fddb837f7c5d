"""The default pipeline's test-split figures over training seeds: mean ± standard deviation per head.

One seed of `labelspace run` says little where two heads differ by under a point. This script runs
the real pipeline (`labelspace run --no-cache`) once per `--seeds` value with only `train.seed`
changed (the data, its split, the held-out labels and the test images stay the same), each in its
own folder: its ZenML store, MLflow sqlite store, checkpoints and reports/metrics.json, so nothing
touches the project's own stores or registry. Then it prints, per figure the model-quality targets
name (top-3 C-F1 and O-F1, mAP, thresholded O-F1, zero-shot against chance), every seed's value
and mean ± sd for the label space and the BCE baseline, as a markdown table, and writes them to
`--out`/summary.json.

    .venv/bin/python scripts/test_seeds.py [--params params.yaml] [--seeds 0 1 2] [--out DIR]
        [--threads N] [--jobs J]

`--jobs 2 --threads 1` runs two seeds side by side at one torch thread each (a 2-core machine).
A seed whose metrics.json is already in `--out` is read, not rerun: a cut-off study resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from labelspace.app import PARAMS_ENV, TELEMETRY_OFF

REPO = Path(__file__).resolve().parents[1]
# The params a `labelspace run` resolves against the project root (labelspace.config.Config.resolve).
PATH_KEYS = (("sample", "source"), ("sample", "out"), ("vectors", "path"), ("ingest", "dataset"),
             ("ingest", "cache_dir"), ("train", "checkpoint_dir"), ("evaluate", "report"))
# (row name, path into metrics.json, path to its chance or None)
FIGURES = (
    ("top-3 C-F1", ("top3", "C-F1"), None),
    ("top-3 O-F1", ("top3", "O-F1"), None),
    ("mAP", ("mAP",), None),
    ("thresholded O-F1", ("threshold", "O-F1"), None),
)
ZERO_SHOT = (
    ("ZSL O-F1@1", ("zero_shot", "top1", "O-F1"), ("zero_shot", "chance", "top1", "O-F1")),
    ("ZSL mAP", ("zero_shot", "mAP"), ("zero_shot", "chance", "mAP")),
    ("GZSL mAP", ("zero_shot", "gzsl", "mAP"), ("zero_shot", "gzsl", "chance", "mAP")),
)


def seed_params(params_path: Path, seed: int, work: Path) -> Path:
    """A copy of `params_path` with train.seed = `seed`, its paths absolute (against the original's
    project root), and checkpoints and the report inside `work`."""
    params = yaml.safe_load(params_path.read_text())
    root = params_path.parent
    for section, key in PATH_KEYS:
        value = params.get(section, {}).get(key)
        if value is not None and not Path(value).is_absolute():
            params[section][key] = str((root / value).resolve())
    params["train"]["seed"] = seed
    params["train"]["checkpoint_dir"] = str(work / "checkpoints")
    params["evaluate"]["report"] = str(work / "reports" / "metrics.json")
    path = work / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def store_env(work: Path) -> dict[str, str]:
    """The environment of a process bound to one seed folder's own ZenML store and MLflow database."""
    return {**os.environ, **TELEMETRY_OFF, "ZENML_LOGGING_VERBOSITY": "WARN", "ZENML_CONFIG_PATH": str(work / "zenml"),
            "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}"}


def run_seed(params_path: Path, seed: int, out: Path, threads: int | None) -> dict:
    """metrics.json of one seed's `labelspace run --no-cache` (read from `out` when already there)."""
    work = out / f"seed{seed}"
    report = work / "reports" / "metrics.json"
    if report.is_file():
        return json.loads(report.read_text())
    work.mkdir(parents=True, exist_ok=True)
    env = {**store_env(work), PARAMS_ENV: str(seed_params(params_path, seed, work)), "LABELSPACE_PROGRESS": "log"}
    if threads:
        env["LABELSPACE_TORCH_THREADS"] = env["OMP_NUM_THREADS"] = str(threads)
    labelspace = Path(sys.executable).parent / "labelspace"
    start = time.perf_counter()
    print(f"seed {seed}: labelspace run --no-cache (log: {work / 'run.log'})", flush=True)
    with open(work / "run.log", "w") as log:
        proc = subprocess.run([str(labelspace), "run", "--no-cache"], cwd=REPO, env=env, stdout=log,
                              stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = "\n".join((work / "run.log").read_text().splitlines()[-30:])
        raise RuntimeError(f"seed {seed}: labelspace run failed (exit {proc.returncode}):\n{tail}")
    print(f"seed {seed}: done in {time.perf_counter() - start:.0f} s", flush=True)
    return json.loads(report.read_text())


def _get(report: dict, path: tuple[str, ...]):
    for key in path:
        if not isinstance(report, dict) or key not in report:
            return None
        report = report[key]
    return report


def _cell(values: list[float]) -> str:
    shown = [v for v in values if v is not None]
    if not shown:
        return "–"
    if len(shown) == 1:
        return f"{100 * shown[0]:.1f}"
    return f"{100 * statistics.mean(shown):.1f} ± {100 * statistics.stdev(shown):.1f}"


def summarize(reports: dict[int, dict]) -> tuple[str, dict]:
    """The markdown table and its numbers: per figure, every seed's value and mean ± sd."""
    seeds = sorted(reports)
    lines = ["| | label space | BCE | LS − BCE | per seed (LS / BCE) |", "|---|---|---|---|---|"]
    numbers: dict[str, dict] = {}
    for name, path, _ in FIGURES:
        ls = [_get(reports[s], ("labelspace", *path)) for s in seeds]
        bce = [_get(reports[s], ("bce", *path)) for s in seeds]
        pairs = [(a, b) for a, b in zip(ls, bce, strict=True) if a is not None and b is not None]
        diffs = [a - b for a, b in pairs]
        per_seed = ", ".join(f"{100 * a:.1f}/{100 * b:.1f}" for a, b in pairs)
        lines.append(f"| {name} | {_cell(ls)} | {_cell(bce)} | {_cell(diffs)} | {per_seed} |")
        numbers[name] = {"labelspace": ls, "bce": bce, "difference": diffs}
    for name, path, chance_path in ZERO_SHOT:
        values = [_get(reports[s], path) for s in seeds]
        chance = [_get(reports[s], chance_path) for s in seeds]
        ratios = [v / c for v, c in zip(values, chance, strict=True) if v is not None and c]
        ratio = (f"{statistics.mean(ratios):.2f}× chance" + (f" ± {statistics.stdev(ratios):.2f}" if len(ratios) > 1 else "")
                 if ratios else "–")
        per_seed = ", ".join(f"{100 * v:.1f}" for v in values if v is not None)
        lines.append(f"| {name} (chance {_cell(chance[:1])}) | {_cell(values)} | – | {ratio} | {per_seed} |")
        numbers[name] = {"labelspace": values, "chance": chance, "ratio": ratios}
    return "\n".join(lines), {"seeds": seeds, "figures": numbers}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=None, help="default: reports/seeds/<params folder name>")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per run (default: automatic)")
    parser.add_argument("--jobs", type=int, default=1, help="seeds run side by side")
    args = parser.parse_args(argv)
    params_path = args.params.resolve()
    if not params_path.is_file():
        parser.error(f"--params {params_path} does not exist")
    out = (args.out or REPO / "reports" / "seeds" / params_path.parent.name).resolve()
    out.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = {seed: pool.submit(run_seed, params_path, seed, out, args.threads) for seed in args.seeds}
        reports = {seed: future.result() for seed, future in futures.items()}
    table, numbers = summarize(reports)
    (out / "summary.json").write_text(json.dumps({"params": str(params_path), **numbers}, indent=2))
    print(f"\ntest split, {params_path.relative_to(REPO) if params_path.is_relative_to(REPO) else params_path}, "
          f"seeds {', '.join(map(str, args.seeds))} (%):\n")
    print(table)
    print(f"\n{out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
