"""Step: train one head (the label space or the BCE baseline) with labelspace.training.fit.fit_head."""

from typing import Annotated

import numpy as np
import pandas as pd
from zenml import log_metadata, step

from labelspace.config import LossConfig, ModelConfig, TrainConfig
from labelspace.model.bundle import TrainedModel
from labelspace.steps.materializers import TrainedModelMaterializer


@step(experiment_tracker=True, output_materializers=TrainedModelMaterializer)
def train(
    manifest: pd.DataFrame, labels: list[str], label_vectors: np.ndarray, prepared_data: dict, head: str,
    model: ModelConfig, loss: LossConfig, train_config: TrainConfig, held_out: list[str], resume: bool = True,
) -> Annotated[TrainedModel, "model"]:
    """`held_out` labels never train; checkpoints go to train_config.checkpoint_dir (absolute), and
    `resume: false` (`labelspace run --no-cache`) ignores them."""
    from labelspace.data.prepared import prepared
    from labelspace.lifecycle.tracking import log_training
    from labelspace.training.fit import fit_head

    logger = log_training(head, {"model": model, "loss": loss, "train": train_config})
    fit = fit_head(head, model, loss, train_config, manifest, labels, label_vectors, prepared(prepared_data).images(),
                   dataset_version=prepared(prepared_data).version, held_out=held_out,
                   checkpoint_dir=train_config.checkpoint_dir, resume=resume, on_epoch=logger.on_epoch)
    logger.calibration(fit.model.calibration)
    logger.open_words(fit.open_words)
    final = fit.model.history[-1] if fit.model.history else {}
    log_metadata(metadata={"head": head, "resumed_from_epoch": fit.resumed_from_epoch, "note": fit.note,
                           **{f"open_words_{k}": v for k, v in fit.open_words.items()},
                           "n_train_images": fit.n_train_images, "n_val_images": fit.n_val_images,
                           "torch_threads": fit.threads, "train_processes": fit.processes,
                           **{f"seconds_{k}": v for k, v in fit.seconds.items()},
                           **{f"final_{k}": v for k, v in final.items() if k != "epoch"}})
    return fit.model
