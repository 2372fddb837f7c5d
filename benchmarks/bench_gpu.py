"""Images/second and GPU utilisation of the pipeline's `train` step on a GPU, beside a bare PyTorch loop
on the same GPU, and the wall time of the whole default run; one invocation, ratios within it.

Needs a CUDA device (`nvidia-smi` on the PATH for utilisation); without one it says so and exits 1.

1. As bench_train.py: the embedded dataset and a params.yaml copy in a temporary folder, with
   `train.device: cuda` and `train.amp: true` (bf16 autocast where the GPU supports it, else fp16 with
   a gradient scaler), then `labelspace run --no-cache` in a subprocess, while a thread samples
   `nvidia-smi --query-gpu=utilization.gpu,memory.used` every 0.2 s.
2. The bare loop: the same LabelSpaceModel, data, split, loss and schedule on the same GPU in a fresh
   process, written the plain way (the batch copied to the device, converted and mirrored there,
   channels_last, the same autocast), without ZenML, MLflow, validation or checkpoints; sampled
   the same way.
3. Prints images/s of both, their ratio, mean and peak utilisation and memory of each, the whole
   run's wall time and its steps.

    .venv/bin/python benchmarks/bench_gpu.py [--train 4000] [--epochs N] [--batch 64]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_train  # noqa: E402  (the shared work folder, pipeline run and bare-loop inputs)

from labelspace.config import load_config  # noqa: E402
from labelspace.model.networks import LabelSpaceModel  # noqa: E402
from labelspace.model.spec import ModelSpec  # noqa: E402
from labelspace.training.loop import make_scheduler  # noqa: E402
from labelspace.training.loss import compute_loss, loss_scale  # noqa: E402


class Sampler:
    """GPU utilisation (%) and memory (MiB) from nvidia-smi every `period` seconds, in a thread."""

    def __init__(self, period: float = 0.2) -> None:
        self.period, self.samples, self._stop = period, [], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used",
                                  "--format=csv,noheader,nounits", "--id=0"], capture_output=True, text=True)
            if out.returncode == 0 and out.stdout.strip():
                util, memory = (float(v) for v in out.stdout.strip().split(","))
                self.samples.append((util, memory))
            time.sleep(self.period)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> str:
        if not self.samples:
            return "no nvidia-smi samples"
        util = [u for u, _ in self.samples]
        return (f"GPU utilisation mean {statistics.mean(util):.0f} %, peak {max(util):.0f} %; "
                f"memory peak {max(m for _, m in self.samples):.0f} MiB ({len(util)} samples)")


def bare_gpu(work: Path) -> dict:
    """The plain loop on the GPU (same process; torch and CUDA initialised before the clock starts)."""
    config = load_config(work / "params.yaml")
    saved = np.load(work / "bare_inputs.npz")
    spec = ModelSpec.from_dict(json.loads((work / "bare_spec.json").read_text()))
    images = np.load(str(saved["images_path"]), mmap_mode="r")
    targets, train_idx = saved["targets"], saved["train_idx"]
    train, device = config.train, torch.device("cuda")
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(train.seed)
    model = LabelSpaceModel(backbone=spec.backbone, k=spec.k, d=spec.d, pretrained=config.model.pretrained,
                            weights_path=config.model.weights_path, freeze_backbone=spec.freeze_backbone,
                            frozen_stages=spec.frozen_stages,
                            dropout=spec.dropout, normalize=spec.normalize, center_words=spec.center_words,
                            learn_scale=spec.learn_scale).to(device, memory_format=torch.channels_last)
    W = torch.as_tensor(saved["vectors"], dtype=torch.float32, device=device)
    if spec.center_words:
        model.set_word_center(W)
    scale = loss_scale(model, W, config.loss.units)
    y_all = torch.as_tensor(targets, dtype=torch.float32, device=device)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=train.lr, fused=True)
    scheduler = make_scheduler(optimizer, train, steps_per_epoch=-(-len(train_idx) // train.batch_size))
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    generator, rng = torch.Generator().manual_seed(train.seed), np.random.default_rng(train.seed)
    mean = torch.tensor(model.backbone.input_mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(model.backbone.input_std, device=device).view(1, 3, 1, 1)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(train.epochs):
        model.train()
        perm = rng.permutation(len(train_idx))
        flips = rng.random(len(train_idx)) < 0.5 if train.mirror else np.zeros(len(train_idx), bool)
        for i in range(0, len(perm), train.batch_size):
            pos = perm[i:i + train.batch_size]
            batch = torch.from_numpy(np.ascontiguousarray(images[train_idx[pos]])).pin_memory()
            x = batch.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
            flip = torch.from_numpy(flips[pos]).to(device)
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
            x = ((x - mean) / std).contiguous(memory_format=torch.channels_last)
            with torch.autocast("cuda", dtype=dtype):
                outputs = model(x)
            loss, _ = compute_loss(spec, config.loss, model, outputs, y_all[train_idx[pos]], W, generator, scale)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
    torch.cuda.synchronize()
    return {"seconds": time.perf_counter() - start, "images": len(train_idx) * train.epochs, "dtype": str(dtype)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train", type=int, help="train canvases (default: params.yaml's sample.n_train)")
    parser.add_argument("--test", type=int, default=200, help="test canvases")
    parser.add_argument("--epochs", type=int, help="default: params.yaml's train.epochs")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_gpu.py needs a CUDA device and none is visible (torch.cuda.is_available() is False); "
                 "run it on a GPU machine, or bench_train.py for the CPU")
    if shutil.which("nvidia-smi") is None:
        print("note: nvidia-smi is not on the PATH: no utilisation figures", file=sys.stderr)
    args.frozen = args.paper = False
    args.threads = None
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        work = (args.keep or Path(tmp)).resolve()
        work.mkdir(parents=True, exist_ok=True)
        env = bench_train.prepare_workdir(work, args)
        params_path = work / "params.yaml"
        params_path.write_text(params_path.read_text().replace("device: auto", "device: cuda"))
        import os

        os.environ.update(env)
        with Sampler() as pipeline_gpu:
            wall, _ = bench_train.run_pipeline(work, env, py_spy=False)
        run = bench_train.read_pipeline_run(with_data=True)
        bench_train.write_bare_inputs(work, run)
        with Sampler() as bare_sampler:
            bare = bare_gpu(work)
    step = run["durations"]["train"]
    images = bare["images"]
    print(f"{torch.cuda.get_device_name(0)}; {images} training images seen per head, autocast {bare['dtype']}")
    print(f"  pipeline `train` step: {step:7.2f} s {images / step:9.1f} images/s")
    print(f"  bare loop on the GPU:  {bare['seconds']:7.2f} s {images / bare['seconds']:9.1f} images/s")
    print(f"  ratio (pipeline / bare images/s): {bare['seconds'] / step:.3f}")
    print(f"  during the whole run: {pipeline_gpu.summary()}")
    print(f"  during the bare loop: {bare_sampler.summary()}")
    print(f"whole `labelspace run --no-cache`: {wall:.1f} s; steps: "
          + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in run["durations"].items()))


if __name__ == "__main__":
    main()
