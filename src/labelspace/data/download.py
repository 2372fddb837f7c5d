"""Fetch the images of NUS-WIDE's `NUS-WIDE-urls.txt` into the release layout (docs/nuswide.md).

A row `C:\\ImageData\\Flickr\\actor\\0001_2124494179.jpg 2124494179 <large> <middle> <small> <original>`
lands at `<out>/Flickr/actor/0001_2124494179.jpg`. Most Flickr URLs are dead today, so every fault
is an outcome (OUTCOMES), counted and reported, never fatal. 404/410 are not retried; 5xx, 429,
timeouts and dropped connections are, `retries` times after `backoff * 2**i` seconds. Any failure
of a size column falls back to the next (FALLBACK_ORDER); an image failing on all of them reports
the outcome of the first. Flickr's "photo unavailable" placeholder is recognised by a redirect to a
URL containing `photo_unavailable` (never fetched) or by a SHA-256 in `placeholder_sha256`, not by
its dimensions, which ordinary photos share. A body goes to a hidden temporary file beside its
final path and is renamed only once complete, at least `min_bytes` and decodable by PIL, so a final
path never holds a partial image; a killed run's temporary files are deleted on the next start.

Resuming: a rerun makes no request for an image already present (exists, at least `min_bytes`,
header decodes), nor for one whose permanent failure (any but the TRANSIENT ones) the previous
report recorded for the same first URL. `retry_failed=True` tries every failure again.

About 460 lines, kept in one module on purpose: the URL list parser, the fetcher with its retry,
fallback and validation rules, the resumable report and the worker pool share one set of outcome
names and temp-file rules, and splitting them would spread one protocol over several files.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import threading
import time
import uuid
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit, urlunsplit

import requests
import urllib3
from PIL import Image
from requests.adapters import HTTPAdapter

from labelspace.progress import progress as progress_bar

log = logging.getLogger(__name__)

SIZES = ("large", "middle", "small", "original")  # URL column order in NUS-WIDE-urls.txt
# The preferred size, then the larger ones (a resize down loses nothing), then the smaller ones.
FALLBACK_ORDER = {
    "small": ("small", "middle", "large", "original"),
    "middle": ("middle", "large", "original", "small"),
    "large": ("large", "original", "middle", "small"),
    "original": ("original", "large", "middle", "small"),
}
FAILURES = ("malformed", "no_url", "not_found", "http_error", "server_error", "timeout",
            "connection_error", "placeholder", "too_small", "too_large", "corrupt")
OUTCOMES = ("downloaded", "present", "duplicate", *FAILURES)
TRANSIENT = frozenset({"server_error", "timeout", "connection_error"})
PLACEHOLDER_MARK = "photo_unavailable"
TEMP_SUFFIX = ".labelspace-part"
LOCK_NAME = ".labelspace-download.lock"
MAX_IMAGE_BYTES = 64 * 2**20
MAX_REDIRECTS = 5
MAX_DRAINED_BYTES = 1 << 16
_NAME = re.compile(r"^[\w\-+&'(),!~][\w.\-+&'(),!~]*$")  # one path component, no separators or '..'


@dataclass(frozen=True)
class UrlRow:
    line: int
    folder: str
    file: str
    photo_id: str
    urls: dict[str, str | None]  # size -> URL, None where the file says `null`

    @property
    def relpath(self) -> str:
        return f"Flickr/{self.folder}/{self.file}"


@dataclass(frozen=True)
class RowResult:
    outcome: str
    size: str | None = None  # the column the image came from
    url: str | None = None  # the URL fetched, or the first one tried when all failed
    detail: str = ""
    remembered: bool = False  # a permanent failure taken from the previous report, not refetched


@dataclass(frozen=True)
class MalformedLine:
    line: int
    text: str
    reason: str


def parse_urls_file(path: str | os.PathLike) -> tuple[list[UrlRow], list[MalformedLine]]:
    """Rows of a NUS-WIDE-urls.txt, and the lines that could not be read as one (never raises on content)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"URL list {path} does not exist: pass the NUS-WIDE-urls.txt of the NUS-WIDE release "
            "(see docs/nuswide.md for where to get it)"
        )
    rows, malformed = [], []
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, raw in enumerate(f, start=1):
            text = raw.strip()
            if not text or text.startswith("%") or text.split(None, 1)[0] == "Photo_file":
                continue  # blank, the %%% rule or the column header
            row_or_reason = _parse_row(number, text.split())
            if isinstance(row_or_reason, str):
                malformed.append(MalformedLine(number, text[:300], row_or_reason))
            else:
                rows.append(row_or_reason)
    return rows, malformed


def _parse_row(number: int, fields: list[str]) -> UrlRow | str:
    if len(fields) != 2 + len(SIZES):
        return f"{len(fields)} fields, expected {2 + len(SIZES)} (path, photo id, {', '.join(SIZES)} URLs)"
    parts = fields[0].split("\\")
    if len(parts) < 3 or parts[-3].lower() != "flickr" or not all(_NAME.match(p) for p in parts[-2:]):
        return f"path {fields[0]!r} is not of the form ...\\Flickr\\<folder>\\<file>"
    if not fields[1].isdigit():
        return f"photo id {fields[1]!r} is not a number"
    urls: dict[str, str | None] = {}
    for size, value in zip(SIZES, fields[2:], strict=True):
        if value.lower() != "null" and not value.startswith(("http://", "https://")):
            return f"{size} URL {value!r} is neither null nor http(s)"
        urls[size] = None if value.lower() == "null" else value
    return UrlRow(number, parts[-2], parts[-1], fields[1], urls)


def remove_stale_temp_files(out_dir: str | os.PathLike) -> int:
    """Delete the temporary files an interrupted run left under out_dir/Flickr; returns how many."""
    removed = 0
    for tmp in Path(out_dir, "Flickr").glob(f"*/.*{TEMP_SUFFIX}"):
        tmp.unlink(missing_ok=True)
        removed += 1
    return removed


def is_present(path: str | os.PathLike, min_bytes: int) -> bool:
    """Cheap resume check: a regular file of at least min_bytes whose image header decodes."""
    try:
        if not os.path.isfile(path) or os.path.getsize(path) < min_bytes:
            return False
        with Image.open(path) as image:
            return image.width > 0 and image.height > 0
    except Exception:  # noqa: BLE001 - anything unreadable is simply not present
        return False


def decode_problem(path: str | os.PathLike) -> str | None:
    """None when PIL verifies and fully decodes the image, else what is wrong with it."""
    try:
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:  # verify() leaves the image unusable; load() catches truncation
            image.load()
    except Exception as e:  # noqa: BLE001 - broken files raise OSError, SyntaxError, struct.error, ...
        return f"{type(e).__name__}: {e}"
    return None


@dataclass
class _Fetcher:
    """Fetches one row's image; shared by the worker threads (each has its own requests Session)."""

    out_dir: Path
    order: tuple[str, ...]
    mirror: str | None
    timeout: float
    retries: int
    backoff: float
    min_bytes: int
    placeholder_sha256: frozenset[str]
    pool_size: int
    remembered: dict[str, dict[str, Any]]  # path -> failure entry of the previous report
    stop: threading.Event = field(default_factory=threading.Event)
    requests_made: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _local: threading.local = field(default_factory=threading.local)

    def session(self) -> requests.Session:
        if not hasattr(self._local, "session"):
            session = requests.Session()
            # Pooled keep-alive connections; retries are ours, so urllib3 must not add its own.
            adapter = HTTPAdapter(pool_connections=self.pool_size, pool_maxsize=self.pool_size, max_retries=0)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            session.headers["User-Agent"] = "labelspace-download/1 (NUS-WIDE research dataset)"
            self._local.session = session
        return self._local.session

    def url_for(self, url: str) -> str:
        if not self.mirror:
            return url
        original, mirror = urlsplit(url), urlsplit(self.mirror)
        return urlunsplit((mirror.scheme, mirror.netloc, mirror.path.rstrip("/") + original.path, original.query, ""))

    def fetch_row(self, row: UrlRow) -> RowResult:
        final = self.out_dir / row.relpath
        if is_present(final, self.min_bytes):
            return RowResult("present")
        candidates = [(size, self.url_for(row.urls[size])) for size in self.order if row.urls[size]]
        if not candidates:
            return RowResult("no_url", detail="every URL column is null")
        known = self.remembered.get(row.relpath)
        if known and known["url"] == candidates[0][1]:
            return RowResult(known["outcome"], url=known["url"], detail=known["detail"], remembered=True)
        tried = []
        for size, url in candidates:
            outcome, detail = self.fetch_with_retries(url, final)
            if outcome == "downloaded":
                return RowResult(outcome, size, url, detail)
            tried.append((size, outcome, detail))
            if self.stop.is_set():
                break
        detail = "; ".join(f"{size}: {outcome} ({detail})" for size, outcome, detail in tried)
        return RowResult(tried[0][1], url=candidates[0][1], detail=detail)

    def fetch_with_retries(self, url: str, final: Path) -> tuple[str, str]:
        outcome, detail = "connection_error", "stopped before the first attempt"
        for attempt in range(self.retries + 1):
            if self.stop.is_set():
                break
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            outcome, detail, retryable = self.fetch_once(url, final)
            if not retryable:
                return outcome, detail
            detail = f"{detail}, attempt {attempt + 1} of {self.retries + 1}"
        return outcome, detail

    def fetch_once(self, url: str, final: Path) -> tuple[str, str, bool]:
        """(outcome, detail, worth retrying) of one GET, following redirects by hand to spot the placeholder."""
        current = url
        try:
            for _ in range(MAX_REDIRECTS + 1):
                with self._lock:
                    self.requests_made += 1
                with self.session().get(current, stream=True, timeout=self.timeout, allow_redirects=False) as r:
                    if r.status_code != 200:
                        _drain(r)
                    if r.is_redirect:
                        current = urljoin(current, r.headers["Location"])
                        if PLACEHOLDER_MARK in current:
                            return "placeholder", f"redirected to {current}", False
                        continue
                    if r.status_code in (404, 410):
                        return "not_found", f"HTTP {r.status_code}", False
                    if r.status_code == 429 or r.status_code >= 500:
                        return "server_error", f"HTTP {r.status_code}", True
                    if r.status_code != 200:
                        return "http_error", f"HTTP {r.status_code}", False
                    return (*self.save_if_valid(r, final), False)
            return "http_error", f"more than {MAX_REDIRECTS} redirects", False
        except requests.Timeout as e:
            return "timeout", f"no answer within {self.timeout} s ({type(e).__name__})", True
        except (requests.exceptions.InvalidURL, requests.exceptions.InvalidSchema) as e:
            return "http_error", f"{type(e).__name__}: {e}", False
        except requests.RequestException as e:
            # A read timeout while streaming the body surfaces as a ConnectionError wrapping urllib3's.
            if e.args and isinstance(e.args[0], urllib3.exceptions.ReadTimeoutError):
                return "timeout", f"body stalled for {self.timeout} s", True
            return "connection_error", f"{type(e).__name__}: {e}", True

    def save_if_valid(self, response: requests.Response, final: Path) -> tuple[str, str]:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex[:12]}{TEMP_SUFFIX}")
        try:
            digest, size = hashlib.sha256(), 0
            with open(tmp, "wb") as f:
                for chunk in response.iter_content(chunk_size=1 << 16):
                    size += len(chunk)
                    if size > MAX_IMAGE_BYTES:
                        return "too_large", f"more than {MAX_IMAGE_BYTES} bytes"
                    digest.update(chunk)
                    f.write(chunk)
            if size < self.min_bytes:
                return "too_small", f"{size} bytes < min_bytes {self.min_bytes}"
            if digest.hexdigest() in self.placeholder_sha256:
                return "placeholder", f"sha256 {digest.hexdigest()} is a known placeholder"
            problem = decode_problem(tmp)
            if problem:
                return "corrupt", problem
            os.replace(tmp, final)
            return "downloaded", f"{size} bytes"
        finally:
            tmp.unlink(missing_ok=True)  # a no-op once os.replace moved it


def _drain(response: requests.Response) -> None:
    """Read a short error or redirect body, so its keep-alive connection goes back to the pool
    instead of being closed: with most Flickr URLs dead, reconnecting would dominate."""
    length = response.headers.get("Content-Length", "")
    if length.isdigit() and int(length) <= MAX_DRAINED_BYTES:
        with contextlib.suppress(requests.RequestException):
            response.content  # noqa: B018 - reading is the point


@contextlib.contextmanager
def _exclusive(out_dir: Path):
    """One download per folder at a time: a second one would delete the first one's temporary files."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; the caller must not run two at once
        yield
        return
    lock_path = out_dir / "Flickr" / LOCK_NAME
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(
                f"another `labelspace download` is writing to {out_dir} (it holds {lock_path}): "
                "wait for it to finish or stop it, then rerun"
            ) from None
        try:
            yield
        finally:
            lock_path.unlink(missing_ok=True)  # keep the DVC output free of it


def _check_settings(size: str, workers: int, mirror: str | None, timeout: float, retries: int, backoff: float) -> None:
    if size not in FALLBACK_ORDER:
        raise ValueError(f"size {size!r} is not one of {', '.join(SIZES)}")
    if workers < 1 or retries < 0 or timeout <= 0 or backoff < 0:
        raise ValueError(f"need workers >= 1, retries >= 0, timeout > 0, backoff >= 0; got "
                         f"workers={workers} retries={retries} timeout={timeout} backoff={backoff}")
    if mirror and (urlsplit(mirror).scheme not in ("http", "https") or not urlsplit(mirror).netloc):
        raise ValueError(f"mirror {mirror!r} must be a base URL such as http://mirror.example:8080")


def download_nuswide(
    urls_file: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    size: str,
    workers: int,
    mirror: str | None,
    timeout: float,
    retries: int,
    backoff: float,
    min_bytes: int,
    placeholder_sha256: tuple[str, ...] | list[str],
    retry_failed: bool = False,
    report_path: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Download every image of a NUS-WIDE-urls.txt under out_dir/Flickr; return the report (also written
    as JSON to report_path, default out_dir/download-report.json). See the module docstring for outcomes.
    The settings are the fields of params.yaml's `download` section (labelspace.config.DownloadConfig)."""
    _check_settings(size, workers, mirror, timeout, retries, backoff)
    rows, malformed = parse_urls_file(urls_file)
    out_dir = Path(out_dir)
    report_path = Path(report_path) if report_path else out_dir / "download-report.json"
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    tally = _Tally()
    for bad in malformed:
        tally.add(bad.line, None, RowResult("malformed", detail=f"{bad.reason}: {bad.text}"))
    unique: dict[str, UrlRow] = {}
    for row in rows:
        if row.relpath in unique:
            tally.add(row.line, row.relpath, RowResult("duplicate"))
        else:
            unique[row.relpath] = row
    fetcher = _Fetcher(out_dir, FALLBACK_ORDER[size], mirror, timeout, retries, backoff, min_bytes,
                       frozenset(h.lower() for h in placeholder_sha256), pool_size=8,
                       remembered={} if retry_failed else _permanent_failures(report_path))
    settings = {"size": size, "fallback_order": list(FALLBACK_ORDER[size]), "workers": workers,
                "mirror": mirror, "timeout": timeout, "retries": retries, "backoff": backoff,
                "min_bytes": min_bytes, "placeholder_sha256": sorted(fetcher.placeholder_sha256)}
    interrupted = False
    with _exclusive(out_dir):
        stale = remove_stale_temp_files(out_dir)
        if stale:
            log.info("removed %d temporary files left by an interrupted run", stale)
        try:
            _run_pool(fetcher, list(unique.values()), workers, tally, progress)
        except BaseException:  # Ctrl-C or a bug: the report says the run did not finish
            interrupted = True
            raise
        finally:
            report = {
                "urls_file": str(urls_file), "out_dir": str(out_dir), "settings": settings,
                "interrupted": interrupted, "lines": len(rows) + len(malformed), "images": len(unique),
                "valid_images": tally.counts["downloaded"] + tally.counts["present"],
                "failed": len(tally.failures), "counts": tally.counts,
                "downloaded_by_size": tally.by_size, "fell_back": tally.counts["downloaded"] - tally.by_size[size],
                "remembered_failures": tally.remembered, "http_requests": fetcher.requests_made,
                "stale_temp_files_removed": stale, "seconds": round(time.monotonic() - started, 3),
                "failures": sorted(tally.failures, key=lambda f: f["line"]),
            }
            write_report(report, report_path)
    return report


@dataclass
class _Tally:
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    by_size: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SIZES, 0))
    failures: list[dict[str, Any]] = field(default_factory=list)
    remembered: int = 0

    def add(self, line: int, path: str | None, result: RowResult) -> None:
        self.counts[result.outcome] += 1
        if result.size:
            self.by_size[result.size] += 1
        self.remembered += result.remembered
        if result.outcome in FAILURES:
            self.failures.append({"line": line, "url": result.url, "path": path,
                                  "outcome": result.outcome, "detail": result.detail})


def _run_pool(fetcher: _Fetcher, rows: list[UrlRow], workers: int, tally: _Tally, progress: bool) -> None:
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="nuswide-download")
    pending: dict[Any, UrlRow] = {}
    todo = iter(rows)
    bar = progress_bar(None, total=len(rows), unit="img", desc="NUS-WIDE images", disable=not progress, smoothing=0.05)
    try:
        while True:
            # A bounded window of futures: all 270k at once would cost hundreds of MB.
            while len(pending) < 4 * workers and (row := next(todo, None)) is not None:
                pending[pool.submit(fetcher.fetch_row, row)] = row
            if not pending:
                return
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                row = pending.pop(future)
                tally.add(row.line, row.relpath, future.result())
            bar.update(len(done))
            ok = tally.counts["downloaded"] + tally.counts["present"]
            bar.set_postfix(ok=ok, failed=len(tally.failures), refresh=False)
    except BaseException:
        fetcher.stop.set()  # running downloads end after their current request
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()


def _permanent_failures(report_path: Path) -> dict[str, dict[str, Any]]:
    """Failures of the previous run that a retry cannot fix, by path, so a rerun does not refetch them."""
    if not report_path.is_file():
        return {}
    try:
        failures = json.loads(report_path.read_text(encoding="utf-8"))["failures"]
        return {f["path"]: f for f in failures if f["path"] and f["url"] and f["outcome"] not in TRANSIENT}
    except (ValueError, KeyError, TypeError) as e:
        log.warning("ignoring unreadable previous report %s (%s): every failure is tried again", report_path, e)
        return {}


def write_report(report: dict[str, Any], path: str | os.PathLike) -> None:
    """Atomically, so a reader (or DVC) never sees half a report."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)

