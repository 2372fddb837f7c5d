"""The typed configuration: one frozen dataclass per params.yaml section, built in one place.

params.yaml is the only place a default lives. `load_config()` reads it once and checks it whole
before any work starts: a missing section or key, an unknown key, a value of the wrong type or out
of range is a `ConfigError` naming the key, the bad value, what is allowed, and the file and line.
Steps take their section's dataclass, so ZenML shows (and caches on) its real fields.

Longer than the project's usual 400 lines because every section of params.yaml is declared here with
its checks: that is the point of one typed config (a reader sees every key, its type and its allowed
values in one file).
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from labelspace.app import find_params_file, params_hash
from labelspace.choices import BACKBONES, LABEL_SETS, OPEN_WORDS
from labelspace.lifecycle.promotion_rules import metric_name_problem


class ConfigError(ValueError):
    """params.yaml is missing, unreadable or holds a value the project cannot use."""


# ---------------------------------------------------------------- the sections


@dataclass(frozen=True)
class SampleConfig:
    """The embedded dataset: Fashion-MNIST garments composed into canvases (labelspace.data.sample)."""

    source: str
    out: str
    seed: int
    n_train: int
    n_test: int
    canvas_size: int
    min_items: int
    max_items: int
    blank_fraction: float

    def check(self) -> dict[str, str]:
        problems = {}
        if self.canvas_size < 56:
            problems["canvas_size"] = "at least 56 (a 2x2 grid of 28 px cells)"
        if not 1 <= self.min_items <= 4:
            problems["min_items"] = "between 1 and 4"
        if not self.min_items <= self.max_items <= 4:
            problems["max_items"] = "between min_items and 4"
        if not 0 <= self.blank_fraction < 1:
            problems["blank_fraction"] = "in [0, 1)"
        problems.update(_at_least(self, 1, "n_train", "n_test"))
        return problems


@dataclass(frozen=True)
class VectorsConfig:
    """Word vectors for labels: a word2vec-format file (binary or text)."""

    path: str
    limit: int | None

    def check(self) -> dict[str, str]:
        return {} if self.limit is None or self.limit >= 1 else {"limit": "null (every word) or at least 1"}


@dataclass(frozen=True)
class EmbeddingConfig:
    """Label name -> word vector policy (labelspace.data.word_vectors)."""

    aliases: dict[str, str]

    def check(self) -> dict[str, str]:
        return {}


@dataclass(frozen=True)
class IngestConfig:
    dataset: str
    image_size: int
    cache_dir: str
    shard_size: int | None
    labels: str  # the label set read from the dataset (labelspace.choices.LABEL_SETS)

    def check(self) -> dict[str, str]:
        problems = _at_least(self, 8, "image_size")
        if self.shard_size is not None and self.shard_size < 1:
            problems["shard_size"] = "null (one array) or at least 1 image per shard"
        if self.labels not in LABEL_SETS:
            problems["labels"] = (f"one of {', '.join(LABEL_SETS)} (concepts: the dataset's concepts; nuswide-zsl: "
                                  "NUS-WIDE's zero-shot split, docs/nuswide.md)")
        return problems


@dataclass(frozen=True)
class ModelConfig:
    backbone: str
    pretrained: bool
    weights_path: str | None
    freeze_backbone: bool
    frozen_stages: int
    k: int
    dropout: float
    normalize: bool
    center_words: bool
    learn_scale: bool
    open_words: str
    open_words_offset: float
    open_words_prior: float  # standardized: the domain prior λ (labelspace.model.ranking)
    open_words_conse: int  # standardized: ConSE's T nearest training labels rank every other word; 0: D does
    open_words_share: float  # standardized: the shared prior β (labelspace.model.ranking.shared_prior); 0: none
    open_words_cost: float | None  # standardized, held-out labels: the most joint top-3 O-F1 they may cost on validation

    def check(self) -> dict[str, str]:
        problems = _at_least(self, 1, "k")
        if self.open_words_prior < 0:
            problems["open_words_prior"] = "0 (none) or more (in units of the training labels' spread of D)"
        if self.open_words_share < 0:
            problems["open_words_share"] = "0 (one offset whatever a request ranks) or more, e.g. 1"
        if self.open_words_cost is not None and not 0 <= self.open_words_cost < 1:
            problems["open_words_cost"] = "null (open_words_offset as given) or a share of O-F1 in [0, 1), e.g. 0.01"
        if self.open_words_conse < 0:
            problems["open_words_conse"] = "0 (D standardized) or a number of nearest training labels, e.g. 3"
        if self.frozen_stages < 0:
            problems["frozen_stages"] = "0 (the whole backbone trains) or more (the stem, then each stage of blocks)"
        if not 0 <= self.dropout < 1:
            problems["dropout"] = "in [0, 1)"
        if self.open_words not in OPEN_WORDS:
            problems["open_words"] = f"one of {', '.join(OPEN_WORDS)}"
        elif self.open_words == "absent" and not self.normalize:
            problems["open_words"] = "raw when model.normalize is false (absent needs D on [0, 1])"
        if self.backbone not in BACKBONES:
            problems["backbone"] = f"one of {', '.join(BACKBONES)}"
        return problems


LOSS_VARIANTS = ("paper", "pairwise", "sigmoid", "pairwise+sigmoid")


@dataclass(frozen=True)
class LossConfig:
    variant: str
    margin: float
    n_negatives: int | None
    threshold: float
    threshold_weight: float
    rank_weight: float
    units: str

    def check(self) -> dict[str, str]:
        problems = {}
        if self.variant not in LOSS_VARIANTS:
            problems["variant"] = f"one of {', '.join(LOSS_VARIANTS)}"
        if self.units not in ("span", "absolute"):
            problems["units"] = "span (margin and threshold in units of 1/rank of the training labels' span) or absolute"
        if self.n_negatives is not None and self.n_negatives < 1:
            problems["n_negatives"] = "null (every negative) or at least 1"
        for key in ("margin", "threshold_weight", "rank_weight"):
            if getattr(self, key) < 0:
                problems[key] = "0 or more"
        if "sigmoid" in self.variant and self.margin <= 0:
            problems["margin"] = "above 0 with a sigmoid loss (it is the sigmoid's temperature)"
        if self.rank_weight == 0 and self.threshold_weight == 0:
            problems["rank_weight"] = "above 0 when threshold_weight is 0 (the loss would be 0)"
        return problems


LR_DECAYS = ("cosine", "step", "none")


@dataclass(frozen=True)
class TrainConfig:
    seed: int
    epochs: int
    batch_size: int
    lr: float
    lr_decay: str
    weight_decay: float
    mirror: bool
    val_fraction: float
    device: str
    devices: int  # processes per node (one GPU each on CUDA); above 1, labelspace.training.distributed
    nodes: int  # machines taking part; devices x nodes processes share each global batch
    amp: bool
    feature_batch_size: int
    checkpoint_dir: str

    def check(self) -> dict[str, str]:
        problems = _at_least(self, 1, "epochs", "batch_size", "feature_batch_size", "devices", "nodes")
        processes = self.devices * self.nodes
        if processes > 1 and self.batch_size < processes:
            problems["batch_size"] = (f"at least train.devices x train.nodes ({processes}): the global batch "
                                      "is split across the processes")
        if processes > 1 and self.device.startswith("mps"):
            problems["devices"] = "1 on mps (torch.distributed has no backend for it): use device cpu or cuda"
        if not self.lr > 0:
            problems["lr"] = "above 0"
        if self.weight_decay < 0:
            problems["weight_decay"] = "0 or more"
        if self.lr_decay not in LR_DECAYS:
            problems["lr_decay"] = f"one of {', '.join(LR_DECAYS)}"
        if not 0 <= self.val_fraction < 1:
            problems["val_fraction"] = "in [0, 1)"
        if self.device != "auto" and not self.device.startswith(("cpu", "cuda", "mps")):
            problems["device"] = "auto, cpu, cuda or cuda:N"
        return problems


@dataclass(frozen=True)
class EvaluateConfig:
    top_k: list[int]
    report: str
    zero_shot_labels: list[str] | str
    zero_shot_fraction: float
    zero_shot_seed: int

    def check(self) -> dict[str, str]:
        if not self.top_k or any(k < 1 for k in self.top_k):
            return {"top_k": "a non-empty list of integers of at least 1, e.g. [3, 5]"}
        if isinstance(self.zero_shot_labels, str) and self.zero_shot_labels != "auto":
            return {"zero_shot_labels": "auto or a list of concept names, e.g. [sandal, shirt]"}
        if not 0 < self.zero_shot_fraction < 1:
            return {"zero_shot_fraction": "in (0, 1): the share of the concepts `auto` holds out"}
        return {}


@dataclass(frozen=True)
class RegisterConfig:
    model_name: str
    alias: str
    open_vocabulary_size: int

    def check(self) -> dict[str, str]:
        problems = {} if self.model_name.strip() else {"model_name": "a non-empty name"}
        if self.open_vocabulary_size < 0:
            problems["open_vocabulary_size"] = "0 (none) or more"
        if self.alias == "champion":
            problems["alias"] = "not champion: a new version is a challenger until it is promoted"
        return problems


@dataclass(frozen=True)
class ServingConfig:
    """Request limits of the served model (labelspace.serving, docs/serving.md), written into it at
    log time; at serve time each one can be overridden with LABELSPACE_SERVING_<KEY in capitals>."""

    max_image_pixels: int  # width x height of one image, read from its header before decoding
    max_request_pixels: int  # the sum over the images of one request
    max_image_bytes: int  # encoded bytes of one image (base64-decoded, or a file read on the server)
    max_images: int  # images in one request
    max_labels: int  # requested labels in one request

    def check(self) -> dict[str, str]:
        problems = _at_least(self, 1, *(f.name for f in fields(self)))
        if not problems and self.max_request_pixels < self.max_image_pixels:
            problems["max_request_pixels"] = f"at least max_image_pixels ({self.max_image_pixels}): one image must fit"
        return problems


DOWNLOAD_SIZES = ("large", "middle", "small", "original")


@dataclass(frozen=True)
class DownloadConfig:
    size: str
    workers: int
    mirror: str | None
    timeout: float
    retries: int
    backoff: float
    min_bytes: int
    placeholder_sha256: list[str]

    def check(self) -> dict[str, str]:
        problems = _at_least(self, 1, "workers")
        problems.update(_at_least(self, 0, "retries", "min_bytes", "backoff"))
        if self.size not in DOWNLOAD_SIZES:
            problems["size"] = f"one of {', '.join(DOWNLOAD_SIZES)}"
        if not self.timeout > 0:
            problems["timeout"] = "above 0"
        return problems


ANALYZE_BUDGETS = ("short", "full")


@dataclass(frozen=True)
class AnalyzeConfig:
    """`labelspace analyze` and `labelspace card` (labelspace.evaluation.analysis*, .card)."""

    out: str
    card_out: str
    top_k: int
    budget: str
    sweep_k: list[int]
    short_epochs: int
    short_lr: float
    committee_top_n: list[int]
    diversity_top: int
    tsne_min_labels: int
    map_images: int
    confusion_labels: int
    worst_images: int

    def check(self) -> dict[str, str]:
        problems = _at_least(self, 1, "top_k", "short_epochs", "diversity_top", "confusion_labels", "worst_images")
        problems.update(_at_least(self, 0, "map_images"))
        if self.budget not in ANALYZE_BUDGETS:
            problems["budget"] = f"one of {', '.join(ANALYZE_BUDGETS)}"
        if any(k < 1 for k in self.sweep_k):
            problems["sweep_k"] = "a list of integers of at least 1 (empty: no sweep), e.g. [10, 25, 50, 100]"
        if not self.committee_top_n or any(n < 1 for n in self.committee_top_n):
            problems["committee_top_n"] = "a non-empty list of integers of at least 1, e.g. [1, 3, 5]"
        if not self.short_lr > 0:
            problems["short_lr"] = "above 0"
        if self.tsne_min_labels < 4:
            problems["tsne_min_labels"] = "at least 4 (t-SNE needs a few points)"
        return problems


@dataclass(frozen=True)
class PromoteConfig:
    """The promotion gate, the pipeline's last step (labelspace.lifecycle.promotion_rules, docs/lifecycle.md).

    Metrics are keys of reports/metrics.json written with dots (`labelspace.top3.O-F1`,
    `labelspace.mAP`, `zero_shot.top1.O-F1`), fractions where higher is better.
    """

    auto: bool
    metrics: list[str]
    minimum: dict[str, float]
    max_regression: dict[str, float]

    def check(self) -> dict[str, str]:
        problems = {}
        bad = next((m for m in self.metrics if metric_name_problem(m)), None)
        if not self.metrics or bad is not None or len(set(self.metrics)) != len(self.metrics):
            problems["metrics"] = (f"a non-empty list of distinct metric names; {metric_name_problem(bad)}"
                                   if bad else "a non-empty list of distinct metric names, e.g. [labelspace.top3.O-F1]")
        for key in ("minimum", "max_regression"):
            rules = getattr(self, key)
            if any(m not in self.metrics for m in rules):
                problems[key] = f"a mapping whose keys are among promote.metrics ({', '.join(self.metrics)})"
            elif any(not 0 <= v <= 1 for v in rules.values()):
                problems[key] = "a mapping of metric -> a fraction in [0, 1]"
        return problems


def _at_least(section: Any, minimum: float, *keys: str) -> dict[str, str]:
    return {key: f"at least {minimum}" for key in keys if getattr(section, key) < minimum}


SECTIONS: dict[str, type] = {
    "sample": SampleConfig,
    "vectors": VectorsConfig,
    "embedding": EmbeddingConfig,
    "ingest": IngestConfig,
    "model": ModelConfig,
    "loss": LossConfig,
    "train": TrainConfig,
    "evaluate": EvaluateConfig,
    "register": RegisterConfig,
    "serving": ServingConfig,
    "download": DownloadConfig,
    "analyze": AnalyzeConfig,
    "promote": PromoteConfig,
}


@dataclass(frozen=True)
class Config:
    """Every section of params.yaml, typed; `path` is the file, `params` the raw mapping."""

    sample: SampleConfig
    vectors: VectorsConfig
    embedding: EmbeddingConfig
    ingest: IngestConfig
    model: ModelConfig
    loss: LossConfig
    train: TrainConfig
    evaluate: EvaluateConfig
    register: RegisterConfig
    serving: ServingConfig
    download: DownloadConfig
    analyze: AnalyzeConfig
    promote: PromoteConfig
    path: Path
    params: dict[str, Any]

    @property
    def root(self) -> Path:
        """The project folder: relative paths in params.yaml are relative to it."""
        return self.path.parent

    def resolve(self, path: str | os.PathLike) -> Path:
        p = Path(path)
        return (p if p.is_absolute() else self.root / p).resolve()

    @property
    def hash(self) -> str:
        return params_hash(self.params)

    def replace(self, **sections: Any) -> Config:
        """A copy with whole sections, or some of their fields, replaced: replace(train={"epochs": 1})."""
        changes = {}
        params = dict(self.params)
        for name, value in sections.items():
            current = getattr(self, name)
            new = dataclasses.replace(current, **value) if isinstance(value, dict) else value
            _check_section(name, new, self.path, {})
            changes[name] = new
            params[name] = dataclasses.asdict(new)
        return dataclasses.replace(self, params=params, **changes)


# ---------------------------------------------------------------- reading and checking


def load_params(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """The raw mapping of params.yaml (found as `find_params_file` does when `path` is None)."""
    return _read(Path(path) if path else find_params_file())[0]


def load_config(path: str | os.PathLike | None = None) -> Config:
    """The whole params.yaml as a `Config`, every section checked; a `ConfigError` otherwise."""
    path = Path(path).resolve() if path else find_params_file()
    params, lines = _read(path)
    missing = [name for name in SECTIONS if name not in params]
    if missing:
        raise ConfigError(f"{path}: no section(s) {', '.join(missing)}; every section must be there "
                          f"(params.yaml is the only place a default lives)")
    unknown = sorted(set(params) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"{path}:{lines.get((unknown[0],), '?')}: unknown section(s) {', '.join(unknown)}; "
                          f"known: {', '.join(SECTIONS)}")
    sections = {name: build_section(name, params[name], path, lines) for name in SECTIONS}
    return Config(**sections, path=path, params=params)


def build_section(name: str, raw: Any, path: Path, lines: dict[tuple, int] | None = None):
    """One section's dataclass from its raw mapping, every key checked."""
    cls, lines = SECTIONS[name], lines or {}
    where = f"{path}:{lines.get((name,), '?')}"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: section '{name}' must be a mapping of keys, got {_shown(raw)}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    missing = [key for key in names if key not in raw]
    if missing:
        raise ConfigError(f"{where}: section '{name}' has no key(s) {', '.join(missing)}; add them "
                          f"(params.yaml is the only place a default lives)")
    unknown = [key for key in raw if key not in names]
    if unknown:
        raise ConfigError(f"{path}:{lines.get((name, unknown[0]), '?')}: unknown key {name}.{unknown[0]}; "
                          f"the {name} section has {', '.join(names)}")
    values = {}
    for key in names:
        ok, value = _coerce(raw[key], hints[key])
        if not ok:
            raise ConfigError(f"{path}:{lines.get((name, key), '?')}: {name}.{key} = {_shown(raw[key])} is not "
                              f"{_describe(hints[key])}")
        values[key] = value
    section = cls(**values)
    _check_section(name, section, path, lines)
    return section


def _check_section(name: str, section: Any, path: Path, lines: dict[tuple, int]) -> None:
    problems = section.check()
    if problems:
        key, allowed = next(iter(problems.items()))
        raise ConfigError(f"{path}:{lines.get((name, key), '?')}: {name}.{key} = {_shown(getattr(section, key))} "
                          f"must be {allowed}")


def _read(path: Path) -> tuple[dict[str, Any], dict[tuple, int]]:
    """The mapping and the line of every section and key, for messages that point into the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from None
    try:
        node = yaml.compose(text)
        params = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{where}: YAML syntax error: {problem}; fix the file (indentation, quotes, colons)") from None
    if not isinstance(params, dict):
        raise ConfigError(f"{path} must hold a mapping of sections, got {_shown(params)}")
    lines: dict[tuple, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            lines[(key_node.value,)] = key_node.start_mark.line + 1
            if isinstance(value_node, yaml.MappingNode):
                for sub_key, _ in value_node.value:
                    lines[(key_node.value, sub_key.value)] = sub_key.start_mark.line + 1
    return params, lines


def _coerce(value: Any, hint: Any) -> tuple[bool, Any]:
    """(True, value) when `value` fits the annotation; ints are accepted where floats are."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            ok, coerced = _coerce(value, option)
            if ok:
                return True, coerced
        return False, value
    if hint is type(None):
        return value is None, value
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return ok, float(value) if ok else value
    if hint is str:
        return isinstance(value, str), value
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            return False, value
        checked = [_coerce(v, item) for v in value]
        return all(ok for ok, _ in checked), [v for _, v in checked]
    if origin is dict:
        key_type, value_type = typing.get_args(hint)
        value = {} if value is None else value
        if not isinstance(value, dict):
            return False, value
        ok = all(_coerce(k, key_type)[0] and _coerce(v, value_type)[0] for k, v in value.items())
        return ok, dict(value)
    raise TypeError(f"unsupported annotation {hint!r}")


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(option) for option in typing.get_args(hint))
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null"}
    if hint in names:
        return names[hint]
    if origin is list:
        return f"a list of {_describe(typing.get_args(hint)[0]).removeprefix('an ').removeprefix('a ')}s"
    if origin is dict:
        return "a mapping"
    return str(hint)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
