"""Training targets and loss of the CenterNet-style detector (TTFNet's variant, which trains fast).

Per image and class a Gaussian heatmap peaks at 1 on each box's centre cell (focal loss learns it);
every cell inside a smaller Gaussian around the centre regresses the whole box (GIoU loss, weighted by
the Gaussian and the log of the box area), so a box gets many training signals, not one cell's.
Targets are built in numpy (in the data loader), the loss in torch.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from training.detection.model import STRIDE

HEAT_ALPHA = 0.54  # Gaussian radius as a share of the box (TTFNet's alpha)
BOX_BETA = 0.54  # the regression region, same convention


def build_targets(
    boxes: np.ndarray, class_ids: np.ndarray, num_classes: int, height: int, width: int, stride: int = STRIDE
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(heatmap [C, h, w], box targets [4, h, w] x1 y1 x2 y2 px, box weights [h, w]) for one image."""
    h, w = math.ceil(height / stride), math.ceil(width / stride)
    heat = np.zeros((num_classes, h, w), np.float32)
    box_target = np.zeros((4, h, w), np.float32)
    box_weight = np.zeros((h, w), np.float32)
    ys = (np.arange(h, dtype=np.float32) + 0.5) * stride
    xs = (np.arange(w, dtype=np.float32) + 0.5) * stride
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    # Large boxes first, so a small box's cells overwrite a large one's where they overlap.
    for i in np.argsort(-areas):
        x1, y1, x2, y2 = (float(v) for v in boxes[i])
        bw, bh = x2 - x1, y2 - y1
        if bw < 1 or bh < 1:
            continue
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        dx = (xs - cx)[None, :] ** 2
        dy = (ys - cy)[:, None] ** 2
        sx, sy = max(HEAT_ALPHA * bw / 6, 0.8 * stride / 3), max(HEAT_ALPHA * bh / 6, 0.8 * stride / 3)
        gauss = np.exp(-dx / (2 * sx * sx) - dy / (2 * sy * sy))
        ci, cj = min(int(cy // stride), h - 1), min(int(cx // stride), w - 1)
        gauss[ci, cj] = 1.0  # exactly one positive per box for the focal loss
        c = int(class_ids[i])
        np.maximum(heat[c], gauss, out=heat[c])

        bx, by = BOX_BETA * bw / 6, BOX_BETA * bh / 6
        region = np.exp(-dx / (2 * max(bx, 1e-3) ** 2) - dy / (2 * max(by, 1e-3) ** 2))
        inside = (
            (region > 0.05)
            & (xs[None, :] > x1)
            & (xs[None, :] < x2)
            & (ys[:, None] > y1)
            & (ys[:, None] < y2)
        )
        inside[ci, cj] = True
        weight = region * inside
        weight *= math.log(max(bw * bh, 2.0)) / weight.sum()
        box_target[:, inside] = np.array([x1, y1, x2, y2], np.float32)[:, None]
        box_weight[inside] = weight[inside]
    return heat, box_target, box_weight


def focal_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss, normalised by the number of objects."""
    p = torch.sigmoid(logits.float()).clamp(1e-4, 1 - 1e-4)
    positive = target.eq(1).float()
    pos_loss = -torch.log(p) * (1 - p) ** 2 * positive
    neg_loss = -torch.log(1 - p) * p**2 * (1 - target) ** 4 * (1 - positive)
    return (pos_loss.sum() + neg_loss.sum()) / positive.sum().clamp(min=1)


def giou_loss(
    ltrb: torch.Tensor, box_target: torch.Tensor, box_weight: torch.Tensor, stride: int
) -> torch.Tensor:
    """Weighted 1 - GIoU between the box each cell predicts and its target, over weighted cells."""
    n, _, h, w = ltrb.shape
    mask = box_weight > 0
    if not mask.any():
        return ltrb.sum() * 0.0
    ys = (torch.arange(h, device=ltrb.device, dtype=torch.float32) + 0.5) * stride
    xs = (torch.arange(w, device=ltrb.device, dtype=torch.float32) + 0.5) * stride
    cy, cx = torch.meshgrid(ys, xs, indexing="ij")
    d = ltrb.float().permute(0, 2, 3, 1)[mask]  # [M, 4]
    t = box_target.permute(0, 2, 3, 1)[mask]
    weight = box_weight[mask]
    cx, cy = cx.expand(n, h, w)[mask], cy.expand(n, h, w)[mask]
    p = torch.stack((cx - d[:, 0], cy - d[:, 1], cx + d[:, 2], cy + d[:, 3]), dim=1)
    inter_w = (torch.minimum(p[:, 2], t[:, 2]) - torch.maximum(p[:, 0], t[:, 0])).clamp(min=0)
    inter_h = (torch.minimum(p[:, 3], t[:, 3]) - torch.maximum(p[:, 1], t[:, 1])).clamp(min=0)
    inter = inter_w * inter_h
    area_p = (p[:, 2] - p[:, 0]) * (p[:, 3] - p[:, 1])
    area_t = (t[:, 2] - t[:, 0]) * (t[:, 3] - t[:, 1])
    union = area_p + area_t - inter
    iou = inter / union.clamp(min=1e-6)
    hull = (torch.maximum(p[:, 2], t[:, 2]) - torch.minimum(p[:, 0], t[:, 0])) * (
        torch.maximum(p[:, 3], t[:, 3]) - torch.minimum(p[:, 1], t[:, 1])
    )
    giou = iou - (hull - union) / hull.clamp(min=1e-6)
    return ((1 - giou) * weight).sum() / weight.sum().clamp(min=1e-6)


def detection_loss(
    heat_logits: torch.Tensor,
    ltrb: torch.Tensor,
    heat: torch.Tensor,
    box_target: torch.Tensor,
    box_weight: torch.Tensor,
    heatmap_factor: float = 1.0,
    box_factor: float = 5.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """heatmap_factor x focal + box_factor x GIoU, and the two terms for logging."""
    heat_term = focal_loss(heat_logits, heat)
    box_term = giou_loss(ltrb, box_target, box_weight, STRIDE)
    total = heatmap_factor * heat_term + box_factor * box_term
    return total, {"heat": float(heat_term.detach()), "box": float(box_term.detach())}
