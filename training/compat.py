"""Make ``import torchvision`` work with the CPU torch this project pins.

The registry's torchvision 0.28.0 wheel is built against CUDA torch: its ``_C`` extension links
``libtorch_cuda``/``libc10_cuda``, which the CPU torch 2.13.0 wheel lacks, so the extension never
loads and its C++ ops never register. torchvision then fails at import time, because its
``_meta_registrations`` module calls ``torch.library.register_fake("torchvision::nms")`` (and
``qnms``) unconditionally: ``operator torchvision::nms does not exist``. timm and
segmentation-models-pytorch import torchvision, so nothing in training can start.

:func:`patch_torchvision_ops` probes whether torchvision's own extension loads; only if it does not,
it defines the two op schemas (with a plain-torch CPU kernel for ``nms``) before torchvision is
imported, then tells torchvision's op check the ops exist. With a CUDA torch or a matching CPU
torchvision it does nothing. ``roi_align`` and the other C++ ops stay missing (detection models
will fail when run); segmentation models use none of them.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from pathlib import Path

import torch

# Kept referenced for the life of the process: a dropped ``Library`` may deregister its ops.
_library: torch.library.Library | None = None


def patch_torchvision_ops() -> bool:
    """Register the ops ``import torchvision`` needs when its extension cannot load.

    Call before anything imports torchvision (timm, smp). Returns True when it patched, False when
    torchvision's own ops are usable (or it was already patched / already imported).
    """
    global _library
    if _library is not None:
        return True
    if "torchvision" in sys.modules or _torchvision_extension_loads():
        return False

    _library = torch.library.Library("torchvision", "DEF")
    for name in ("nms", "qnms"):
        _library.define(f"{name}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _library.impl("nms", _nms_cpu, "CPU")

    import torchvision.extension

    # ``torchvision.ops.nms`` refuses to run unless the extension reported loading.
    torchvision.extension._has_ops = lambda: True
    return True


def _torchvision_extension_loads() -> bool:
    """Load torchvision's ``_C`` the way torchvision would, without importing torchvision."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        return True  # no torchvision installed: nothing to patch
    package = Path(spec.origin).parent
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        if (package / f"_C{suffix}").exists():
            try:
                torch.ops.load_library(str(package / f"_C{suffix}"))
                return True
            except OSError:
                return False
    return False


def _nms_cpu(dets: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression; indices of kept boxes in decreasing score order."""
    order = scores.argsort(descending=True)
    boxes = dets[order]
    x1, y1, x2, y2 = boxes.unbind(1)
    areas = (x2 - x1).clamp(min=0) * (y2 - y1).clamp(min=0)
    width = (torch.minimum(x2[:, None], x2[None]) - torch.maximum(x1[:, None], x1[None])).clamp(min=0)
    height = (torch.minimum(y2[:, None], y2[None]) - torch.maximum(y1[:, None], y1[None])).clamp(min=0)
    inter = width * height
    iou = inter / (areas[:, None] + areas[None] - inter)
    suppressed = torch.zeros(len(order), dtype=torch.bool)
    keep = []
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= iou[i] > iou_threshold
    return order[torch.tensor(keep, dtype=torch.long)]
