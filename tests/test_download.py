"""labelspace.data.download against a real HTTP server on 127.0.0.1 that serves every fault NUS-WIDE's
Flickr URLs show today. Only loopback is ever contacted: the URL list names Flickr hosts and
`mirror` rewrites them to the local server."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from PIL import Image
from support import project_config

from labelspace.cli import main as cli_main
from labelspace.data.download import (
    OUTCOMES,
    TEMP_SUFFIX,
    download_nuswide,
    is_present,
    parse_urls_file,
)

MIN_BYTES = 600
# The client's timeout has two opposite jobs, so no list needs both. In the faulty list every route
# answers or hangs up, so no correct run waits on the timeout: it is long enough that no answer
# races it however loaded the machine (a short one made a loopback answer that lost the CPU for a
# second come out as a timeout, and be retried). A route that never answers sits in a list of its
# own, where nothing races the clock: its timeout only sets how long the test takes.
ANSWERED_TIMEOUT = 30.0
SILENT_TIMEOUT = 0.25
RETRIES = 2
CHUNK = 1 << 16  # what download.py reads per iter_content step


def download(urls_file, out_dir, **settings):
    """download_nuswide with params.yaml's `download` section, some settings changed."""
    return download_nuswide(urls_file, out_dir, **{**dataclasses.asdict(project_config().download), **settings})


def write_params(path, **download):
    """The project's params.yaml with `download` keys changed (params.yaml must be complete)."""
    raw = project_config().params
    path.write_text(yaml.safe_dump({**raw, "download": {**raw["download"], **download}}), encoding="utf-8")
    return path


def jpeg(seed: int, size=(48, 36), quality=90) -> bytes:
    """A small real photo-like JPEG: noise, so it is well above MIN_BYTES."""
    rng = random.Random(seed)
    image = Image.frombytes("RGB", size, rng.randbytes(size[0] * size[1] * 3))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def tiny_gif() -> bytes:
    """A 1x1 GIF: a valid image, far too small to be a photo (a spacer pixel)."""
    buffer = io.BytesIO()
    Image.new("P", (1, 1)).save(buffer, "GIF")
    return buffer.getvalue()


def png(seed: int) -> bytes:
    buffer = io.BytesIO()
    rng = random.Random(seed)
    Image.frombytes("L", (40, 30), rng.randbytes(1200)).save(buffer, "PNG")
    return buffer.getvalue()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's 5 pending connections: a loaded CPU that delays accept() while 8 or 16 workers
    # connect would make the kernel drop a connect, which the client only repeats a second later.
    request_queue_size = 64


class FakeFlickr:
    """A ThreadingHTTPServer on an ephemeral loopback port. routes: path -> (behaviour, *args);
    every request is counted per path in `hits`. No behaviour depends on time: a route that must
    outlast the client ("hang") or stop mid-body ("stall") waits on an event, and a test waits on
    what the server has seen (`wait_until`), not on a sleep."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple] = {}
        self.hits: Counter[str] = Counter()
        self.stalled = 0  # "stall" answers now waiting mid-body for `release`
        self.release = threading.Event()  # lets every stalled answer finish
        self.closing = threading.Event()  # ends every hanging answer
        self.changed = threading.Condition()  # notified whenever hits or stalled change
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, so the client's connection pool is exercised
            disable_nagle_algorithm = True

            def log_message(self, *args) -> None:
                pass

            def send(self, status: int, body: bytes = b"", headers: dict | None = None, cut: bool = False) -> None:
                self.send_response(status)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if cut:  # promise the whole body, send half, hang up
                    self.wfile.write(body[: len(body) // 2])
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def do_GET(self) -> None:
                with fake.changed:
                    fake.hits[self.path] += 1
                    nth = fake.hits[self.path]
                    fake.changed.notify_all()
                kind, *args = fake.routes.get(self.path, ("status", 404))
                if kind == "image":
                    self.send(200, args[0], {"Content-Type": "image/jpeg"})
                elif kind == "status":
                    self.send(args[0])
                elif kind == "flaky":  # (failures, body): 503 for the first `failures` requests
                    self.send(503) if nth <= args[0] else self.send(200, args[1])
                elif kind == "hang":  # no answer until the server closes: the client must time out
                    fake.closing.wait()
                    self.close_connection = True
                elif kind == "redirect":
                    self.send(302, headers={"Location": args[0]})
                elif kind == "drop":  # hang up without an answer
                    self.close_connection = True
                elif kind == "cut_once":  # a short body the first time, whole afterwards
                    self.send(200, args[0], cut=nth == 1)
                elif kind == "stall":  # (body,): headers and half the body, then nothing until `release`
                    body = args[0]
                    self.send_response(200)
                    self.send_header("Content-Type", "image/jpeg")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    with fake.changed:
                        fake.stalled += 1
                        fake.changed.notify_all()
                    fake.release.wait()
                    with fake.changed:
                        fake.stalled -= 1
                        fake.changed.notify_all()
                    self.wfile.write(body[len(body) // 2:])

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.server.handle_error = lambda request, address: None  # clients that timed out hang up
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def image_hits(self) -> int:
        return sum(n for path, n in self.hits.items() if path.endswith(".jpg"))

    def wait_until(self, condition, timeout: float = 60.0) -> bool:
        """Block until condition() holds (evaluated under the lock, on every hit or stall). The
        timeout only turns a bug into a failure instead of a hang; no outcome depends on it."""
        with self.changed:
            return self.changed.wait_for(condition, timeout)

    def close(self) -> None:
        self.release.set()
        self.closing.set()
        self.server.shutdown()
        self.server.server_close()


class UrlList:
    """Builds a NUS-WIDE-urls.txt whose URLs name Flickr hosts, and the server routes behind them."""

    def __init__(self, server: FakeFlickr) -> None:
        self.server = server
        self.lines = ["%" * 80]
        self.served: dict[str, bytes] = {}  # relpath -> the bytes a correct download must hold

    def add(self, folder: str, photo_id: int, expect: bytes | None = None, **columns: tuple | None) -> str:
        """columns: large/middle/small/original -> route behaviour, or None for `null`."""
        urls = []
        for size, suffix in (("large", "_b"), ("middle", ""), ("small", "_t"), ("original", "_o")):
            behaviour = columns.get(size)
            if behaviour is None:
                urls.append("null")
                continue
            path = f"/{photo_id % 97}/{photo_id}_deadbeef{suffix}.jpg"
            self.server.routes[path] = behaviour
            urls.append(f"http://farm{photo_id % 9}.static.flickr.com{path}")
        relpath = f"Flickr/{folder}/{len(self.lines):04d}_{photo_id}.jpg"
        self.lines.append(f"C:\\ImageData\\{relpath.replace('/', chr(92))}    {photo_id} " + " ".join(urls))
        if expect is not None:
            self.served[relpath] = expect
        return relpath

    def write(self, path: Path) -> Path:
        path.write_text("\n".join(self.lines) + "\n", encoding="utf-8")
        return path


def temp_files(out: Path) -> list[Path]:
    return sorted(out.rglob(f"*{TEMP_SUFFIX}"))


# --- the faulty list, downloaded once per module ------------------------------------------------

PLACEHOLDER = png(99)
EXPECTED = {
    "downloaded": 7, "present": 0, "duplicate": 1, "malformed": 3, "no_url": 1, "not_found": 2,
    "http_error": 1, "server_error": 1, "timeout": 0, "connection_error": 1, "placeholder": 2,
    "too_small": 1, "too_large": 0, "corrupt": 2,
}


@pytest.fixture(scope="module")
def faulty(tmp_path_factory):
    server = FakeFlickr()
    urls = UrlList(server)
    good = [jpeg(i) for i in range(8)]
    truncated = jpeg(50, size=(64, 48))
    paths = {
        "good": urls.add("actor", 1001, good[0], middle=("image", good[0])),
        "good_large_too": urls.add("actor", 1002, good[1], large=("image", good[7]), middle=("image", good[1])),
        "fallback_null": urls.add("beach", 1003, good[2], large=("image", good[2])),
        "fallback_dead": urls.add("beach", 1004, good[3], middle=("status", 404), small=("image", good[3])),
        "flaky": urls.add("beach", 1005, good[4], middle=("flaky", RETRIES, good[4])),
        "cut_once": urls.add("cat", 1006, good[5], middle=("cut_once", good[5])),
        "good_small_pref_ignored": urls.add("cat", 1007, good[6], middle=("image", good[6]), small=("image", good[0])),
        "not_found": urls.add("cat", 1008, middle=("status", 404)),
        "gone": urls.add("cat", 1009, middle=("status", 410)),
        "forbidden": urls.add("dog", 1010, middle=("status", 403)),
        "server_error": urls.add("dog", 1011, middle=("status", 500)),
        "drop": urls.add("dog", 1013, middle=("drop",)),
        "placeholder_redirect": urls.add("elk", 1014, middle=("redirect", "/images/photo_unavailable.png")),
        "placeholder_bytes": urls.add("elk", 1015, middle=("image", PLACEHOLDER)),
        "too_small": urls.add("elk", 1016, middle=("image", tiny_gif())),
        "truncated": urls.add("fox", 1017, middle=("image", truncated[: len(truncated) * 3 // 5])),
        "html": urls.add("fox", 1018, middle=("image", b"<html><body>" + b"gone " * 300 + b"</body></html>")),
        "no_url": urls.add("fox", 1019),
    }
    server.routes["/images/photo_unavailable.png"] = ("image", PLACEHOLDER)
    assert len(tiny_gif()) < MIN_BYTES < len(truncated) * 3 // 5
    urls.lines.append(urls.lines[1])  # the first image listed twice
    urls.lines += [
        "C:\\ImageData\\Flickr\\actor\\0099_1099.jpg 1099 null null",  # 4 fields
        "C:\\ImageData\\Flickr\\..\\0098_1098.jpg 1098 null http://x.invalid/a.jpg null null",  # escapes Flickr/
        "C:\\ImageData\\Flickr\\actor\\0097_1097.jpg notanid null http://x.invalid/a.jpg null null",
        "",
    ]
    tmp = tmp_path_factory.mktemp("faulty")
    list_file = urls.write(tmp / "NUS-WIDE-urls.txt")
    settings = dict(mirror=server.url, workers=8, timeout=ANSWERED_TIMEOUT, retries=RETRIES, backoff=0.01,
                    min_bytes=MIN_BYTES, placeholder_sha256=[hashlib.sha256(PLACEHOLDER).hexdigest()], progress=False)
    first = download(list_file, tmp / "nuswide", **settings)
    # The server counts a request before it answers or hangs up, so every request the client made
    # has been counted by the time download_nuswide returns.
    hits_after_first = Counter(server.hits)
    yield {"server": server, "urls": urls, "paths": paths, "out": tmp / "nuswide", "list": list_file,
           "settings": settings, "first": first, "hits_after_first": hits_after_first}
    server.close()


def test_every_fault_is_counted_exactly(faulty):
    report = faulty["first"]
    assert report["counts"] == EXPECTED
    assert set(report["counts"]) == set(OUTCOMES)
    assert report["lines"] == 22 and report["images"] == 18
    assert report["valid_images"] == 7
    assert report["failed"] == sum(EXPECTED.values()) - 7 - 1  # all but downloaded and duplicate
    assert report["downloaded_by_size"] == {"large": 1, "middle": 5, "small": 1, "original": 0}
    assert report["fell_back"] == 2
    assert json.loads((faulty["out"] / "download-report.json").read_text()) == report


def test_failures_name_url_path_and_reason(faulty):
    by_path = {f["path"]: f for f in faulty["first"]["failures"]}
    paths = faulty["paths"]
    assert by_path[paths["not_found"]]["outcome"] == "not_found"
    assert "HTTP 410" in by_path[paths["gone"]]["detail"]
    assert by_path[paths["forbidden"]]["outcome"] == "http_error"
    assert by_path[paths["drop"]]["outcome"] == "connection_error"
    assert by_path[paths["server_error"]]["detail"] == "middle: server_error (HTTP 500, attempt 3 of 3)"
    assert "photo_unavailable" in by_path[paths["placeholder_redirect"]]["detail"]
    assert "known placeholder" in by_path[paths["placeholder_bytes"]]["detail"]
    assert by_path[paths["too_small"]]["outcome"] == "too_small"
    assert {by_path[paths[k]]["outcome"] for k in ("truncated", "html")} == {"corrupt"}
    assert by_path[paths["no_url"]]["outcome"] == "no_url"
    assert by_path[paths["not_found"]]["url"].startswith(faulty["server"].url + "/")  # the mirror, not Flickr
    malformed = [f for f in faulty["first"]["failures"] if f["outcome"] == "malformed"]
    assert [f["line"] for f in malformed] == [21, 22, 23]
    assert "4 fields" in malformed[0]["detail"] and "Flickr" in malformed[1]["detail"]


def test_retries_are_bounded_and_404_is_not_retried(faulty):
    hits, routes = faulty["hits_after_first"], faulty["server"].routes

    def requests_to(kind: str) -> list[int]:
        return [hits[path] for path, route in routes.items() if route[0] == kind]

    assert requests_to("flaky") == [RETRIES + 1]  # 503, 503, then the image
    assert requests_to("drop") == [RETRIES + 1]
    assert requests_to("cut_once") == [2]
    not_retried = [path for path, route in routes.items() if route[0] == "status" and route[1] != 500]
    assert len(not_retried) == 4 and all(hits[path] == 1 for path in not_retried)  # 404 x2, 410, 403
    assert hits["/images/photo_unavailable.png"] == 0  # recognised from the redirect alone
    assert faulty["first"]["http_requests"] == sum(hits.values())


def test_good_images_are_byte_identical_and_nothing_partial_remains(faulty):
    out = faulty["out"]
    for relpath, expected in faulty["urls"].served.items():
        assert (out / relpath).read_bytes() == expected, relpath
    landed = sorted(p.relative_to(out).as_posix() for p in (out / "Flickr").rglob("*") if p.is_file())
    assert landed == sorted(faulty["urls"].served)  # no temp file, no lock file, no failed image


def test_rerun_fetches_no_image_again_and_retries_only_transient_failures(faulty):
    server, paths = faulty["server"], faulty["paths"]
    before = Counter(server.hits)
    report = download(faulty["list"], faulty["out"], **faulty["settings"])
    new = {path: n - before[path] for path, n in server.hits.items() if n > before[path]}
    transient = {p for p, r in server.routes.items() if r[0] == "drop" or r == ("status", 500)}
    assert new == dict.fromkeys(transient, RETRIES + 1)  # nothing else was requested
    assert report["counts"] == {**EXPECTED, "downloaded": 0, "present": 7}
    assert report["remembered_failures"] == 8  # not_found x2, http_error, placeholder x2, too_small, corrupt x2
    remembered = {f["path"]: f["detail"] for f in report["failures"]}
    assert remembered[paths["not_found"]] == "middle: not_found (HTTP 404)"


def test_a_server_that_never_answers_times_out_after_every_retry_and_is_tried_again_next_run(tmp_path):
    """The one fault that needs the clock, alone in its list: with no answer in the run to race the
    timeout, the outcome is the same on an idle or a saturated machine."""
    server = FakeFlickr()
    try:
        urls = UrlList(server)
        silent = urls.add("dog", 5001, middle=("hang",))
        list_file = urls.write(tmp_path / "urls.txt")
        settings = dict(mirror=server.url, workers=2, timeout=SILENT_TIMEOUT, retries=RETRIES, backoff=0.01,
                        progress=False)
        requested = 0
        for run in (1, 2):  # a timeout is transient: the next run asks again instead of remembering it
            report = download(list_file, tmp_path / "out", **settings)
            requested += report["http_requests"]
            # The client gives up before the server answers, so a request may reach do_GET only
            # after download_nuswide returned: wait until the server has seen every one.
            assert server.wait_until(lambda n=requested: server.image_hits() >= n)
            assert report["counts"] == {**dict.fromkeys(OUTCOMES, 0), "timeout": 1}
            assert report["remembered_failures"] == 0
            assert server.image_hits() == requested == run * (RETRIES + 1)
            [failure] = report["failures"]
            assert failure["path"] == silent and failure["outcome"] == "timeout"
            assert failure["detail"].startswith(f"middle: timeout (no answer within {SILENT_TIMEOUT} s")
            assert failure["detail"].endswith(f"attempt {RETRIES + 1} of {RETRIES + 1})")
        assert not (tmp_path / "out" / silent).exists() and temp_files(tmp_path / "out") == []
    finally:
        server.close()


def test_retry_failed_and_a_new_mirror_try_permanent_failures_again(tmp_path):
    server = FakeFlickr()
    try:
        urls = UrlList(server)
        urls.add("cat", 2001, middle=("status", 404))
        list_file = urls.write(tmp_path / "urls.txt")
        run = dict(mirror=server.url, retries=0, progress=False)
        download(list_file, tmp_path / "out", **run)
        download(list_file, tmp_path / "out", **run)
        assert server.image_hits() == 1
        download(list_file, tmp_path / "out", **run, retry_failed=True)
        assert server.image_hits() == 2
        download(list_file, tmp_path / "out", **{**run, "mirror": server.url + "/"})
        assert server.image_hits() == 2  # same URLs after rewriting: still remembered
    finally:
        server.close()


def test_cli_reads_params_lets_flags_override_and_exits_zero_despite_faults(tmp_path, monkeypatch, capsys):
    server = FakeFlickr()
    try:
        urls = UrlList(server)
        photo = jpeg(7)
        urls.add("cat", 4001, photo, middle=("image", photo))
        urls.add("cat", 4002, middle=("status", 404))
        list_file = urls.write(tmp_path / "urls.txt")
        params = tmp_path / "params.yaml"
        write_params(params, min_bytes=len(photo) + 1, retries=0)
        monkeypatch.setenv("LABELSPACE_PARAMS", str(params))
        base = ["download", "--urls", str(list_file), "--out", str(tmp_path / "out"), "--mirror", server.url,
                "--no-progress", "--report", str(tmp_path / "report.json")]

        assert cli_main(base) == 0  # min_bytes from params.yaml: the photo is too small
        report = json.loads((tmp_path / "report.json").read_text())
        assert (report["counts"]["too_small"], report["counts"]["not_found"]) == (1, 1)
        assert "0 of 2 images valid" in capsys.readouterr().out

        assert cli_main([*base, "--min-bytes", "600", "--retry-failed"]) == 0  # the flag wins
        report = json.loads((tmp_path / "report.json").read_text())
        assert (report["counts"]["downloaded"], report["counts"]["not_found"]) == (1, 1)
        assert not (tmp_path / "out" / "download-report.json").exists()

        write_params(params, min_byte=10)
        assert cli_main(base) == 2
        assert "unknown key download.min_byte" in capsys.readouterr().err
    finally:
        server.close()


def test_parse_urls_file(tmp_path):
    text = (
        "%%%%%%%%\n"
        "  Photo_file  Photo_id  url_Large  url_Middle  url_Small  url_Original\n"
        "C:\\ImageData\\Flickr\\actor\\0001_2124494179.jpg     2124494179 null "
        "http://farm3.static.flickr.com/2350/2124494179_aee9ff1d2c.jpg null NULL\n"
        "\n"
        "C:\\ImageData\\Flickr\\actor\\0002_1.jpg 1 null ftp://x/y.jpg null null\n"
        "C:\\ImageData\\Flickr\\a/b\\0003_2.jpg 2 null null null null\n"
    )
    (tmp_path / "urls.txt").write_text(text)
    rows, malformed = parse_urls_file(tmp_path / "urls.txt")
    assert [(r.line, r.relpath, r.photo_id) for r in rows] == [(3, "Flickr/actor/0001_2124494179.jpg", "2124494179")]
    assert rows[0].urls == {"large": None, "middle": "http://farm3.static.flickr.com/2350/2124494179_aee9ff1d2c.jpg",
                            "small": None, "original": None}
    assert [(m.line, m.reason.split()[0]) for m in malformed] == [(5, "middle"), (6, "path")]


def test_missing_url_list_is_a_clear_error_with_nonzero_exit(tmp_path, capsys):
    code = cli_main(["download", "--urls", str(tmp_path / "NUS-WIDE-urls.txt"), "--out", str(tmp_path / "out")])
    assert code == 2
    assert "NUS-WIDE-urls.txt does not exist" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_killed_download_leaves_no_partial_image_and_completes_on_restart(tmp_path):
    """SIGKILL while every worker is mid-body. The kill moment is fixed by the server, not by timing:
    the first WHOLE images are served at once, every later one sends half its body and stalls until
    the test releases it. Workers take rows in list order, so exactly WHOLE images land and each of
    the `workers` stalled downloads holds a partial temporary file when the kill comes."""
    workers, whole, total = 3, 6, 24
    server = FakeFlickr()
    process = None
    try:
        urls = UrlList(server)
        stalled_paths = []
        for i in range(total):
            body = jpeg(100 + i, size=(512, 384))
            assert len(body) // 2 > CHUNK  # the half sent before the stall fills at least one read
            relpath = urls.add(f"q{i % 3}", 3000 + i, body, middle=("image", body) if i < whole else ("stall", body))
            if i >= whole:
                stalled_paths.append(relpath)
        list_file = urls.write(tmp_path / "NUS-WIDE-urls.txt")
        # Settings come from a params.yaml, as in the DVC stage; the command line adds the mirror. The
        # timeout outlasts the test, so a stalled body stays stalled until the kill.
        write_params(tmp_path / "params.yaml", workers=workers, retries=0, min_bytes=600, timeout=600)
        out = tmp_path / "nuswide"
        command = [sys.executable, "-m", "labelspace", "download", "--urls", str(list_file), "--out", str(out),
                   "--mirror", server.url, "--no-progress"]
        stderr_path = tmp_path / "stderr.txt"
        with open(stderr_path, "wb") as stderr:  # a file, not a pipe: a full pipe would block the child
            process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=stderr,
                                       env={**os.environ, "LABELSPACE_PARAMS": str(tmp_path / "params.yaml")})

        def landed() -> list[Path]:
            return sorted((out / "Flickr").glob("*/*.jpg"))

        def ready() -> bool:  # all workers stalled, and each has written the first chunk somewhere
            if server.stalled < workers:
                return False
            files = [p for p in (out / "Flickr").glob("*/*") if p.is_file()]  # final and temporary
            return len(files) == whole + workers and all(p.stat().st_size >= CHUNK for p in files)

        # Once ready() holds it stays so until the kill (every worker waits on a stalled body), so
        # how long the polling takes changes nothing; the deadline only turns a hang into a failure.
        deadline = time.monotonic() + 120
        while process.poll() is None and not ready() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert process.poll() is None, stderr_path.read_text()
        assert ready(), (server.stalled, landed(), temp_files(out), stderr_path.read_text())
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)

        assert [p.relative_to(out).as_posix() for p in landed()] == sorted(set(urls.served) - set(stalled_paths))
        for path in landed():  # whatever reached a final path is complete
            assert path.read_bytes() == urls.served[path.relative_to(out).as_posix()]
        left_behind = temp_files(out)
        # Killed mid-body: the partial bytes sit under temporary names only.
        assert len(left_behind) == workers and all(p.stat().st_size >= CHUNK for p in left_behind)
        assert not any((p.parent / p.name[1:].rsplit(".", 2)[0]).exists() for p in left_behind)
        assert {(p.parent / p.name[1:].rsplit(".", 2)[0]).relative_to(out).as_posix()
                for p in left_behind} == set(stalled_paths[:workers])

        server.release.set()  # from now on every body is served whole
        report = download(list_file, out, mirror=server.url, workers=4, retries=0, min_bytes=600,
                                  progress=False)
        assert report["stale_temp_files_removed"] == workers
        assert report["counts"]["present"] == whole
        assert report["counts"]["downloaded"] == total - whole
        assert report["valid_images"] == total and report["failed"] == 0
        assert temp_files(out) == []
        for relpath, body in urls.served.items():
            assert (out / relpath).read_bytes() == body and is_present(out / relpath, 600)

        hits = server.image_hits()
        again = download(list_file, out, mirror=server.url, min_bytes=600, progress=False)
        assert server.image_hits() == hits and again["http_requests"] == 0
        assert again["counts"]["present"] == total
    finally:
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(timeout=30)
        server.close()
