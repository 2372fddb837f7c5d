"""The console of a `labelspace` command: one handler on the root logger, `LEVEL message` on stderr.

Every log record a person reads in a terminal or in a DVC or CI log goes through this one handler.
ZenML adds a console handler of its own to the root logger when it is imported (stdout, coloured),
which printed each record a second time under every command that runs the pipeline: the modules
that import ZenML call `keep_one_console_handler()` right after, so the other one goes and the
handlers that store logs elsewhere (ZenML's step logs) stay. A program that uses the library
without the command line sets up logging its own way: nothing is removed there.
"""

from __future__ import annotations

import logging


class ConsoleHandler(logging.StreamHandler):
    """labelspace's console handler (stderr); the type marks it as the one a command installed."""


def configure_console_logging(verbose: bool = False) -> None:
    """The root logger writes `LEVEL message` to stderr at INFO (DEBUG when `verbose`)."""
    handler = ConsoleHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    # A level on the handler too: libraries that log at DEBUG on their own loggers propagate here.
    handler.setLevel(logging.DEBUG if verbose else logging.INFO)
    logging.basicConfig(level=handler.level, handlers=[handler])
    # The package's own records (one line per epoch, per stage) pass whatever level ZenML gives the root.
    logging.getLogger("labelspace").setLevel(handler.level)


def keep_one_console_handler() -> None:
    """Where a command installed a ConsoleHandler, remove every other handler of the root logger that
    writes to a console stream; files and handlers that store records elsewhere (ZenML's step logs) stay."""
    root = logging.getLogger()
    if not any(isinstance(h, ConsoleHandler) for h in root.handlers):
        return
    for handler in [h for h in root.handlers if isinstance(h, logging.StreamHandler)
                    and not isinstance(h, (ConsoleHandler, logging.FileHandler))]:
        root.removeHandler(handler)
