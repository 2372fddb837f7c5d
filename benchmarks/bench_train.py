"""Images/second of the pipeline's `train` step against a bare PyTorch loop with the same model,
batch, epochs and data; prints both and the ratio (pipeline / bare) from one invocation.

1. Builds the embedded dataset (--train/--test canvases) in a temporary folder, writes a copy of
   params.yaml pointing at it (fixed --epochs), and runs the real pipeline, `labelspace run
   --no-cache`, in a subprocess with ZenML and MLflow isolated in that folder.
2. Reads the `train` step's duration (ZenML step run start to end) and its train-image count;
   images/second = train images x epochs / duration.
3. Trains the same LabelSpaceModel in this process the plain way on the very arrays, labels and
   split the pipeline used: a frozen backbone extracts features once for the images and once for
   their mirrors, then the head runs its epochs with hinge_rank_loss; an unfrozen one runs forward
   and backward through the whole network per batch. No ZenML, no MLflow, no checkpoints, no
   validation. The gap between the two is what the pipeline costs around the same arithmetic.

    .venv/bin/python benchmarks/bench_train.py [--train 800] [--test 200] [--epochs 10] [--unfrozen]
"""

from __future__ import annotations

import argparse
import os
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
from labelspace.model.networks import LabelSpaceModel, label_distances
from labelspace.model.spec import ModelSpec
from labelspace.training.fit import held_out_labels, training_labels
from labelspace.training.loop import make_scheduler
from labelspace.training.loss import hinge_rank_loss

REPO = Path(__file__).resolve().parents[1]
PIPELINE = "labelspace_training"
TELEMETRY_OFF = {"ZENML_ANALYTICS_OPT_IN": "false", "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true",
                 "DVC_NO_ANALYTICS": "1", "HF_HUB_OFFLINE": "1", "ZENML_LOGGING_VERBOSITY": "WARN"}


def prepare_workdir(work: Path, args: argparse.Namespace) -> dict[str, str]:
    """Dataset, vectors and params.yaml under `work`; returns the environment the pipeline runs in."""
    config = load_config(REPO / "params.yaml")
    params = config.params
    dataset = work / "fashion-canvas"
    build_sample(dataset, config.replace(sample={"seed": 0, "n_train": args.train, "n_test": args.test}).sample)
    vectors = REPO / params["vectors"]["path"]
    if not vectors.is_file():  # all 400k words: some garment names are rare words
        vectors = work / "glove-6b-50d.bin"
        export_glove(vectors)
    params["ingest"].update(dataset=str(dataset), cache_dir=str(work / "cache"))
    params["vectors"]["path"] = str(vectors)
    params["train"].update(epochs=args.epochs, checkpoint_dir=str(work / "checkpoints"))
    params["evaluate"]["report"] = str(work / "reports" / "metrics.json")
    # The bare loop below is the paper's head and loss: pin them, so both sides do the same arithmetic
    # whatever params.yaml's defaults are; frozen unless --unfrozen.
    params["model"].update(freeze_backbone=not args.unfrozen, normalize=False, center_words=False, learn_scale=False)
    params["loss"].update(variant="paper", margin=1.0, threshold_weight=0.0)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return {**TELEMETRY_OFF, PARAMS_ENV: str(work / "params.yaml"), "ZENML_CONFIG_PATH": str(work / "zenml"),
            "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}"}


def run_pipeline(work: Path, env: dict[str, str]) -> float:
    """`labelspace run --no-cache` in a subprocess; returns its wall time, or exits with its log."""
    log = work / "pipeline.log"
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.run([sys.executable, "-m", "labelspace", "run", "--no-cache"], cwd=REPO,
                              env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"`labelspace run` failed (exit {proc.returncode}); the end of {log}:\n"
                 + "\n".join(log.read_text().splitlines()[-40:]))
    return wall


def read_pipeline_run() -> dict:
    """The last run's step durations, the train step's metadata and the data it trained on."""
    from zenml.client import Client

    run = Client().get_pipeline(PIPELINE).last_run
    steps = run.steps
    durations = {name: (s.end_time - s.start_time).total_seconds() for name, s in steps.items()
                 if s.start_time and s.end_time}

    def output(step: str, name: str):
        return steps[step].outputs[name][0].load()

    return {"durations": durations, "train_metadata": dict(steps["train"].run_metadata),
            "manifest": output("ingest", "manifest"), "prepared_data": output("ingest", "prepared_data"),
            "labels": output("embed_labels", "labels"), "label_vectors": output("embed_labels", "label_vectors")}


def to_input(batch: np.ndarray, model: LabelSpaceModel, device: torch.device, flip: np.ndarray) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> the backbone's normalised float (B, 3, H, W), flagged rows mirrored."""
    x = torch.from_numpy(np.ascontiguousarray(batch)).to(device).permute(0, 3, 1, 2).float() / 255.0
    x = torch.where(torch.from_numpy(flip).to(device).view(-1, 1, 1, 1), x.flip(-1), x)
    mean = torch.tensor(model.backbone.input_mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(model.backbone.input_std, device=device).view(1, 3, 1, 1)
    return (x - mean) / std


def bare_training(spec: ModelSpec, loss_config: LossConfig, config: TrainConfig, model_config: ModelConfig,
                  images: np.ndarray, targets: np.ndarray, train_idx: np.ndarray,
                  label_vectors: np.ndarray) -> tuple[dict[str, float], float]:
    """The same training as the pipeline's, written as the plainest loop; returns the seconds of each
    phase and the last epoch's mean loss. Seeds and random draws come in the library's order, so the
    loss equals the pipeline's when the arithmetic is the same."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    use_amp = device.type == "cuda" and config.amp
    timings: dict[str, float] = {}
    start = time.perf_counter()
    torch.manual_seed(config.seed)
    model = LabelSpaceModel(backbone=spec.backbone, k=spec.k, d=label_vectors.shape[1],
                            pretrained=model_config.pretrained, weights_path=model_config.weights_path,
                            freeze_backbone=spec.freeze_backbone, dropout=spec.dropout, normalize=False,
                            center_words=False, learn_scale=False).to(device)
    W = torch.as_tensor(label_vectors, dtype=torch.float32, device=device)  # (L, d)
    y_all = torch.as_tensor(targets[train_idx], dtype=torch.float32, device=device)  # (N, L)
    timings["build model"] = time.perf_counter() - start

    cached = None
    if spec.freeze_backbone:
        model.backbone.eval()
        for name, mirrored in (("features", False), ("mirrored features", True)):
            if mirrored and not config.mirror:
                continue
            start = time.perf_counter()
            chunks = []
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                for i in range(0, len(train_idx), config.feature_batch_size):
                    idx = train_idx[i:i + config.feature_batch_size]
                    chunks.append(model.backbone(to_input(images[idx], model, device, np.full(len(idx), mirrored))))
            if device.type == "cuda":
                torch.cuda.synchronize()  # kernels run asynchronously: time them, not their launch
            timings[name] = time.perf_counter() - start
            cached = (*(cached or ()), torch.cat(chunks).float())  # (N, F)

    start = time.perf_counter()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=config.lr,
                                 weight_decay=config.weight_decay)
    scheduler = make_scheduler(optimizer, config, steps_per_epoch=-(-len(train_idx) // config.batch_size))
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    generator = torch.Generator().manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    for _ in range(config.epochs):
        epoch_loss, seen = 0.0, 0
        model.train()
        if spec.freeze_backbone:
            model.backbone.eval()
        perm = rng.permutation(len(train_idx))
        flips = rng.random(len(train_idx)) < 0.5 if config.mirror else np.zeros(len(train_idx), bool)
        for i in range(0, len(perm), config.batch_size):
            pos = perm[i:i + config.batch_size]
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                if cached is not None:
                    x = cached[0][pos]
                    if len(cached) == 2:
                        x = torch.where(torch.from_numpy(flips[pos]).to(device).unsqueeze(1), cached[1][pos], x)
                    A = model.from_features(x)  # (B, k, d)
                else:
                    A = model(to_input(images[train_idx[pos]], model, device, flips[pos]))
                loss = hinge_rank_loss(label_distances(A.float(), W), y_all[pos], margin=loss_config.margin,
                                       n_negatives=loss_config.n_negatives, generator=generator)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            epoch_loss += loss.item() * len(pos)
            seen += len(pos)
    timings["head epochs" if spec.freeze_backbone else "epochs (forward + backward)"] = time.perf_counter() - start
    return timings, epoch_loss / max(seen, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train", type=int, default=800, help="train canvases (10%% of them become validation)")
    parser.add_argument("--test", type=int, default=200, help="test canvases")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--unfrozen", action="store_true", help="train the whole backbone (slow on a CPU)")
    parser.add_argument("--threads", type=int, help="torch threads on both sides (default: torch's choice); "
                        "1 gives steadier numbers on a machine shared with other jobs")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temporary one)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]

    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        work = (args.keep or Path(tmp)).resolve()
        work.mkdir(parents=True, exist_ok=True)
        env = prepare_workdir(work, args)
        if args.threads:
            env["OMP_NUM_THREADS"] = str(args.threads)
        wall = run_pipeline(work, env)
        os.environ.update(env)  # before ZenML is imported: read the same isolated store
        run = read_pipeline_run()

        work_config = load_config(work / "params.yaml")
        config = work_config.train
        manifest = run["manifest"]
        train_idx = split_indices(manifest, config.val_fraction, config.seed)["train"]
        images = PreparedData(**run["prepared_data"]).images()
        # Labels held out for zero-shot evaluation never train, in the pipeline or here.
        held_out = held_out_labels(work_config.evaluate.zero_shot_labels, run["labels"]).labels
        labels, vectors = training_labels(run["labels"], run["label_vectors"], held_out)
        targets = target_matrix(manifest, labels)
        spec = ModelSpec.from_config(work_config.model, head="labelspace", n_labels=len(labels), d=vectors.shape[1],
                                     image_size=images.shape[1])
        meta = run["train_metadata"]
        if meta.get("n_train_images", len(train_idx)) != len(train_idx) or meta.get("resumed_from_epoch", 0):
            sys.exit(f"the pipeline's train step did other work than the bare loop would: {meta}")
        bare, bare_loss = bare_training(spec, work_config.loss, config, work_config.model, images, targets,
                                        train_idx, vectors)

    step_seconds = run["durations"]["train"]
    bare_seconds = sum(bare.values())
    images_seen = len(train_idx) * config.epochs
    pipeline_rate, bare_rate = images_seen / step_seconds, images_seen / bare_seconds
    device = "cuda" if torch.cuda.is_available() else f"cpu, {torch.get_num_threads()} threads"
    print(f"{len(train_idx)} train images ({args.train} canvases less validation) x {config.epochs} epochs, "
          f"batch {config.batch_size}, {spec.backbone} {'frozen' if spec.freeze_backbone else 'unfrozen'}, "
          f"{images.shape[1]} px, {device}")
    print(f"pipeline `train` step (ZenML step run): {step_seconds:7.2f} s {pipeline_rate:8.1f} images/s"
          f"  last-epoch loss {meta.get('final_loss', float('nan')):.4f}")
    print(f"bare PyTorch loop:                      {bare_seconds:7.2f} s {bare_rate:8.1f} images/s"
          f"  last-epoch loss {bare_loss:.4f}")
    print("  bare: " + ", ".join(f"{phase} {seconds:.2f} s" for phase, seconds in bare.items()))
    print(f"ratio (pipeline / bare images/s): {pipeline_rate / bare_rate:.2f}")
    print(f"whole `labelspace run`: {wall:.1f} s; ZenML steps: "
          + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in run["durations"].items()))
    print(f"1-min load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after "
          f"({os.cpu_count()} cores)")
    if max(load_before, os.getloadavg()[0]) > (os.cpu_count() or 1) and not args.threads:
        print("the CPU is shared with other jobs: torch's threads then wait on each other and both numbers "
              "swing several-fold; --threads 1 gives a steadier ratio")


if __name__ == "__main__":
    main()
