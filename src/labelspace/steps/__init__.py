"""ZenML steps: thin typed adapters over the labelspace library, one per file."""

import logging


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
