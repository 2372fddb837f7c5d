"""ZenML steps: thin typed adapters over the labelspace library, one per file."""

import logging
from pathlib import Path

from labelspace.console import keep_one_console_handler


class _DropFastaiAutologWarning(logging.Filter):
    """ZenML's MLflow tracker disables the autologging of a fixed list of frameworks after every step,
    fastai among them; MLflow 3 has no fastai flavor, so each step warned twice about nothing. Only that
    message is dropped: a failure for any other framework is still logged."""

    MESSAGE = "Failed to disable MLflow autologging for the following frameworks: ['fastai']."

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != self.MESSAGE


logging.getLogger("zenml.integrations.mlflow.experiment_trackers.mlflow_experiment_tracker").addFilter(
    _DropFastaiAutologWarning()
)


def use_package_as_source_root() -> None:
    """ZenML resolves steps by module path from a source root; the folder holding the installed
    `labelspace` package is one wherever the command runs from (site-packages, or src/ in a checkout)."""
    from zenml.utils import source_utils

    import labelspace

    source_utils.set_custom_source_root(str(Path(labelspace.__file__).resolve().parents[1]))


# ZenML resolves a step's materializers when the step is defined: the source root must be set first.
use_package_as_source_root()
# Importing ZenML put its console handler on the root logger: under a command, labelspace's is the one.
keep_one_console_handler()
