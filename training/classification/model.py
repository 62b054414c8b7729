"""The classifier network and its serving head.

:func:`build_backbone` is a timm classification model with random weights: normalised float
``[N, 3, H, W]`` in, logits ``[N, C]`` out. :class:`SoftmaxHead` turns logits into the platform's
classification output, ``probabilities`` FP32 ``[N, C]``. The pipeline exports
``training.export.ServingModel(backbone, SoftmaxHead())``, which adds the uint8 NHWC -> normalised
float step in front, so normalisation and softmax are both inside the served graph.

Two options of the config's ``model.options`` are the platform's, not timm's (the rest go to
``timm.create_model``); with neither, the network is the plain timm model (its weights' names as
ever):

- ``coord_channels: true`` adds two input channels holding each pixel's x and y (-1..1), so that
  even the first convolution knows where it is ("CoordConv"): positions and sizes matter for labels
  such as engagement's framing and centring;
- ``aux_outputs: K`` adds a linear head on the pooled features that predicts K auxiliary regression
  targets (e.g. the engagement generator's property scores) during training only. In eval mode,
  which is how the model is validated and exported, the network returns the class logits alone, so
  the serving graph is the same as without it.
"""

from __future__ import annotations

from typing import Any

import torch

from training.compat import patch_torchvision_ops

PLATFORM_OPTIONS = ("coord_channels", "aux_outputs")


def build_backbone(name: str, num_classes: int, options: dict[str, Any] | None = None) -> torch.nn.Module:
    """A timm classification model with random weights; ``options`` go to ``timm.create_model``,
    except :data:`PLATFORM_OPTIONS`, which wrap it in a :class:`Classifier`."""
    patch_torchvision_ops()  # timm imports torchvision (see training/compat.py)
    import timm

    if not timm.is_model(name):
        raise ValueError(f"unknown timm model {name!r} (see timm.list_models())")
    timm_options = {k: v for k, v in (options or {}).items() if k not in PLATFORM_OPTIONS}
    coord_channels = bool((options or {}).get("coord_channels", False))
    aux_outputs = int((options or {}).get("aux_outputs", 0))
    if aux_outputs < 0:
        raise ValueError(f"aux_outputs must be >= 0, got {aux_outputs}")
    if coord_channels:
        timm_options["in_chans"] = 3 + 2
    backbone = timm.create_model(name, pretrained=False, num_classes=num_classes, **timm_options)
    if not coord_channels and not aux_outputs:
        return backbone
    return Classifier(backbone, coord_channels=coord_channels, aux_outputs=aux_outputs)


class Classifier(torch.nn.Module):
    """A timm ``backbone`` with optional coordinate input channels and a training-only auxiliary head.

    ``forward`` returns logits ``[N, C]``; in training mode with ``aux_outputs`` it returns
    ``(logits, aux)``, ``aux`` ``[N, aux_outputs]``.
    """

    def __init__(self, backbone: torch.nn.Module, coord_channels: bool, aux_outputs: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.coord_channels = coord_channels
        # The classifier's input is the pooled features (some models add a layer after num_features).
        features = getattr(backbone.get_classifier(), "in_features", backbone.num_features)
        self.aux = torch.nn.Linear(features, aux_outputs) if aux_outputs else None

    def forward(self, images: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if self.coord_channels:
            images = torch.cat([images, coordinates(images)], dim=1)
        pooled = self.backbone.forward_head(self.backbone.forward_features(images), pre_logits=True)
        logits = self.backbone.get_classifier()(pooled)
        if self.aux is None or not self.training:
            return logits
        return logits, self.aux(pooled)


def coordinates(images: torch.Tensor) -> torch.Tensor:
    """``[N, 2, H, W]``: each pixel centre's x and y in -1..1 (the image's left/top edge is -1)."""
    n, _, height, width = images.shape
    # Pixel centres by arange, not linspace: the ONNX exporter's linspace gives other values (measured).
    ys = (torch.arange(height, dtype=images.dtype, device=images.device) + 0.5) * (2.0 / height) - 1.0
    xs = (torch.arange(width, dtype=images.dtype, device=images.device) + 0.5) * (2.0 / width) - 1.0
    grid_y = ys.view(1, 1, height, 1).expand(n, 1, height, width)
    grid_x = xs.view(1, 1, 1, width).expand(n, 1, height, width)
    return torch.cat([grid_x, grid_y], dim=1)


class SoftmaxHead(torch.nn.Module):
    """Logits ``[N, C]`` -> the serving outputs: a 1-tuple ``(probabilities,)``, FP32 ``[N, C]``."""

    def forward(self, logits: torch.Tensor) -> tuple[torch.Tensor]:
        return (torch.softmax(logits.float(), dim=1),)
