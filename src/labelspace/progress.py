"""Progress reporting that reads well in a terminal and in a log.

`progress(iterable, desc=...)` is a drop-in for the `tqdm(...)` calls of the package:

* stderr is a terminal (and TQDM_DISABLE is unset): a tqdm bar, as before;
* otherwise (a DVC stage, a ZenML step, CI, `... 2> log`): a `LogProgress` that writes a few plain
  lines to the `labelspace.progress` logger, never a carriage-return update: one at the start with
  the total, one when a quarter of the total is crossed (at most one a second) or after `interval`
  seconds without a line, and one at the end with the count, elapsed time, rate and last postfix;
* `LABELSPACE_PROGRESS=bar|log|off` overrides the choice (`off`: a `NoProgress`, silent).

Both kinds share the interface the package uses: iteration, `update(n)`, `set_postfix(**values)`,
`set_postfix_str(s)`, `set_description(desc)`, `close()`, `n`, `total`, and `with ... as bar:`.
The lines are INFO records: the CLI's logging set-up shows them, and a library caller decides
where they go like any other log record.

    for batch in progress(batches, desc="epoch 3/10", unit="batch"):
        ...
    with progress(None, desc="NUS-WIDE images", total=len(rows), unit="img") as bar:
        bar.update(len(done))
        bar.set_postfix(ok=ok, failed=failed)
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

ENV = "LABELSPACE_PROGRESS"
MODES = ("bar", "log", "off")
INTERVAL = 60.0  # most seconds between two lines of a long loop (LogProgress's default)
MIN_GAP = 1.0  # fewest seconds between two lines written for crossing a quarter
FALSE_WORDS = frozenset({"", "0", "false", "no", "off"})

logger = logging.getLogger("labelspace.progress")
_now = time.monotonic  # replaced by the tests' fake clock
_warned: set[str] = set()


def progress_mode(stream: Any = None) -> str:
    """'bar', 'log' or 'off': LABELSPACE_PROGRESS if set, else 'bar' when `stream` (default
    sys.stderr) is a terminal and TQDM_DISABLE is not set, else 'log'."""
    forced = os.environ.get(ENV, "").strip().lower()
    if forced in MODES:
        return forced
    if forced and forced not in _warned:  # a typo must not stop a long run: warn once, choose as if unset
        _warned.add(forced)
        logger.warning("ignoring %s=%r: expected one of %s", ENV, os.environ[ENV], ", ".join(MODES))
    stream = sys.stderr if stream is None else stream
    try:
        terminal = bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        terminal = False
    tqdm_disabled = os.environ.get("TQDM_DISABLE", "").strip().lower() not in FALSE_WORDS
    return "bar" if terminal and not tqdm_disabled else "log"


def progress(
    iterable: Iterable | None = None,
    *,
    desc: str,
    total: float | None = None,
    unit: str = "it",
    leave: bool = False,
    interval: float = INTERVAL,
    **kw: Any,
):
    """A progress reporter over `iterable` (or, with None, one advanced by `update`): a tqdm bar,
    a LogProgress or a NoProgress, chosen by progress_mode() (see the module docstring).
    `leave` and the other keywords (`smoothing`, `mininterval`, `file`, ...) are tqdm's and only
    matter to the bar; `disable=True` gives a NoProgress whatever the mode, as tqdm's would stay
    silent; `interval` only matters to the log. `initial` and `postfix` apply to every kind."""
    disable = kw.pop("disable", False)
    mode = "off" if disable is True else progress_mode(kw.get("file"))
    if mode == "bar":
        from tqdm import tqdm

        # disable=False explicitly: tqdm reads TQDM_DISABLE at import and would hide a bar asked for.
        return tqdm(iterable, desc=desc, total=total, unit=unit, leave=leave, disable=False, **kw)
    cls = LogProgress if mode == "log" else NoProgress
    return cls(iterable, desc=desc, total=total, unit=unit, interval=interval,
               initial=kw.get("initial", 0), postfix=kw.get("postfix"))


class LogProgress:
    """tqdm's interface, written as a few plain log lines (see the module docstring)."""

    def __init__(
        self,
        iterable: Iterable | None = None,
        *,
        desc: str,
        total: float | None = None,
        unit: str = "it",
        interval: float = INTERVAL,
        initial: float = 0,
        postfix: Mapping[str, Any] | str | None = None,
        log: logging.Logger | None = None,
    ) -> None:
        if total is None and iterable is not None:
            try:
                total = len(iterable)  # type: ignore[arg-type]
            except (TypeError, AttributeError):
                total = None
        self.iterable = iterable
        self.desc = desc
        self.total = total
        self.unit = unit
        self.interval = interval
        self.n = initial
        self.postfix = ""
        self.log = log or logger
        self.closed = False
        self._stopped = False  # the iteration ended early: an exception or a `break`
        self._started = self._last_line = _now()
        self._quarter = self._quarter_of(initial)
        if isinstance(postfix, Mapping):
            self.set_postfix(postfix)
        elif postfix is not None:
            self.set_postfix_str(str(postfix))
        self._start_line()

    # --- tqdm's interface -----------------------------------------------------------------------

    def __iter__(self) -> Iterator:
        if self.iterable is None:
            raise TypeError(f"{type(self).__name__} over no iterable: call update() instead")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        except BaseException:  # an exception in the loop body, or GeneratorExit on `break`
            self._stopped = True
            raise
        finally:
            self.close()

    def __len__(self) -> int:
        if self.total is None:
            raise TypeError(f"{self.desc!r} has no total")
        return int(self.total)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self._stopped = True
        self.close()

    def update(self, n: float = 1) -> bool:
        """Advance by n; True when that wrote a line."""
        self.n += n
        if self.closed or (self.total is not None and self.n >= self.total):
            return False  # the end line tells the rest
        now = _now()
        since = now - self._last_line
        quarter = self._quarter_of(self.n)
        if since >= self.interval or (quarter > self._quarter and since >= MIN_GAP):
            self._quarter = quarter
            self._last_line = now
            self._progress_line(now)
            return True
        return False

    def set_postfix(self, ordered_dict: Mapping[str, Any] | None = None, refresh: bool = True, **kwargs: Any) -> None:
        values = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{key}={_format_value(value)}" for key, value in values.items())

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = str(s)

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or ""

    set_description_str = set_description

    def refresh(self, *args: Any, **kwargs: Any) -> None:
        """Nothing to redraw: lines are written when due."""

    def clear(self, *args: Any, **kwargs: Any) -> None:
        """Nothing to clear: a log line stays written."""

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._end_line(_now())

    # --- the lines -------------------------------------------------------------------------------

    def _quarter_of(self, n: float) -> int:
        if not self.total or self.total <= 0:
            return 0
        return min(4, int(4 * n // self.total))

    def _emit(self, text: str) -> None:
        self.log.info("%s", text)

    def _count(self) -> str:
        if self.total is None:
            return f"{_format_count(self.n)} {self.unit}"
        return f"{_format_count(self.n)}/{_format_count(self.total)} {self.unit}"

    def _with_postfix(self, text: str) -> str:
        return f"{text}; {self.postfix}" if self.postfix else text

    def _start_line(self) -> None:
        total = f", {_format_count(self.total)} {self.unit}" if self.total is not None else ""
        done = f" ({_format_count(self.n)} done before)" if self.n else ""
        self._emit(f"{self.desc}: started{total}{done}")

    def _progress_line(self, now: float) -> None:
        elapsed = now - self._started
        parts = [self._count()]
        if self.total:
            parts[0] += f" ({100 * self.n / self.total:.0f}%)"
        parts.append(f"{_format_seconds(elapsed)} elapsed")
        rate = self.n / elapsed if elapsed > 0 else 0.0
        if rate > 0:
            parts.append(f"{_format_rate(rate)} {self.unit}/s")
            if self.total and self.total > self.n:
                parts.append(f"~{_format_seconds((self.total - self.n) / rate)} left")
        self._emit(self._with_postfix(f"{self.desc}: " + ", ".join(parts)))

    def _end_line(self, now: float) -> None:
        elapsed = now - self._started
        rate = f" ({_format_rate(self.n / elapsed)} {self.unit}/s)" if elapsed > 0 and self.n else ""
        unfinished = self._stopped or (self.total is not None and self.n < self.total)
        if unfinished:
            text = f"{self.desc}: stopped at {self._count()} after {_format_seconds(elapsed)}{rate}"
        else:
            text = f"{self.desc}: done, {_format_count(self.n)} {self.unit} in {_format_seconds(elapsed)}{rate}"
        self._emit(self._with_postfix(text))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.desc!r}, {self._count()})"


class NoProgress(LogProgress):
    """The same interface, silent (LABELSPACE_PROGRESS=off, or disable=True)."""

    def _emit(self, text: str) -> None:
        pass

    def update(self, n: float = 1) -> bool:
        self.n += n
        return False


def _format_count(n: float) -> str:
    return str(int(n)) if float(n).is_integer() else f"{n:.4g}"


def _format_value(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return str(value)
    return f"{value:.4g}" if math.isfinite(value) else str(value)


def _format_rate(rate: float) -> str:
    return f"{rate:.0f}" if rate >= 100 else f"{rate:.3g}"


def _format_seconds(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
