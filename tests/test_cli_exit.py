"""The console script ends the process without the interpreter's teardown (labelspace.cli.exit_promptly),
after doing everything an ordinary exit does first: joining threads, running atexit handlers, flushing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

PROGRAM = """
import atexit, sys, threading, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from labelspace.cli import exit_promptly
out = Path(sys.argv[1])
def late_writer():
    time.sleep(0.5)
    (out / "thread.txt").write_text("joined")
threading.Thread(target=late_writer).start()  # not a daemon: an ordinary exit waits for it
pool = ThreadPoolExecutor(2)  # never shut down: its idle workers stop only when told at exit
pool.submit(time.sleep, 0.1)
atexit.register(lambda: (out / "atexit.txt").write_text("ran after " + (out / "thread.txt").read_text()))
print("buffered, no newline", end="")  # a pipe is block-buffered: only a flush writes this
print("to stderr", end="", file=sys.stderr)
exit_promptly(3)
print("never reached")
"""


@pytest.mark.parametrize("fast", ["1", "0"])
def test_exit_promptly_joins_threads_runs_atexit_flushes_and_keeps_the_code(tmp_path: Path, fast: str):
    proc = subprocess.run([sys.executable, "-c", PROGRAM, str(tmp_path)], capture_output=True, text=True,
                          env={**os.environ, "LABELSPACE_FAST_EXIT": fast}, timeout=120)
    assert proc.returncode == 3
    assert proc.stdout == "buffered, no newline"
    assert proc.stderr.endswith("to stderr")
    assert (tmp_path / "atexit.txt").read_text() == "ran after joined"


def test_the_console_module_exits_with_the_commands_code_and_message(tmp_path: Path):
    proc = subprocess.run([sys.executable, "-m", "labelspace", "data-version", str(tmp_path / "missing")],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "labelspace data-version: error:" in proc.stderr
