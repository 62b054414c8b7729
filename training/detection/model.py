"""A small CenterNet-style detector that trains from random init on a CPU in minutes.

Why this shape: a heatmap head decodes with a 3x3 max-pool and top-k (no NMS op), which ONNX Runtime,
OpenVINO and TensorRT all run; plain 3x3 convolutions (no depthwise) are what oneDNN trains fastest on
two cores; a top-down FPN brings stride-32 context to the stride-4 map where small faces are found.

    normalised [N, 3, H, W] -> backbone (strides 4, 8, 16, 32) -> FPN (stride 4)
        -> heatmap [N, C, H/4, W/4] (logits)  and  ltrb [N, 4, H/4, W/4] (distances to the box sides, px)

``Detector`` returns the raw maps (what the loss reads); :class:`CenterNetDecode` is the serving head the
exported graph ends with (``training.export.ServingModel(detector, head)``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

STRIDE = 4  # output stride: a 14 px face still covers 3x3 heatmap cells
MIN_SCORE = 0.05  # the lowest score the serving graph reports (a client's confidence threshold sits above)


@dataclass(frozen=True)
class DetectorSpec:
    """Widths and depths of the backbone stages (strides 4, 8, 16, 32), the stem's and the FPN's width."""

    widths: tuple[int, ...] = (24, 48, 96, 160)
    depths: tuple[int, ...] = (1, 2, 2, 1)
    stem: int = 16
    neck: int = 32

    def __post_init__(self) -> None:
        if len(self.widths) != 4 or len(self.depths) != 4:
            raise ValueError(
                f"widths and depths need 4 stages (strides 4..32), got {self.widths}, {self.depths}"
            )
        if min(self.widths) < 1 or min(self.depths) < 0 or self.stem < 1 or self.neck < 1:
            raise ValueError("widths, stem and neck must be >= 1 and depths >= 0")

    def to_dict(self) -> dict:
        return asdict(self)


def conv_bn(cin: int, cout: int, stride: int = 1, kernel: int = 3, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_bn(channels, channels), conv_bn(channels, channels, act=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.body(x))


class Backbone(nn.Module):
    """A ResNet-like stack of plain 3x3 convolutions: features at strides 4, 8, 16 and 32."""

    def __init__(self, spec: DetectorSpec) -> None:
        super().__init__()
        self.stem = conv_bn(3, spec.stem, stride=2)
        stages, cin = [], spec.stem
        for width, depth in zip(spec.widths, spec.depths, strict=True):
            stages.append(
                nn.Sequential(conv_bn(cin, width, stride=2), *[BasicBlock(width) for _ in range(depth)])
            )
            cin = width
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


class TopDownNeck(nn.Module):
    """FPN top-down path from stride 32 down to stride 4, one smoothing conv per level."""

    def __init__(self, widths: tuple[int, ...], channels: int) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(conv_bn(w, channels, kernel=1, act=False) for w in widths)
        self.smooth = nn.ModuleList(conv_bn(channels, channels) for _ in widths[:-1])

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = self.lateral[-1](features[-1])
        for i in range(len(features) - 2, -1, -1):
            # Scale factor 2, not a size: no shape arithmetic in the graph (inputs are multiples of 32).
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
            x = self.smooth[i](x + self.lateral[i](features[i]))
        return x


class Detector(nn.Module):
    """Raw maps for training: heatmap logits [N, C, h, w] and ltrb distances in input pixels [N, 4, h, w]."""

    def __init__(self, num_classes: int, spec: DetectorSpec | None = None) -> None:
        super().__init__()
        self.spec = spec or DetectorSpec()
        self.num_classes = num_classes
        self.backbone = Backbone(self.spec)
        self.neck = TopDownNeck(self.spec.widths, self.spec.neck)
        c = self.spec.neck
        self.heat = nn.Sequential(conv_bn(c, c), nn.Conv2d(c, num_classes, 1))
        self.box = nn.Sequential(conv_bn(c, c), nn.Conv2d(c, 4, 1))
        # Focal-loss prior: start every location at p=0.01 so the first steps are not all false positives.
        nn.init.constant_(self.heat[-1].bias, -math.log((1 - 0.01) / 0.01))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x``: normalised float [N, 3, H, W] (``training.export.ServingModel`` adds that step)."""
        features = self.neck(self.backbone(x))
        # Distances grow with object size: predict log-scale so one head spans 10 to 300 px boxes.
        ltrb = torch.exp(self.box(features).float().clamp(max=8.0)) * STRIDE
        return self.heat(features), ltrb


class CenterNetDecode(nn.Module):
    """The serving head: raw maps in, the platform's padded detection tensors out, inside the graph.

    CenterNet decoding: sigmoid heatmap, the best class per location, keep the locations that equal
    their 3x3 max-pool (peaks), top-K over locations, and the box each peak predicts. Only MaxPool,
    ReduceMax/ArgMax, TopK, Gather(Elements) and elementwise ops: ONNX Runtime, OpenVINO and TensorRT
    run all of them, and the batch axis stays free. Rows after ``num_detections`` are zeros.
    """

    def __init__(
        self, height: int, width: int, max_detections: int = 100, min_score: float = MIN_SCORE
    ) -> None:
        super().__init__()
        h, w = math.ceil(height / STRIDE), math.ceil(width / STRIDE)
        if h * w < max_detections:
            raise ValueError(f"a {height}x{width} input has {h * w} locations, fewer than K={max_detections}")
        ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        # Location centres as constants: no integer division of flat indices in the graph.
        self.register_buffer("cx", (xs.reshape(-1).float() + 0.5) * STRIDE, persistent=False)
        self.register_buffer("cy", (ys.reshape(-1).float() + 0.5) * STRIDE, persistent=False)
        self.height, self.width, self.k, self.min_score = height, width, max_detections, min_score

    def forward(self, outputs: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        heat, ltrb = outputs
        # Best class per location first, then peaks of that map: one detection per face even when two
        # wear states both light up (they are exclusive), and one max-pool instead of one per class.
        best, classes = torch.sigmoid(heat.float()).max(dim=1, keepdim=True)  # [N, 1, h, w]
        peaks = best * (F.max_pool2d(best, 3, stride=1, padding=1) == best).float()
        scores, classes = peaks.flatten(1), classes.flatten(1)  # [N, h*w]
        top_scores, index = torch.topk(scores, self.k, dim=1)  # sorted: real detections come first
        top_classes = torch.gather(classes, 1, index)
        distances = torch.gather(
            ltrb.float().flatten(2), 2, index.unsqueeze(1).expand(-1, 4, -1)
        )  # [N, 4, K]
        cx, cy = self.cx[index], self.cy[index]
        boxes = torch.stack(
            (
                (cx - distances[:, 0]).clamp(0, self.width),
                (cy - distances[:, 1]).clamp(0, self.height),
                (cx + distances[:, 2]).clamp(0, self.width),
                (cy + distances[:, 3]).clamp(0, self.height),
            ),
            dim=2,
        )
        keep = (top_scores >= self.min_score).float()
        count = keep.sum(dim=1, keepdim=True).to(torch.int32)
        return (
            boxes * keep.unsqueeze(2),
            top_scores * keep,
            (top_classes.float() * keep).to(torch.int32),
            count,
        )
