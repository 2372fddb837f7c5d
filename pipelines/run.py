"""`labelspace run`: compute the data versions, make sure the stack exists, run the pipeline."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import labelspace


def code_root() -> Path:
    """The checkout holding steps/ and pipelines/ (ZenML resolves step sources from it)."""
    return Path(labelspace.__file__).resolve().parents[2]


def prepare_environment() -> Path:
    """Project root (the folder of params.yaml) and process settings; call before importing ZenML."""
    from labelspace.cli import telemetry_off
    from labelspace.params import find_params_file

    telemetry_off()
    project_root = find_params_file().parent.resolve()
    # ZenML's store lives in the project unless the team points it elsewhere (e.g. a ZenML server).
    os.environ.setdefault("ZENML_CONFIG_PATH", str(project_root / ".zenml"))
    os.environ.setdefault("ZENML_LOGGING_VERBOSITY", "WARN")
    return project_root


def resolve(root: Path, path: str) -> Path:
    p = Path(path)
    return (p if p.is_absolute() else root / p).resolve()


def fingerprint_path(path: Path) -> str:
    """Hash of the names, sizes and modification times of every file under `path` (or of one file)."""
    import hashlib

    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        st = f.stat()
        h.update(f"{f.relative_to(path) if f != path else f.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return f"untracked-{h.hexdigest()[:32]}"


def dataset_version(path: Path, root: Path) -> str:
    """DVC's hash of a tracked output; a fingerprint of the files of anything DVC does not track."""
    from labelspace.data_version import data_version

    try:
        return data_version(path, repo_root=root, verify=True)
    except (KeyError, ValueError, FileNotFoundError, LookupError):
        return fingerprint_path(path)


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", help="a NUS-WIDE-layout dataset folder (default: ingest.dataset in params.yaml)")
    p.add_argument("--vectors", help="word2vec-format vectors (default: vectors.path in params.yaml)")
    p.add_argument("--no-cache", action="store_true", help="run every step even if ZenML has it cached")


def run_cli(args: argparse.Namespace) -> int:
    project_root = prepare_environment()
    from labelspace.evaluation import metrics_table
    from labelspace.params import find_params_file, load_params, params_hash, section
    from labelspace.tracking import configure_mlflow, ensure_experiment

    params = load_params(find_params_file())
    ingest_params, train_params = section(params, "ingest"), section(params, "train")
    dataset = resolve(project_root, args.dataset or ingest_params["dataset"])
    vectors = resolve(project_root, args.vectors or section(params, "vectors")["path"])
    for what, path, fix in (("dataset", dataset, "run `dvc repro sample` or pass --dataset"),
                            ("word vectors", vectors, "run `dvc repro vectors` or pass --vectors")):
        if not path.exists():
            raise FileNotFoundError(f"{what} {path} does not exist: {fix}")
    versions = {"dataset": dataset_version(dataset, project_root), "vectors": dataset_version(vectors, project_root)}
    print(f"dataset {dataset} @ {versions['dataset']}\nvectors {vectors} @ {versions['vectors']}")

    tracking_uri = configure_mlflow(project_root)
    from pipelines.stack import ensure_stack
    from pipelines.training import EXPERIMENT, training_pipeline
    from steps.ingest import cache_paths

    ensure_experiment(EXPERIMENT, project_root)
    ensure_stack(tracking_uri)
    report_path = resolve(project_root, section(params, "evaluate")["report"])
    cache_dir = resolve(project_root, ingest_params.get("cache_dir", "data/cache"))
    manifest_path, arrays_dir = cache_paths(str(cache_dir), versions["dataset"], ingest_params["image_size"])
    steps = {}
    if not (manifest_path.is_file() and (arrays_dir / "meta.json").is_file()):
        # A cached ingest would hand later steps paths to files that are gone: ingest again.
        steps["ingest"] = {"enable_cache": False}
    pipeline = training_pipeline.with_options(enable_cache=not args.no_cache, steps=steps)
    pipeline(
        dataset=str(dataset), dataset_version=versions["dataset"], vectors_path=str(vectors),
        vectors_version=versions["vectors"], params=params, params_hash=params_hash(params),
        code_root=str(code_root()), cache_dir=str(cache_dir),
        checkpoint_dir=str(resolve(project_root, train_params.get("checkpoint_dir", "checkpoints"))),
        report_path=str(report_path),
    )
    report = json.loads(report_path.read_text())
    print("\n" + metrics_table(report))
    print(f"\nMLflow: {tracking_uri}")
    return 0
