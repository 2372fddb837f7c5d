"""labelspace.progress: a tqdm bar on a terminal, a few plain log lines elsewhere, nothing when off."""

from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys

import pytest
from tqdm import tqdm

import labelspace.progress as progress_module
from labelspace.progress import LogProgress, NoProgress, progress, progress_mode

LOGGER = "labelspace.progress"


class FakeClock:
    """Stands in for time.monotonic: `step` seconds pass at every reading."""

    def __init__(self, step: float = 0.0) -> None:
        self.t, self.step = 1000.0, step

    def __call__(self) -> float:
        self.t += self.step
        return self.t


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _automatic(monkeypatch):
    """No override from the environment the tests run in."""
    monkeypatch.delenv("LABELSPACE_PROGRESS", raising=False)
    monkeypatch.delenv("TQDM_DISABLE", raising=False)


@pytest.fixture
def lines(caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)

    def messages() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == LOGGER]

    return messages


def test_log_mode_writes_few_plain_lines_for_a_long_loop(lines, capsys):
    bar = progress(range(10_000), desc="verify images", unit="img")
    assert isinstance(bar, LogProgress)  # pytest's stderr is no terminal
    seen = 0
    for _ in bar:
        seen += 1
        bar.set_postfix(ok=seen, failed=0)
    assert seen == 10_000
    out = lines()
    assert 2 <= len(out) <= 5  # start, at most one per quarter, end
    assert out[0] == "verify images: started, 10000 img"
    assert out[-1].startswith("verify images: done, 10000 img in ") and out[-1].endswith("; ok=10000, failed=0")
    captured = capsys.readouterr()
    assert all("\r" not in text for text in [*out, captured.err, captured.out])
    # The lines go to logging, no bar was drawn: tqdm's bar is "desc:  40%|####      | 4000/10000 [...]".
    # (Not "no 'verify images' in stderr": a handler another test left on the root logger, ZenML's console
    # one bound to a stream pytest has since closed, may print a record there as a logging error.)
    assert "%|" not in captured.err and "10000 [" not in captured.err


def test_log_lines_are_bounded_by_quarters_and_interval_on_a_slow_loop(lines, monkeypatch):
    monkeypatch.setattr(progress_module, "_now", FakeClock(step=0.1))  # one reading an item: 1000 s
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logging.getLogger(LOGGER).addHandler(handler)
    try:
        for _ in progress(range(10_000), desc="decode", unit="img", interval=200):
            pass
    finally:
        logging.getLogger(LOGGER).removeHandler(handler)
    out = lines()
    assert "\r" not in stream.getvalue() and stream.getvalue().count("\n") == len(out)
    percents = [line.split("(")[1].split("%")[0] for line in out[1:-1]]
    # start; a line at 25, 50 and 75 %, and one whenever 200 s passed without a line; end
    assert len(out) <= 2 + 3 + 1000 // 200
    assert {"25", "50", "75"} < set(percents)  # and the interval's: 20 %, 45 %, ...
    assert re.fullmatch(r"decode: 200\d/10000 img \(20%\), 3m20s elapsed, 10 img/s, ~13m20s left", out[1])
    assert out[-1].startswith("decode: done, 10000 img in 16m40s (10 img/s)")


def test_interval_lines_without_a_total(lines, monkeypatch):
    monkeypatch.setattr(progress_module, "_now", FakeClock(step=1.0))
    items = (i for i in range(200))  # no len(): no total, so no quarters
    for _ in progress(items, desc="stream", interval=60):
        pass
    out = lines()
    assert out[0] == "stream: started"
    assert 2 + 200 // 60 - 1 <= len(out) <= 2 + 200 // 60
    assert out[-1].startswith("stream: done, 200 it in ")


def test_manual_updates_postfix_and_a_stop_before_the_total(lines, monkeypatch):
    monkeypatch.setattr(progress_module, "_now", FakeClock(step=2.0))
    with progress(None, desc="NUS-WIDE images", total=100, unit="img", smoothing=0.05) as bar:
        for _ in range(6):
            bar.update(10)
        bar.set_postfix(ok=55, failed=5, loss=0.123456)
    out = lines()
    assert out[0] == "NUS-WIDE images: started, 100 img"
    assert any(line.startswith("NUS-WIDE images: 30/100 img (30%)") for line in out)
    assert out[-1].startswith("NUS-WIDE images: stopped at 60/100 img after ")
    assert out[-1].endswith("; ok=55, failed=5, loss=0.1235")
    bar.close()  # a second close writes nothing
    assert len(lines()) == len(out)


def test_break_and_exception_end_with_stopped(lines):
    for i in progress(range(10), desc="broken"):
        if i == 3:
            break
    assert lines()[-1].startswith("broken: stopped at 3/10 it")
    with pytest.raises(RuntimeError):
        for i in progress(iter(range(10)), desc="failing"):
            if i == 5:
                raise RuntimeError("boom")
    assert lines()[-1].startswith("failing: stopped at 5 it")


def test_forced_bar_is_a_tqdm_even_off_a_terminal(monkeypatch):
    monkeypatch.setenv("LABELSPACE_PROGRESS", "bar")
    monkeypatch.setenv("TQDM_DISABLE", "1")  # the explicit choice wins over it
    stream = io.StringIO()
    bar = progress(range(50), desc="epoch 1/2", unit="batch", file=stream, mininterval=0)
    assert isinstance(bar, tqdm) and not bar.disable
    assert sum(1 for _ in bar) == 50
    assert "epoch 1/2" in stream.getvalue() and "\r" in stream.getvalue()  # a real bar


def test_off_gives_nothing_but_keeps_the_interface(monkeypatch, lines, capsys):
    monkeypatch.setenv("LABELSPACE_PROGRESS", "off")
    bar = progress(range(1000), desc="quiet", total=1000)
    assert isinstance(bar, NoProgress)
    assert sum(1 for _ in bar) == 1000 and bar.n == 1000
    manual = progress(None, desc="quiet too", total=5)
    manual.update(5)
    manual.set_postfix(ok=5)
    manual.set_description("renamed")
    manual.close()
    captured = capsys.readouterr()
    assert lines() == [] and captured.err == "" and captured.out == ""


def test_disable_true_is_silent_in_every_mode(monkeypatch, lines):
    for mode in ("bar", "log", ""):
        monkeypatch.setenv("LABELSPACE_PROGRESS", mode)
        bar = progress(range(3), desc="small", disable=True)
        assert isinstance(bar, NoProgress) and list(bar) == [0, 1, 2]
    assert lines() == []


def test_automatic_choice_follows_the_terminal_and_tqdm_disable(monkeypatch):
    assert progress_mode(Terminal()) == "bar"
    assert progress_mode(io.StringIO()) == "log"
    assert isinstance(progress(range(2), desc="tty", file=Terminal()), tqdm)
    monkeypatch.setenv("TQDM_DISABLE", "1")
    assert progress_mode(Terminal()) == "log"
    monkeypatch.setenv("TQDM_DISABLE", "0")
    assert progress_mode(Terminal()) == "bar"
    monkeypatch.setenv("LABELSPACE_PROGRESS", "LOG")
    assert progress_mode(Terminal()) == "log"


def test_unknown_mode_warns_once_and_chooses_automatically(monkeypatch, caplog):
    monkeypatch.setattr(progress_module, "_warned", set())
    monkeypatch.setenv("LABELSPACE_PROGRESS", "fancy")
    caplog.set_level(logging.WARNING, logger=LOGGER)
    assert progress_mode(Terminal()) == "bar" and progress_mode(io.StringIO()) == "log"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["ignoring LABELSPACE_PROGRESS='fancy': expected one of bar, log, off"]


@pytest.mark.parametrize("mode, expected", [("log", "False"), ("bar", "True")])
def test_mlflow_draws_its_artifact_bars_only_where_ours_are_bars(mode, expected, repo_root, tmp_path):
    # A real process as a command starts: prepare_environment, then MLflow reads its own switch.
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"}
    env.update(LABELSPACE_PROGRESS=mode, LABELSPACE_PARAMS=str(repo_root / "params.yaml"),
               ZENML_CONFIG_PATH=str(tmp_path / "zenml"))
    code = ("from labelspace.app import prepare_environment; prepare_environment(); "
            "from mlflow.environment_variables import MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR as v; print(v.get())")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == expected
