"""`labelspace` command line. Each subcommand is one module of this package, defining
`configure_parser(parser)` and `run_cli(args) -> int`; a module is imported only when its command
runs, so `labelspace --help` stays fast. Commands call the library; they hold no decisions."""

from __future__ import annotations

import argparse
import atexit
import importlib
import os
import sys
import threading

from labelspace.app import quiet_artifact_downloads, telemetry_off
from labelspace.console import configure_console_logging

# name -> (module under labelspace.cli, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "export-vectors": ("vectors", "export the packaged GloVe 6B 50-d vectors to word2vec format"),
    "sample": ("sample", "build the embedded Fashion-MNIST dataset in the NUS-WIDE layout"),
    "build-tags": ("build_tags", "build a real-tag dataset (OpenMoji) in the NUS-WIDE layout from an installed package"),
    "ingest": ("ingest", "read a NUS-WIDE-layout dataset into a parquet manifest and a report"),
    "preprocess": ("preprocess", "decode a manifest's images once into memory-mapped uint8 arrays"),
    "download": ("download", "fetch the images of a NUS-WIDE-urls.txt into the release layout"),
    "data-version": ("data_version", "print the DVC data version of a tracked path"),
    "setup-stack": ("setup_stack", "register the ZenML stack (local orchestrator, MLflow tracker and registry)"),
    "run": ("run", "run the training pipeline (ingest, embed, train, evaluate, register, gate)"),
    "compile": ("compile", "write the pipeline's Kubeflow Pipelines spec (KFP IR YAML) offline, and its schedule"),
    "report": ("report", "print the metrics table and how to open the MLflow UI"),
    "predict": ("predict", "batch inference of a registered model over images, into parquet with a report"),
    "promote": ("promote", "move an alias (default champion) to a registered model version, with a reason"),
    "retrain": ("retrain", "train if data, code or params changed, then the gate (the scheduler's command)"),
    "rollback": ("rollback", "champion back to the previous champion, recorded in the history"),
    "history": ("history", "the moves of champion in order: when, which version, who or what, why"),
    "audit": ("audit", "what produced a version; --diff A B; --dataset-version HASH"),
    "reproduce": ("reproduce", "retrain a version from its lineage in isolation and say whether the weights match"),
    "analyze": ("analyze", "the paper's analyses of a registered version, logged to its MLflow run"),
    "card": ("card", "the model card (Markdown and HTML) of a registered version, logged to its run"),
    "team": ("team", "run the team stack (PostgreSQL, S3, MLflow with logins) under .team/"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="labelspace", description=__doc__.split("\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chosen = next((a for a in sys.argv[1:] if a in COMMANDS), None)
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        if name == chosen:  # only the chosen command's module is imported
            importlib.import_module(f"labelspace.cli.{module}").configure_parser(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    telemetry_off()
    quiet_artifact_downloads()  # every command, audit and history too, not only those that set up a project
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    args = build_parser().parse_args()
    configure_console_logging(args.verbose)
    module = importlib.import_module(f"labelspace.cli.{COMMANDS[args.command][0]}")
    try:
        return int(module.run_cli(args) or 0)
    except (FileNotFoundError, ValueError, KeyError, RuntimeError) as e:
        print(f"labelspace {args.command}: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # MLflow's errors (bad version, unreachable server) without importing mlflow here
        if type(e).__name__ != "MlflowException":
            raise
        print(f"labelspace {args.command}: MLflow error: {e}", file=sys.stderr)
        return 2


FAST_EXIT_ENV = "LABELSPACE_FAST_EXIT"


def exit_promptly(code: int) -> None:
    """End the process now that the command has finished, without the interpreter's teardown.

    Leaving the usual way, Python clears every module and frees every object one at a time after
    the exit handlers have run; with torch, ZenML and MLflow loaded, that took 4.3-4.8 s at the end of
    a `labelspace run`, with nothing left to write. This does what that exit does first, in the same
    order: threading's exit hooks (a thread pool left open stops its idle workers) and a wait for
    every thread that is not a daemon; the atexit handlers (logging's flush and close, MLflow's and
    OpenTelemetry's shutdown, multiprocessing's joins, temporary folders' removal); a flush of the
    standard streams. Then it ends the process with `code`. Only the console script calls it, never
    an in-process `main()`; $LABELSPACE_FAST_EXIT=0 keeps the ordinary exit."""
    if os.environ.get(FAST_EXIT_ENV, "1") == "0":
        raise SystemExit(code)
    shutdown = getattr(threading, "_shutdown", None)  # what the interpreter itself calls first
    if shutdown is not None and threading.current_thread() is threading.main_thread():
        shutdown()  # threading's own exit hooks (idle pool workers told to stop), then every join
    else:
        for thread in threading.enumerate():
            if thread is not threading.current_thread() and not thread.daemon:
                thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed or broken pipe: nothing more can be written anyway
            pass
    os._exit(code)


def entry() -> None:
    """The `labelspace` console script: `main()`, then `exit_promptly`."""
    exit_promptly(main())


if __name__ == "__main__":
    entry()
