"""`labelspace` command line. Each subcommand lives in the module that does the work, which
defines `configure_parser(parser)` and `run_cli(args) -> int`; modules are imported only when
their command runs, so `labelspace --help` stays fast."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "export-vectors": ("labelspace.word_vectors_cli", "export the packaged GloVe 6B 50-d vectors to word2vec format"),
    "sample": ("labelspace.sample", "build the embedded Fashion-MNIST dataset in the NUS-WIDE layout"),
    "ingest": ("labelspace.nuswide", "read a NUS-WIDE-layout dataset into a parquet manifest and a report"),
    "preprocess": ("labelspace.preprocess", "decode a manifest's images once into memory-mapped uint8 arrays"),
    "download": ("labelspace.download_cli", "fetch the images of a NUS-WIDE-urls.txt into the release layout"),
    "data-version": ("labelspace.data_version", "print the DVC data version of a tracked path"),
    "setup-stack": ("pipelines.stack", "register the ZenML stack (local orchestrator, MLflow tracker and registry)"),
    "run": ("pipelines.run", "run the training pipeline (ingest, embed, train, evaluate, register)"),
    "report": ("labelspace.report", "print the metrics table and how to open the MLflow UI"),
    "promote": ("labelspace.registry", "move an alias (default champion) to a registered model version"),
}

_TELEMETRY_OFF = {
    "ZENML_ANALYTICS_OPT_IN": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "DVC_NO_ANALYTICS": "1",
    "HF_HUB_OFFLINE": "1",
}


def telemetry_off() -> None:
    for key, value in _TELEMETRY_OFF.items():
        os.environ.setdefault(key, value)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="labelspace", description=__doc__.split("\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chosen = next((a for a in sys.argv[1:] if a in COMMANDS), None)
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        if name == chosen:  # only the chosen command's module is imported
            importlib.import_module(module).configure_parser(p)
    return parser


def _add_code_root_to_path() -> None:
    """steps/ and pipelines/ live beside src/ in the checkout, outside the installed package."""
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[2])
    if root not in sys.path:
        sys.path.insert(0, root)


def main(argv: list[str] | None = None) -> int:
    telemetry_off()
    _add_code_root_to_path()
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    args = build_parser().parse_args()
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    # A level on the handler too: libraries that log at DEBUG on their own loggers propagate here.
    handler.setLevel(logging.DEBUG if args.verbose else logging.INFO)
    logging.basicConfig(level=handler.level, handlers=[handler])
    module = importlib.import_module(COMMANDS[args.command][0])
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


if __name__ == "__main__":
    raise SystemExit(main())
