"""fit_head: everything training one head decides, from an ingested dataset to a `TrainedModel`.

The decisions live here, not in a pipeline step: which labels train (the held-out zero-shot labels
never do), the validation split, the checkpoint key, validation metrics every epoch, and the
thresholded decision fitted on validation after training. No ZenML and no MLflow: progress and
metrics leave through the `on_epoch` callback, so a ZenML step, a study script and a test call the
same function.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from labelspace.config import LossConfig, ModelConfig, TrainConfig
from labelspace.data.splits import split_indices, target_matrix
from labelspace.evaluation.calibration import fit_calibration
from labelspace.evaluation.metrics import mean_average_precision, topk_metrics
from labelspace.evaluation.zero_shot import unseen_shift_for_cost
from labelspace.model.bundle import TrainedModel
from labelspace.model.inference import extract_features, scores_from_features
from labelspace.model.spec import ModelSpec
from labelspace.training.loop import train_model

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HeldOut:
    """The zero-shot split of the label set: `labels` are held out of training, `not_concepts` were
    asked for but are no concept of this dataset (skipped, and reported)."""

    labels: list[str]
    not_concepts: list[str]
    rule: str = "listed"


def held_out_labels(wanted: Sequence[str] | str, concepts: Sequence[str], *, fraction: float = 0.2,
                    seed: int = 0) -> HeldOut:
    """The labels `evaluate.zero_shot_labels` holds out. A list names them (names that are no concept
    are set aside in `not_concepts`); "auto" draws round(fraction x concepts) of them (at least 1,
    and never all but one) with `seed`, from the sorted concept names, so the draw depends on the
    dataset's concepts and the seed only, never on file order."""
    if isinstance(wanted, str):
        if wanted != "auto":
            raise ValueError(f"evaluate.zero_shot_labels = {wanted!r}: use auto or a list of concept names")
        names = sorted(set(concepts))
        if len(names) < 3:
            return HeldOut(labels=[], not_concepts=[], rule=f"auto: {len(names)} concepts, too few to hold any out")
        n = min(len(names) - 2, max(1, round(fraction * len(names))))
        order = np.random.default_rng(seed).permutation(len(names))
        chosen = sorted(names[i] for i in order[:n])
        return HeldOut(labels=chosen, not_concepts=[],
                       rule=f"auto: {n} of {len(names)} concepts ({fraction:.0%}), seed {seed}")
    present = set(concepts)
    return HeldOut(labels=[label for label in wanted if label in present],
                   not_concepts=[label for label in wanted if label not in present])


def held_out_for(evaluate, concepts: Sequence[str], unseen: Sequence[str] = ()) -> HeldOut:
    """`held_out_labels` with an `EvaluateConfig`'s list or rule, share and seed. `unseen`: the label
    set's own unseen labels (ingest.labels nuswide-zsl: NUS-WIDE's 81 concepts), held out as the
    protocol defines them; `auto` is then the only rule (a list would train on some of them)."""
    if unseen:
        if evaluate.zero_shot_labels != "auto":
            raise ValueError("evaluate.zero_shot_labels must be auto with a label set that has its own unseen labels "
                             f"(ingest.labels nuswide-zsl: the {len(unseen)} concepts are unseen by the protocol); "
                             f"got {evaluate.zero_shot_labels!r}")
        return HeldOut(labels=list(unseen), not_concepts=[],
                       rule=f"the label set's own {len(unseen)} unseen labels")
    return held_out_labels(evaluate.zero_shot_labels, concepts, fraction=evaluate.zero_shot_fraction,
                           seed=evaluate.zero_shot_seed)


def training_labels(labels: Sequence[str], label_vectors: np.ndarray,
                    held_out: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """The labels a head trains on (every label but the held-out ones) and their vectors."""
    held = set(held_out)
    keep = [i for i, label in enumerate(labels) if label not in held]
    if not keep:
        raise ValueError(f"every label ({', '.join(labels)}) is held out for zero-shot: nothing to train on; "
                         "shorten evaluate.zero_shot_labels in params.yaml")
    return [labels[i] for i in keep], np.asarray(label_vectors)[keep]


def checkpoint_data_key(dataset_version: str, labels: Sequence[str], vectors: np.ndarray,
                        splits: dict[str, np.ndarray], image_shape: tuple[int, ...]) -> str:
    """Everything the weights depend on besides the configs: a checkpoint of other data, labels,
    vectors, resolution or split is never resumed from."""
    return hashlib.sha256(b"\0".join([
        dataset_version.encode(), "\n".join(labels).encode(), np.ascontiguousarray(vectors).tobytes(),
        splits["train"].tobytes(), splits["val"].tobytes(), str(tuple(image_shape)).encode(),
    ])).hexdigest()


@dataclass
class FitResult:
    model: TrainedModel
    resumed_from_epoch: int
    n_train_images: int
    n_val_images: int
    note: str = ""  # why there is no thresholded decision, when there is none
    threads: int = 0  # torch threads it trained at (CPU)
    seconds: dict[str, float] = field(default_factory=dict)  # train_model's phases, and calibration
    processes: int = 1  # data-parallel processes it trained on (train.devices x train.nodes)
    open_words: dict[str, float] = field(default_factory=dict)  # the offset fitted on validation (_fit_open_words)


class Validation:
    """Validation metrics after every epoch (train_model's `validate`), on images[val_idx]. A class,
    not a closure, so that it can be pickled: with train.devices > 1 it runs in rank 0's process
    (labelspace.training.distributed sends memory-mapped images by reference)."""

    def __init__(self, images, val_idx: np.ndarray, val_targets: np.ndarray, vectors: np.ndarray,
                 frozen_backbone: bool, batch_size: int) -> None:
        self.images, self.val_idx, self.val_targets, self.vectors = images, val_idx, val_targets, vectors
        self.frozen_backbone, self.batch_size = frozen_backbone, batch_size
        self.features: torch.Tensor | None = None
        # The scores of the last validation, with the epoch they scored: after the last epoch the
        # weights do not change again, so calibration reuses them instead of another pass.
        self.last_epoch: int | None = None
        self.last_scores: np.ndarray | None = None

    def scores(self, model: torch.nn.Module) -> np.ndarray:
        device = next(model.parameters()).device
        if not self.frozen_backbone or self.features is None:  # a frozen backbone's features never change
            self.features = extract_features(model, self.images, self.val_idx, device, self.batch_size,
                                             desc="val features")
        return scores_from_features(model, self.features, self.vectors, device)

    def __call__(self, model: torch.nn.Module, epoch: int) -> dict[str, float]:
        if len(self.val_targets) == 0 or not self.val_targets.any():
            return {}
        scores = self.scores(model)
        self.last_epoch, self.last_scores = epoch, scores
        top3 = topk_metrics(scores, self.val_targets, 3)
        return {"val_mAP": mean_average_precision(scores, self.val_targets), "val_top3_C-F1": top3["C-F1"],
                "val_top3_O-F1": top3["O-F1"]}


def fit_head(
    head: str,
    model_config: ModelConfig,
    loss_config: LossConfig,
    train_config: TrainConfig,
    manifest: pd.DataFrame,
    labels: Sequence[str],
    label_vectors: np.ndarray,
    images: np.ndarray,
    *,
    dataset_version: str,
    held_out: Sequence[str] = (),
    checkpoint_dir: str | Path | None = None,
    resume: bool = True,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> FitResult:
    """Train `head` ("labelspace" or "bce") on the train split of `manifest` (images: uint8 N,H,W,3
    aligned with it), validate every epoch, then fit the thresholded decision on validation."""
    train_labels, vectors = training_labels(labels, label_vectors, held_out)
    spec = ModelSpec.from_config(model_config, head=head, n_labels=len(train_labels), d=int(vectors.shape[1]),
                                 image_size=int(images.shape[1]))
    targets = target_matrix(manifest, train_labels)
    splits = split_indices(manifest, train_config.val_fraction, train_config.seed)
    val_targets = targets[splits["val"]]
    validate = Validation(images, splits["val"], val_targets, vectors, spec.freeze_backbone,
                          train_config.feature_batch_size)
    data_key = checkpoint_data_key(dataset_version, train_labels, vectors, splits, images.shape)
    result = train_model(
        spec, loss_config, train_config, images, targets, splits["train"], vectors,
        pretrained=model_config.pretrained, weights_path=model_config.weights_path, data_key=data_key,
        resume=resume, checkpoint_dir=checkpoint_dir, on_epoch=on_epoch, validate=validate,
    )
    calibration, note, start = {}, "", time.perf_counter()
    # With train.devices > 1 validation ran in rank 0's process: its scores are not here, so scored again.
    final_scores = validate.last_scores if validate.last_epoch == train_config.epochs else None
    try:
        calibration = fit_calibration(final_scores if final_scores is not None else validate.scores(result.model),
                                      val_targets, head=head)
    except ValueError as e:  # e.g. no validation split: the model still ranks, without a threshold
        note = f"no thresholded decision: {e}"
        log.warning("%s: %s", head, note)
    open_words: dict[str, float] = {}
    if getattr(result.model, "open_words", "raw") != "raw":
        held = set(held_out)
        held_vectors = np.asarray(label_vectors)[[i for i, label in enumerate(labels) if label in held]]
        note, open_words = _fit_open_words(result.model, vectors, validate, final_scores, note, model_config,
                                           held_vectors)
    seconds = {**result.seconds, "calibration": time.perf_counter() - start}
    trained = TrainedModel(spec=spec, labels=train_labels, label_vectors=vectors,
                           state_dict=result.model.state_dict(), history=result.history,
                           calibration=calibration, provenance=training_provenance(result, train_config.seed))
    return FitResult(model=trained, resumed_from_epoch=result.resumed_from_epoch,
                     n_train_images=len(splits["train"]), n_val_images=len(splits["val"]), note=note,
                     threads=result.threads, seconds=seconds, processes=result.processes, open_words=open_words)


REFERENCE_IMAGES = 256  # validation images whose A a "standardized" model carries


def _fit_open_words(model, vectors: np.ndarray, validate: Validation, final_scores: np.ndarray | None,
                    note: str, config: ModelConfig, held_vectors: np.ndarray) -> tuple[str, dict[str, float]]:
    """Fit model.open_words on validation (labelspace.model.networks): "absent" takes δ, the median D
    of the absent training labels; "standardized" carries the head's A on the first REFERENCE_IMAGES
    validation images and config.open_words_* (offset κ, prior λ, ConSE's T, share β). Then, with
    held-out labels (`held_vectors`, (H, d)) and config.open_words_cost set, κ goes up from the configured
    value until the held-out words cost the training labels at most that much O-F1 in the validation
    images' joint top 3 (`unseen_shift_for_cost`; only the training labels' annotations are read).
    Without a validation split D stays raw for every word, and the note says so. Returns the note and
    what was fitted ({} for "absent")."""
    targets = validate.val_targets
    if len(targets) == 0 or (model.open_words == "absent" and targets.all()):
        log.warning("labelspace: no validation split: words that are no training label are measured raw")
        return (note + "; " if note else "") + f"open_words {model.open_words} not fitted: no validation split", {}
    if model.open_words == "absent":
        scores = final_scores if final_scores is not None else validate.scores(model)
        model.fit_open_words(torch.as_tensor(vectors), absent_distance=float(np.median(-scores[~targets.astype(bool)])))
        return note, {}
    device = next(model.parameters()).device
    calibrate = config.open_words_cost is not None and len(held_vectors) > 0
    if validate.features is not None:  # the final weights': the last epoch's pass, or fit_head's scoring after it
        feats = validate.features
    else:
        n = len(validate.val_idx) if calibrate else REFERENCE_IMAGES
        feats = extract_features(model, validate.images, validate.val_idx[:n], device, validate.batch_size,
                                 desc="validation features")
    model.eval()

    def fit(offset: float) -> None:
        with torch.no_grad():
            reference = model.from_features(feats[:REFERENCE_IMAGES].to(device)).float()
            model.fit_open_words(torch.as_tensor(vectors), reference_outputs=reference, offset=offset,
                                 prior=config.open_words_prior, conse=config.open_words_conse,
                                 share=config.open_words_share)

    fit(config.open_words_offset)
    fitted = {"fitted_offset": float(config.open_words_offset)}
    if calibrate:
        # Raising κ by Δ moves every such word's D back by Δ s (times the learned scale, if any) and
        # changes nothing else (networks): the search shifts these scores, in units of that, instead of
        # fitting again. (A held-out label whose vector is a training label's is ranked as that label.)
        unit = float(model.seen_scale[1]) * (float(model.log_scale.detach().exp()) if model.learn_scale else 1.0)
        scores = scores_from_features(model, feats, np.concatenate([vectors, held_vectors]), device) / unit
        found = unseen_shift_for_cost(scores[:, :len(vectors)], scores[:, len(vectors):], targets,
                                      config.open_words_cost)
        if found["shift"]:
            fit(config.open_words_offset + found["shift"])
            log.info("labelspace: open_words_offset %.2f -> %.2f: the %d held-out labels cost the training labels "
                     "%.1f points of validation top-3 O-F1 (at most %.1f)", config.open_words_offset,
                     config.open_words_offset + found["shift"], len(held_vectors), 100 * found["cost_before"],
                     100 * config.open_words_cost)
        fitted = {"fitted_offset": float(config.open_words_offset + found["shift"]),
                  **{f"val_{k}": v for k, v in found.items() if k != "shift"}}
    return note, fitted


def training_provenance(result, seed: int) -> dict:
    """What the weights came from besides data and params, recorded in the bundle at training time: the
    backbone's pretrained file, the seed, and the runtime (packages, device, threads; training.runtime)."""
    from labelspace.training.runtime import describe_runtime, installed_packages

    device = next(result.model.parameters()).device
    return {**backbone_provenance(result.model), "seed": seed,
            "runtime": describe_runtime(device, result.threads, result.processes), "packages": installed_packages()}


def backbone_provenance(model: torch.nn.Module) -> dict[str, str | None]:
    """Which pretrained file the backbone started from, and its hash (lineage of a registered version)."""
    from labelspace.model.backbones import file_sha256

    weights_file = model.backbone.weights_file
    return {"weights_file": str(weights_file) if weights_file else None, "weights_hash": file_sha256(weights_file)}
