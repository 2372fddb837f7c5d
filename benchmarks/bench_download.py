"""Images/second of labelspace.download_nuswide against a loopback server with network-like latency,
concurrent (--workers) versus sequential (workers=1) on the same URL list; prints both and the ratio.

The server (127.0.0.1, ephemeral port, keep-alive) waits --delay seconds before each answer, as a
far-away Flickr farm would; the images are real JPEGs of a few KB. Only loopback is contacted.

    .venv/bin/python benchmarks/bench_download.py [--images 200] [--workers 16] [--delay 0.02]
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import random
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from PIL import Image

from labelspace.config import load_config
from labelspace.data.download import download_nuswide

REPO = Path(__file__).resolve().parents[1]


def start_server(images: dict[str, bytes], delay: float) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # else headers and body wait on delayed ACKs (40 ms)

        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            time.sleep(delay)
            body = images.get(self.path)
            self.send_response(200 if body else 404)
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def write_url_list(path: Path, n: int) -> dict[str, bytes]:
    """A NUS-WIDE-urls.txt of n rows naming Flickr hosts; returns the served path -> JPEG bytes."""
    rng = random.Random(0)
    images, lines = {}, ["%" * 80]
    for i in range(n):
        buffer = io.BytesIO()
        Image.frombytes("RGB", (64, 48), rng.randbytes(64 * 48 * 3)).save(buffer, "JPEG", quality=85)
        photo_id = 2_000_000_000 + i
        url_path = f"/{i % 50}/{photo_id}_0123abcd.jpg"
        images[url_path] = buffer.getvalue()
        lines.append(f"C:\\ImageData\\Flickr\\q{i % 20}\\{i:04d}_{photo_id}.jpg {photo_id} null "
                     f"http://farm{i % 9}.static.flickr.com{url_path} null null")
    path.write_text("\n".join(lines) + "\n")
    return images


def timed_download(urls: Path, out: Path, mirror: str, workers: int) -> float:
    start = time.perf_counter()
    settings = {**dataclasses.asdict(load_config(REPO / "params.yaml").download), "mirror": mirror, "workers": workers}
    report = download_nuswide(urls, out, **settings, progress=False)
    seconds = time.perf_counter() - start
    if report["counts"]["downloaded"] != report["images"]:
        raise SystemExit(f"benchmark download incomplete: {report['counts']}")
    return report["images"] / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--delay", type=float, default=0.02, help="server latency per request, seconds")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        server = start_server(write_url_list(tmp / "NUS-WIDE-urls.txt", args.images), args.delay)
        mirror = f"http://127.0.0.1:{server.server_address[1]}"
        try:
            sequential = timed_download(tmp / "NUS-WIDE-urls.txt", tmp / "sequential", mirror, workers=1)
            concurrent = timed_download(tmp / "NUS-WIDE-urls.txt", tmp / "concurrent", mirror, args.workers)
        finally:
            server.shutdown()
            server.server_close()
    print(f"download of {args.images} images, {args.delay * 1000:.0f} ms latency per request (loopback)")
    print(f"  sequential (workers=1):   {sequential:8.1f} images/s")
    print(f"  concurrent (workers={args.workers}): {concurrent:8.1f} images/s")
    print(f"  speed-up: {concurrent / sequential:.1f}x")


if __name__ == "__main__":
    main()
