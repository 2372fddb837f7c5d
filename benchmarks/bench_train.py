"""Images/second of the pipeline's `train` step against a bare PyTorch loop doing the same training
on the same data; prints both and the ratio (pipeline / bare) from one invocation.

The default is the default run's configuration: params.yaml as it stands (EfficientNet-Lite0
trained end to end, the label-space head and loss of params.yaml, its epochs and batch) on the
embedded dataset at params.yaml's size (4,000 train canvases; --test only sizes the evaluate step,
which is not compared). `--train 800` is a quick look (about 4 minutes), where the step's fixed
costs weigh five times more.

1. Builds the embedded dataset (--train/--test canvases) in a temporary folder, writes a copy of
   params.yaml pointing at it, and runs the real pipeline, `labelspace run --no-cache`, in a
   subprocess with ZenML, MLflow, checkpoints and reports isolated in that folder.
2. Reads the `train` step's duration (ZenML step run, start to end: inputs, MLflow run, model build,
   epochs, per-epoch validation and checkpoints, calibration, the output artifact), its CPU seconds
   (benchmarks/_instrument.py times the step runner) and its metadata: train-image count, torch
   threads, the loop's own breakdown.
3. Trains the same LabelSpaceModel the plain way on the very arrays, labels and split the pipeline
   used, in a fresh process that has imported torch, as the pipeline's process had when its train
   step began, with the thread count the step used: forward and backward through the whole network
   per batch, the library's `compute_loss` (the same arithmetic), fused Adam (the library's kernel)
   and the same schedule. No ZenML, no MLflow, no validation, no checkpoints. With --frozen:
   backbone features once (and once mirrored), then the head's epochs.
4. With --repeats R, steps 1 and 3 alternate R times (pipeline, bare, pipeline, bare, ...): each
   pipeline run is compared with the bare run right after it, and the median ratio is printed, so
   a change in the machine's load between the two halves moves one pair, not the answer.

Both sides draw seeds and random numbers in the library's order, so they print the same last-epoch
loss: the proof that they did the same arithmetic. On a machine shared with other jobs the wall time
of each half moves with their load; at one thread the CPU seconds do not, so the ratio of images per
CPU-second is printed beside the wall-time ratio.

    .venv/bin/python benchmarks/bench_train.py [--train 4000] [--test 200] [--epochs N] [--threads N]
        [--repeats 1] [--frozen] [--paper] [--keep DIR] [--py-spy]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from labelspace.app import PARAMS_ENV
from labelspace.config import LossConfig, ModelConfig, TrainConfig, load_config
from labelspace.data.prepared import PreparedData
from labelspace.data.sample import build_sample
from labelspace.data.splits import split_indices, target_matrix
from labelspace.data.word_vectors import export_glove
from labelspace.model.networks import LabelSpaceModel
from labelspace.model.spec import ModelSpec
from labelspace.training.fit import held_out_for, training_labels
from labelspace.training.loop import make_scheduler
from labelspace.training.loss import compute_loss, loss_scale

REPO = Path(__file__).resolve().parents[1]
PIPELINE = "labelspace_training"
THREADS_ENV = "LABELSPACE_TORCH_THREADS"
EPOCHS = "epochs (forward + backward)"
TELEMETRY_OFF = {"ZENML_ANALYTICS_OPT_IN": "false", "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true",
                 "DVC_NO_ANALYTICS": "1", "HF_HUB_OFFLINE": "1", "ZENML_LOGGING_VERBOSITY": "WARN"}


def prepare_workdir(work: Path, args: argparse.Namespace) -> dict[str, str]:
    """Dataset, vectors and params.yaml under `work`; returns the environment the pipeline runs in."""
    config = load_config(REPO / "params.yaml")
    params = config.params
    dataset = work / "fashion-canvas"
    n_train = args.train or params["sample"]["n_train"]
    build_sample(dataset, config.replace(sample={"seed": 0, "n_train": n_train, "n_test": args.test}).sample)
    vectors = REPO / params["vectors"]["path"]
    if not vectors.is_file():  # all 400k words: some garment names are rare words
        vectors = work / "glove-6b-50d.bin"
        export_glove(vectors)
    params["ingest"].update(dataset=str(dataset), cache_dir=str(work / "cache"))
    params["vectors"]["path"] = str(vectors)
    params["train"]["checkpoint_dir"] = str(work / "checkpoints")
    if args.epochs:
        params["train"]["epochs"] = args.epochs
    params["evaluate"]["report"] = str(work / "reports" / "metrics.json")
    if args.frozen:
        params["model"]["freeze_backbone"] = True
    if args.paper:  # the paper's head and loss (Li & Yeh 2018): raw D, mean-positive hinge, no threshold term
        params["model"].update(normalize=False, center_words=False, learn_scale=False)
        params["loss"].update(variant="paper", margin=1.0, threshold_weight=0.0)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**TELEMETRY_OFF, PARAMS_ENV: str(work / "params.yaml"), "ZENML_CONFIG_PATH": str(work / "zenml"),
           "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}"}
    if args.threads:
        env[THREADS_ENV] = env["OMP_NUM_THREADS"] = str(args.threads)
    return env


def run_pipeline(work: Path, env: dict[str, str], py_spy: bool) -> tuple[float, dict]:
    """`labelspace run --no-cache` in a subprocess, timed by _instrument.py; returns its wall time and
    the timers, or exits with its log."""
    log, timers = work / "pipeline.log", work / "instrument.json"
    command = [sys.executable, str(REPO / "benchmarks" / "_instrument.py"), str(timers), "run", "--no-cache"]
    if py_spy:  # sampled Python stacks of the whole run, collapsed: one line per stack with its count
        command = [str(Path(sys.executable).parent / "py-spy"), "record", "--format", "raw", "--rate", "20", "--threads",
                   "--output", str(work / "pipeline.stacks.txt"), "--", *command]
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.run(command, cwd=REPO, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"`labelspace run` failed (exit {proc.returncode}); the end of {log}:\n"
                 + "\n".join(log.read_text().splitlines()[-40:]))
    return wall, json.loads(timers.read_text())


def read_pipeline_run(with_data: bool) -> dict:
    """The last run's step durations and the train step's metadata (and, once, the data it trained on)."""
    from zenml.client import Client

    run = Client().get_pipeline(PIPELINE).last_run
    steps = run.steps
    durations = {name: (s.end_time - s.start_time).total_seconds() for name, s in steps.items()
                 if s.start_time and s.end_time}
    out = {"durations": durations, "train_metadata": dict(steps["train"].run_metadata)}
    if with_data:
        def output(step: str, name: str):
            return steps[step].outputs[name][0].load()

        out.update(manifest=output("ingest", "manifest"), prepared_data=output("ingest", "prepared_data"),
                   labels=output("embed_labels", "labels"), label_vectors=output("embed_labels", "label_vectors"))
    return out


def run_bare(work: Path, threads: int) -> dict:
    """bare_training in a fresh process (see --bare-worker); returns its JSON result."""
    proc = subprocess.run([sys.executable, __file__, "--bare-worker", str(work), "--threads", str(threads)],
                          cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"the bare loop failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def write_bare_inputs(work: Path, run: dict):
    """The arrays, labels and split the pipeline's train step used, saved for the bare loop's process;
    returns (train indices, the images, the ModelSpec)."""
    work_config = load_config(work / "params.yaml")
    config = work_config.train
    manifest = run["manifest"]
    train_idx = split_indices(manifest, config.val_fraction, config.seed)["train"]
    images = PreparedData(**run["prepared_data"]).images()
    if not isinstance(images, np.memmap):
        sys.exit("the bare loop reads one memory-mapped array: run with ingest.shard_size null")
    # Labels held out for zero-shot evaluation never train, in the pipeline or here.
    held_out = held_out_for(work_config.evaluate, run["labels"]).labels
    labels, vectors = training_labels(run["labels"], run["label_vectors"], held_out)
    spec = ModelSpec.from_config(work_config.model, head="labelspace", n_labels=len(labels),
                                 d=vectors.shape[1], image_size=images.shape[1])
    np.savez(work / "bare_inputs.npz", images_path=str(images.filename),
             targets=target_matrix(manifest, labels), train_idx=train_idx, vectors=vectors)
    (work / "bare_spec.json").write_text(json.dumps(spec.to_dict()))
    return train_idx, images, spec


def bare_worker(work: Path, threads: int) -> None:
    """The bare loop's process: torch imported and the inputs read before the clock starts, as the
    pipeline's process had imported torch and loaded the step's inputs when its train step began."""
    torch.set_num_threads(threads)
    config = load_config(work / "params.yaml")
    saved = np.load(work / "bare_inputs.npz")
    spec = ModelSpec.from_dict(json.loads((work / "bare_spec.json").read_text()))
    images = np.load(str(saved["images_path"]), mmap_mode="r")
    timings, loss, cpu = bare_training(spec, config.loss, config.train, config.model, images, saved["targets"],
                                       saved["train_idx"], saved["vectors"])
    print(json.dumps({"timings": timings, "loss": loss, "cpu": cpu}))


def to_input(batch: np.ndarray, model: torch.nn.Module, mirror: np.ndarray) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> the backbone's normalised float (B, 3, H, W), flagged rows mirrored; the
    same arithmetic as the library's, written out."""
    x = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).float().div_(255.0)
    if mirror.any():
        flip = torch.from_numpy(mirror)
        x[flip] = x[flip].flip(-1)
    mean = torch.tensor(model.backbone.input_mean).view(1, 3, 1, 1)
    std = torch.tensor(model.backbone.input_std).view(1, 3, 1, 1)
    return (x - mean) / std


def bare_training(spec: ModelSpec, loss_config: LossConfig, config: TrainConfig, model_config: ModelConfig,
                  images: np.ndarray, targets: np.ndarray, train_idx: np.ndarray,
                  label_vectors: np.ndarray) -> tuple[dict[str, float], float, float]:
    """The pipeline's training as the plainest loop on the CPU; returns (seconds of each phase, the
    last epoch's mean loss, CPU seconds in all). Seeds and draws in the library's order."""
    timings: dict[str, float] = {}
    start, cpu_start = time.perf_counter(), time.process_time()
    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)
    model = LabelSpaceModel(backbone=spec.backbone, k=spec.k, d=spec.d, pretrained=model_config.pretrained,
                            weights_path=model_config.weights_path, freeze_backbone=spec.freeze_backbone,
                            frozen_stages=spec.frozen_stages,
                            dropout=spec.dropout, normalize=spec.normalize, center_words=spec.center_words,
                            learn_scale=spec.learn_scale)
    W = torch.as_tensor(label_vectors, dtype=torch.float32)  # (L, d)
    if spec.center_words:
        model.set_word_center(W)
    scale = loss_scale(model, W, loss_config.units)  # once, as the library's loop does
    y_all = torch.as_tensor(targets, dtype=torch.float32)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=config.lr,
                                 weight_decay=config.weight_decay, fused=True)  # the library's kernels
    scheduler = make_scheduler(optimizer, config, steps_per_epoch=-(-len(train_idx) // config.batch_size))
    generator = torch.Generator().manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    timings["build model"] = time.perf_counter() - start

    cached = None
    if spec.freeze_backbone:
        start = time.perf_counter()
        model.backbone.eval()
        with torch.no_grad():
            cached = [torch.cat([model.backbone(to_input(images[train_idx[i:i + config.feature_batch_size]], model,
                                                         np.full(len(train_idx[i:i + config.feature_batch_size]),
                                                                 mirrored)))
                                 for i in range(0, len(train_idx), config.feature_batch_size)])
                      for mirrored in ((False, True) if config.mirror else (False,))]
        timings["features"] = time.perf_counter() - start

    start = time.perf_counter()
    for _ in range(config.epochs):
        epoch_loss, seen = 0.0, 0
        model.train()
        if spec.freeze_backbone:
            model.backbone.eval()
        perm = rng.permutation(len(train_idx))
        flips = rng.random(len(train_idx)) < 0.5 if config.mirror else np.zeros(len(train_idx), bool)
        for i in range(0, len(perm), config.batch_size):
            pos = perm[i:i + config.batch_size]
            y = y_all[train_idx[pos]]
            if cached is not None:
                x = cached[0][pos]
                if len(cached) == 2:
                    x = torch.where(torch.from_numpy(flips[pos]).unsqueeze(1), cached[1][pos], x)
                outputs = model.from_features(x)
            else:
                outputs = model(to_input(images[train_idx[pos]], model, flips[pos]))
            loss, _ = compute_loss(spec, loss_config, model, outputs, y, W, generator, scale)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            epoch_loss += loss.item() * len(pos)
            seen += len(pos)
    timings["head epochs" if spec.freeze_backbone else EPOCHS] = time.perf_counter() - start
    return timings, epoch_loss / max(seen, 1), time.process_time() - cpu_start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train", type=int, help="train canvases, 10%% of them validation (default: params.yaml's "
                        "sample.n_train, 4000)")
    parser.add_argument("--test", type=int, default=200, help="test canvases")
    parser.add_argument("--epochs", type=int, help="default: params.yaml's train.epochs")
    parser.add_argument("--threads", type=int, help="torch threads on both sides (default: what the pipeline's "
                        f"train step chose, ${THREADS_ENV} or its automatic choice; the bare loop uses the same)")
    parser.add_argument("--repeats", type=int, default=1, help="pipeline/bare pairs, alternated; the median ratio")
    parser.add_argument("--frozen", action="store_true", help="frozen backbone: features once, then the head")
    parser.add_argument("--paper", action="store_true", help="the paper's head and loss instead of params.yaml's")
    parser.add_argument("--py-spy", action="store_true", help="record the pipeline's Python stacks with py-spy "
                        "(pip install py-spy) into pipeline.stacks.txt in the work folder (use with --keep)")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temporary one)")
    parser.add_argument("--bare-worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare_worker:
        return bare_worker(args.bare_worker, args.threads)
    loads = [os.getloadavg()[0]]

    pairs = []
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        work = (args.keep or Path(tmp)).resolve()
        work.mkdir(parents=True, exist_ok=True)
        env = prepare_workdir(work, args)
        os.environ.update({k: v for k, v in env.items() if k != "OMP_NUM_THREADS"})  # ZenML reads the same store
        work_config = load_config(work / "params.yaml")
        config = work_config.train
        spec = None
        for repeat in range(args.repeats):
            wall, timers = run_pipeline(work, env, args.py_spy and repeat == 0)
            run = read_pipeline_run(with_data=spec is None)
            meta = run["train_metadata"]
            if spec is None:
                train_idx, images, spec = write_bare_inputs(work, run)
            if meta.get("n_train_images", len(train_idx)) != len(train_idx) or meta.get("resumed_from_epoch", 0):
                sys.exit(f"the pipeline's train step did other work than the bare loop would: {meta}")
            threads = args.threads or int(meta.get("torch_threads") or torch.get_num_threads())
            bare = run_bare(work, threads)
            loads.append(os.getloadavg()[0])
            step_cpu = next((s["cpu"] for s in timers["steps"] if s["name"] == "train"), float("nan"))
            pairs.append({"wall": wall, "durations": run["durations"], "meta": meta, "bare": bare["timings"],
                          "bare_loss": bare["loss"], "bare_cpu": bare["cpu"], "threads": threads,
                          "step_cpu": step_cpu})

    images_seen = len(train_idx) * config.epochs
    print(f"{len(train_idx)} train images ({len(train_idx) + meta.get('n_val_images', 0)} canvases less "
          f"validation) x {config.epochs} epochs, "
          f"batch {config.batch_size}, {spec.backbone} {'frozen' if spec.freeze_backbone else 'end to end'}, "
          f"{'paper' if args.paper else 'params.yaml'} head and loss ({work_config.loss.variant}), "
          f"{images.shape[1]} px, cpu")
    ratios, cpu_ratios = [], []
    for i, pair in enumerate(pairs, 1):
        step, bare_seconds = pair["durations"]["train"], sum(pair["bare"].values())
        rate, bare_rate = images_seen / step, images_seen / bare_seconds
        ratios.append(rate / bare_rate)
        meta = pair["meta"]
        print(f"[{i}] torch threads {pair['threads']}")
        print(f"  pipeline `train` step (ZenML step run): {step:7.2f} s {rate:8.1f} images/s"
              f"  last-epoch loss {meta.get('final_loss', float('nan')):.4f}  CPU {pair['step_cpu']:6.1f} s")
        print(f"  bare PyTorch loop (fresh process):      {bare_seconds:7.2f} s {bare_rate:8.1f} images/s"
              f"  last-epoch loss {pair['bare_loss']:.4f}  CPU {pair['bare_cpu']:6.1f} s")
        print("    bare: " + ", ".join(f"{phase} {seconds:.2f} s" for phase, seconds in pair["bare"].items()))
        inside = {k[len("seconds_"):]: v for k, v in meta.items() if k.startswith("seconds_")}
        if inside:
            outside = step - sum(v for k, v in inside.items() if not k.endswith("_cpu"))
            print("    pipeline step: " + ", ".join(f"{k} {v:.2f} s" for k, v in inside.items() if not k.endswith("_cpu"))
                  + f", outside fit_head (ZenML, MLflow, artifacts) {outside:.2f} s")
        print(f"  ratio (pipeline / bare images/s): {rate / bare_rate:.3f}")
        if pair["threads"] == 1:  # CPU seconds mean work only without OpenMP spin-waits
            cpu_ratios.append(pair["bare_cpu"] / pair["step_cpu"])
            print(f"  ratio (pipeline / bare images per CPU-second): {cpu_ratios[-1]:.3f}")
        print(f"  whole `labelspace run`: {pair['wall']:.1f} s; ZenML steps: "
              + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in pair["durations"].items()))
    print(f"ratio (pipeline / bare images/s), median of {len(ratios)}: {statistics.median(ratios):.3f}")
    if cpu_ratios:
        print(f"ratio (pipeline / bare images per CPU-second), median of {len(cpu_ratios)}: "
              f"{statistics.median(cpu_ratios):.3f}")
    print(f"1-min load average {', '.join(f'{x:.1f}' for x in loads)} (start, after each pair; "
          f"{os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
