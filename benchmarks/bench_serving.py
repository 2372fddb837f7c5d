"""Speed of the served model: the MLflow pyfunc's `predict` on a batch (images/s) and the latency of
one request through a real `mlflow models serve` (p50/p95), beside the bare model forward on the same
images; and what ranking costs beside the backbone for the training labels, 1,006 labels (NUS-WIDE's
925 tags + 81 concepts) and the 20,000-word open vocabulary. One invocation, ratios within it.

1. Builds a small embedded dataset in a temporary folder and fits a label-space head on it the
   library's way (`fit_head`, frozen backbone, a few epochs: a real calibration and vocabulary; the
   network and its cost are the default run's, params.yaml's `model` section and image size).
2. Logs it as the served pyfunc with the 20,000-word open vocabulary (`log_labelspace_model`, a
   temporary MLflow store) and loads it back with `mlflow.pyfunc.load_model`.
3. In this process, on --images test images (base64 JPEG, as a client sends them):
   - bare: decode + `to_input` + the network in batches of 32, and the network alone on the decoded
     batch; backbone alone (the features), at the model's input size and at 224 px (NUS-WIDE's and
     production's input: the same images decoded at 224 x 224);
   - `predict` with the training labels, with 1,006 requested labels and with all 20,000 open words;
   - ranking alone: D = ||A w||^2 for those vocabularies and the top-k on the network's A, as
     `predict` ranks them (the vocabulary resolved and prepared once, `LabelSpacePyfunc.vocabulary`),
     as a share of the backbone's time on the same images at both input sizes (the goal: at most 2 %).
4. Starts `mlflow models serve` on 127.0.0.1 (a free port, .venv/bin on PATH for uvicorn) with the
   same torch thread count, waits for /ping, sends --requests requests of one image each and prints
   p50/p95 latency (and one request of --images images), then stops the server by its PID.

    .venv/bin/python benchmarks/bench_serving.py [--images 256] [--requests 100] [--threads N] [--keep DIR]
"""

from __future__ import annotations

import argparse
import base64
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import requests
import torch
from _timing import best_of  # benchmarks/_timing.py (this folder is on sys.path when run as a script)

from labelspace.app import PARAMS_ENV
from labelspace.config import load_config
from labelspace.data.nuswide import ingest, read_manifest
from labelspace.data.preprocess import build_image_arrays, decode_resized, load_image_arrays
from labelspace.data.sample import build_sample
from labelspace.data.splits import split_indices
from labelspace.data.word_vectors import export_glove, load_word_vectors, resolve_label_vectors
from labelspace.model.inference import to_input
from labelspace.training.fit import fit_head, held_out_for
from labelspace.training.threads import choose_threads

REPO = Path(__file__).resolve().parents[1]
NUSWIDE_LABELS = 925 + 81
BATCH = 32  # the pyfunc's batch (labelspace.serving.pyfunc.BATCH_SIZE)
LARGE = 224  # the production input size the ranking share is also reported against
TELEMETRY_OFF = {"ZENML_ANALYTICS_OPT_IN": "false", "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true",
                 "DVC_NO_ANALYTICS": "1", "HF_HUB_OFFLINE": "1"}


def build_model(work: Path, config, vectors_path: Path):
    """A label-space head fitted the library's way on a small embedded dataset; (TrainedModel, test
    image files, open vocabulary)."""
    dataset = work / "fashion-canvas"
    build_sample(dataset, config.replace(sample={"seed": 1, "n_train": 600, "n_test": 400}).sample)
    ingest(dataset, work / "manifest.parquet")
    manifest, concepts = read_manifest(work / "manifest.parquet")
    size = config.ingest.image_size
    images = load_image_arrays(build_image_arrays(work / "manifest.parquet", dataset, size, work / "images"))
    kv = load_word_vectors(vectors_path, limit=config.vectors.limit)
    resolved = resolve_label_vectors(kv, concepts, config.embedding.aliases)
    fit = fit_head("labelspace", config.replace(model={"freeze_backbone": True}).model, config.loss,
                   config.replace(train={"epochs": 3, "lr": 3e-3}).train, manifest, resolved.labels, resolved.matrix,
                   images, dataset_version="bench-serving", held_out=held_out_for(config.evaluate, concepts).labels)
    test_files = [dataset / rel for rel in manifest["path"].iloc[split_indices(manifest)["test"]]]
    top = load_word_vectors(vectors_path, limit=config.register.open_vocabulary_size)
    return fit.model, test_files, (list(top.index_to_key), np.asarray(top.vectors, dtype=np.float32))


def log_and_load(work: Path, trained, open_vocabulary, serving):
    import mlflow

    from labelspace.serving.pyfunc import log_labelspace_model

    mlflow.set_tracking_uri(f"sqlite:///{work / 'mlflow.db'}")
    experiment = mlflow.create_experiment("bench-serving", artifact_location=(work / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment):
        info = log_labelspace_model(trained, open_vocabulary=open_vocabulary, serving=serving)
    local = Path(mlflow.artifacts.download_artifacts(info.model_uri, dst_path=str(work / "served")))
    return local, mlflow.pyfunc.load_model(str(local))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(model_dir: Path, threads: int, payloads: list[str], requests_n: int, batch_payload: str, work: Path):
    """Latencies (s) of `requests_n` one-image requests, the batch request's seconds, time to ready."""
    port = free_port()
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, **TELEMETRY_OFF, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
           "OMP_NUM_THREADS": str(threads), "LABELSPACE_TORCH_THREADS": str(threads)}
    log = open(work / "server.log", "w")
    start = time.perf_counter()
    server = subprocess.Popen([str(bin_dir / "mlflow"), "models", "serve", "-m", str(model_dir), "--env-manager",
                               "local", "-h", "127.0.0.1", "-p", str(port), "--workers", "1"],
                              env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if server.poll() is not None:
                sys.exit(f"mlflow models serve exited ({server.returncode}); see {work / 'server.log'}")
            try:
                if requests.get(f"{url}/ping", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                sys.exit(f"mlflow models serve was not ready after 300 s; see {work / 'server.log'}")
            time.sleep(0.25)
        ready = time.perf_counter() - start
        session = requests.Session()

        def post(body: str) -> float:
            t = time.perf_counter()
            response = session.post(f"{url}/invocations", data=body, headers={"Content-Type": "application/json"},
                                    timeout=300)
            elapsed = time.perf_counter() - t
            if response.status_code != 200:
                sys.exit(f"the server answered {response.status_code}: {response.text[:500]}")
            return elapsed

        for body in payloads[:3]:
            post(body)  # warm-up
        latencies = [post(payloads[i % len(payloads)]) for i in range(requests_n)]
        batch_seconds = min(post(batch_payload) for _ in range(2))
        return latencies, batch_seconds, ready
    finally:
        # Our server only: the process group it leads (mlflow and the uvicorn it started).
        try:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(server.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            server.wait()
        log.close()


def body(images_b64: list[str], params: dict | None = None) -> str:
    import json

    return json.dumps({"dataframe_records": [{"image": b} for b in images_b64], "params": params or {"top_k": 3}})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=256, help="images in the batch (the served model takes 256)")
    parser.add_argument("--requests", type=int, default=100, help="one-image requests for the latency figures")
    parser.add_argument("--threads", type=int, help="torch threads here and in the server (default: the library's "
                        "choice, labelspace.training.threads.choose_threads)")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it")
    args = parser.parse_args()
    os.environ.update(TELEMETRY_OFF)
    os.environ.setdefault(PARAMS_ENV, str(REPO / "params.yaml"))
    threads = args.threads or choose_threads()
    torch.set_num_threads(threads)
    load = os.getloadavg()[0]
    config = load_config(REPO / "params.yaml")

    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        work = (args.keep or Path(tmp)).resolve()
        work.mkdir(parents=True, exist_ok=True)
        vectors_path = REPO / config.vectors.path
        if not vectors_path.is_file():
            vectors_path = work / "glove-6b-50d.bin"
            export_glove(vectors_path)
        trained, test_files, open_vocabulary = build_model(work, config, vectors_path)
        model_dir, loaded = log_and_load(work, trained, open_vocabulary, config.serving)
        served = loaded.unwrap_python_model()
        network, device = served.model, served.device
        files = (test_files * (args.images // len(test_files) + 1))[: args.images]
        encoded = [f.read_bytes() for f in files]
        b64 = [base64.b64encode(e).decode("ascii") for e in encoded]
        frame = pd.DataFrame({"image": b64})
        size = trained.spec.image_size
        words = open_vocabulary[0]
        vocabularies = {f"training labels ({len(trained.labels)})": None,
                        f"{NUSWIDE_LABELS} labels": words[:NUSWIDE_LABELS],
                        f"open vocabulary ({len(words)})": words}

        # --- bare forward on the same images
        import io

        arrays = np.stack([decode_resized(io.BytesIO(e), size) for e in encoded])
        W_train = served.vectors[: len(served.labels)]

        def decode_and_forward():
            for s in range(0, len(encoded), BATCH):
                batch = np.stack([decode_resized(io.BytesIO(e), size) for e in encoded[s:s + BATCH]])
                with torch.inference_mode():
                    network.distances(to_input(batch, network, device), W_train)

        def forward():
            for s in range(0, len(arrays), BATCH):
                with torch.inference_mode():
                    network.distances(to_input(arrays[s:s + BATCH], network, device), W_train)

        inputs = [to_input(arrays[s:s + BATCH], network, device) for s in range(0, len(arrays), BATCH)]

        large = np.stack([decode_resized(io.BytesIO(e), LARGE) for e in encoded])
        inputs_large = [to_input(large[s:s + BATCH], network, device) for s in range(0, len(large), BATCH)]

        def backbone(inputs=inputs):
            with torch.inference_mode():
                for x in inputs:
                    network.backbone(x)

        with torch.inference_mode():
            A = [network(x) for x in inputs]
        t_decode_forward, t_forward, t_backbone = (best_of(fn, warm_up=True) for fn in (decode_and_forward, forward, backbone))
        t_backbone_large = best_of(lambda x=inputs_large: backbone(x), warm_up=True)
        del large, inputs_large

        # --- ranking alone, for each vocabulary, on the network's A, as predict ranks it
        ranking = {}
        for name, vocab in vocabularies.items():
            W = served.vocabulary(vocab or []).words  # resolved and prepared once per vocabulary, as in predict
            k = min(3, len(W))

            def rank(W=W, k=k):
                with torch.inference_mode():
                    for a in A:
                        torch.topk(network.distances_from_output(a, W), k, dim=1, largest=False)

            ranking[name] = best_of(rank, repeats=5, warm_up=True)

        # --- predict through the pyfunc
        predict = {}
        for name, vocab in vocabularies.items():
            params = {"top_k": 3, **({"labels": vocab} if vocab else {})}
            predict[name] = best_of(lambda params=params: loaded.predict(frame, params=params), repeats=2, warm_up=True)

        # --- through mlflow models serve
        latencies, batch_seconds, ready = serve(model_dir, threads, [body([b]) for b in b64[:20]], args.requests,
                                                body(b64), work)

    n = len(encoded)
    print(f"{n} test images ({size} px canvases as JPEG), {trained.spec.backbone} k={trained.spec.k} "
          f"d={trained.spec.d}, batches of {BATCH}, cpu, torch threads {threads}")
    print("bare model (no MLflow):")
    print(f"  decode + to_input + network:      {n / t_decode_forward:8.1f} images/s")
    print(f"  network on decoded images:        {n / t_forward:8.1f} images/s")
    print(f"  backbone alone:                   {n / t_backbone:8.1f} images/s  ({1000 * t_backbone / n:.2f} ms/image)")
    print(f"  backbone alone at {LARGE} px:           {n / t_backbone_large:8.1f} images/s  "
          f"({1000 * t_backbone_large / n:.2f} ms/image)")
    print("pyfunc predict (loaded with mlflow.pyfunc.load_model), top_k 3:")
    for name, seconds in predict.items():
        print(f"  {name + ':':<33} {n / seconds:8.1f} images/s  ({seconds / t_decode_forward:.2f}x the bare "
              "decode + network time)")
    print(f"ranking alone (D = ||A w||^2 and top-3 over the vocabulary) as a share of the backbone's time at "
          f"{size} px and at {LARGE} px:")
    for name, seconds in ranking.items():
        print(f"  {name + ':':<33} {1000 * seconds / n:8.3f} ms/image  {100 * seconds / t_backbone:6.2f} %  "
              f"{100 * seconds / t_backbone_large:6.2f} %")
    base = predict[next(iter(predict))]
    for name, seconds in list(predict.items())[1:]:
        print(f"  in predict, {name} over the training labels: +{1000 * (seconds - base) / n:.3f} ms/image, "
              f"{100 * (seconds - base) / t_backbone:.1f} % of the backbone's time")
    q = statistics.quantiles(latencies, n=20)
    print(f"mlflow models serve (1 worker; ready {ready:.1f} s after start): one-image request latency "
          f"p50 {1000 * statistics.median(latencies):.1f} ms, p95 {1000 * q[18]:.1f} ms over {len(latencies)} "
          f"requests; one request of {n} images {batch_seconds:.2f} s = {n / batch_seconds:.1f} images/s")
    print(f"1-min load average {load:.1f} before, {os.getloadavg()[0]:.1f} after ({os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
