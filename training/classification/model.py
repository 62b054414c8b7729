"""The classifier: a timm backbone (random init), and the serving graph around it.

:class:`ServingClassifier` takes what Triton receives, uint8 RGB ``[N, H, W, 3]``, and returns the
platform's classification output, ``probabilities`` FP32 ``[N, C]``: normalisation and softmax are
inside the exported graph, so clients never post-process. Training calls the same ``preprocess``,
so train and serve cannot drift.
"""

from __future__ import annotations

from typing import Any

import torch

from training.compat import patch_torchvision_ops
from training.export import MEAN, STD  # one home for the normalisation every serving graph applies


def build_backbone(name: str, num_classes: int, options: dict[str, Any] | None = None) -> torch.nn.Module:
    """A timm classification model with random weights; logits ``[N, C]`` from normalised NCHW."""
    patch_torchvision_ops()  # timm imports torchvision (see training/compat.py)
    import timm

    if not timm.is_model(name):
        raise ValueError(f"unknown timm model {name!r} (see timm.list_models())")
    return timm.create_model(name, pretrained=False, num_classes=num_classes, **(options or {}))


class Preprocess(torch.nn.Module):
    """uint8 NHWC 0..255 -> normalised float NCHW, folded into one multiply-add."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("inv_std", 1.0 / (torch.tensor(STD).view(1, 3, 1, 1) * 255.0))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (images.permute(0, 3, 1, 2).float() - self.mean) * self.inv_std


class SoftmaxHead(torch.nn.Module):
    """Logits ``[N, C]`` -> the serving outputs: a 1-tuple ``(probabilities,)``, FP32 ``[N, C]``."""

    def forward(self, logits: torch.Tensor) -> tuple[torch.Tensor]:
        return (torch.softmax(logits.float(), dim=1),)


class ServingClassifier(torch.nn.Module):
    """uint8 RGB ``[N, H, W, 3]`` -> ``probabilities`` FP32 ``[N, C]``: what is exported and served."""

    def __init__(self, backbone: torch.nn.Module) -> None:
        super().__init__()
        self.preprocess = Preprocess()
        self.backbone = backbone
        self.head = SoftmaxHead()

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.preprocess(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.logits(images))[0]


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
