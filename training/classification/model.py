"""The classifier network and its serving head.

:func:`build_backbone` is a timm classification model with random weights: normalised float
``[N, 3, H, W]`` in, logits ``[N, C]`` out. :class:`SoftmaxHead` turns logits into the platform's
classification output, ``probabilities`` FP32 ``[N, C]``. The pipeline exports
``training.export.ServingModel(backbone, SoftmaxHead())``, which adds the uint8 NHWC -> normalised
float step in front, so normalisation and softmax are both inside the served graph.
"""

from __future__ import annotations

from typing import Any

import torch

from training.compat import patch_torchvision_ops


def build_backbone(name: str, num_classes: int, options: dict[str, Any] | None = None) -> torch.nn.Module:
    """A timm classification model with random weights; ``options`` go to ``timm.create_model``."""
    patch_torchvision_ops()  # timm imports torchvision (see training/compat.py)
    import timm

    if not timm.is_model(name):
        raise ValueError(f"unknown timm model {name!r} (see timm.list_models())")
    return timm.create_model(name, pretrained=False, num_classes=num_classes, **(options or {}))


class SoftmaxHead(torch.nn.Module):
    """Logits ``[N, C]`` -> the serving outputs: a 1-tuple ``(probabilities,)``, FP32 ``[N, C]``."""

    def forward(self, logits: torch.Tensor) -> tuple[torch.Tensor]:
        return (torch.softmax(logits.float(), dim=1),)
