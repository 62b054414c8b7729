"""Box annotations -> segmentation masks, with Segment Anything box prompts (or filled boxes).

SKU-110K gives boxes, the model learns masks. For each image SAM embeds the picture once
(``set_image``, the expensive part), then decodes every box of it as a prompt, ``box_batch`` boxes
per call. A box whose mask SAM is unsure of (predicted IoU below ``min_predicted_iou``) or finds
empty falls back to the filled box, and is counted. The output is the folder format of
:mod:`training.datasets` plus provenance: which checkpoint (by sha256) labelled each image, how many
of its boxes fell back, and SAM's mean predicted IoU.

Masks are kept inside their box: a box is a person's statement of the product's extent, and what
SAM paints beyond it is usually a neighbour or the shelf. All boxes paint the one product class
over background, so the mask is the union of the box masks and overlapping boxes need no order.

Runs are resumable: every file is written under a temporary name and renamed, the provenance file
last, so an image whose mask and provenance exist is finished and a rerun skips it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from clients.atomic import atomic_path, write_bytes
from clients.labels import LabelMap
from clients.masks import encode_mask_png
from training.datasets import write_json_atomically
from training.sku110k import Annotations, Box

if TYPE_CHECKING:
    from segment_anything import SamPredictor
    from segment_anything.modeling import Sam

SAM_TYPES = ("vit_b", "vit_l", "vit_h")
TINY_SAM = "tiny"  # a ~100k-parameter SAM for tests and docs (build_tiny_sam)
LABELERS = ("sam", "box")

# The tiny SAM: a 128 px input keeps it fast on CPU; every part is a real segment_anything module.
_TINY_IMAGE_SIZE = 128
_TINY_ENCODER_DIM = 32
_TINY_PROMPT_DIM = 32
# The image encoder's width tells a checkpoint's type apart (patch_embed.proj.weight is [width, 3, 16, 16]).
_TYPE_BY_WIDTH = {768: "vit_b", 1024: "vit_l", 1280: "vit_h", _TINY_ENCODER_DIM: TINY_SAM}
# Settings that must match for an image finished by an earlier run to count as done by this one.
_RESUME_KEYS = ("labeler", "model_type", "checkpoint_sha256", "min_predicted_iou", "product_class_id")


class BootstrapError(ValueError):
    """Bad bootstrap input: a checkpoint, labeler or output folder that cannot be used as given."""


def load_sam(checkpoint: Path, model_type: str) -> SamPredictor:
    """A :class:`SamPredictor` for the checkpoint, on the GPU when there is one.

    The checkpoint's type is read from its weights before anything is built, so a file of another
    type gets an error naming both types instead of a page of size mismatches.
    """
    checkpoint = Path(checkpoint)
    _check_checkpoint_option(checkpoint, model_type)
    import torch

    from training.compat import patch_torchvision_ops

    patch_torchvision_ops()  # segment_anything imports torchvision
    from segment_anything import SamPredictor, sam_model_registry

    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling and zip errors come in many types
        raise BootstrapError(f"{checkpoint}: not a PyTorch checkpoint ({error})") from None
    width = _encoder_width(state)
    if width is None:
        raise BootstrapError(f"{checkpoint}: not a SAM checkpoint (no image_encoder.patch_embed weights)")
    found = _TYPE_BY_WIDTH.get(width)
    if found is None:
        raise BootstrapError(f"{checkpoint}: a SAM of no known type (image encoder width {width})")
    if found != model_type:
        raise BootstrapError(
            f"{checkpoint} is a SAM {found} checkpoint, but model type {model_type} was asked for; "
            f"pass model type {found}"
        )
    sam = _tiny_sam() if model_type == TINY_SAM else sam_model_registry[model_type]()
    try:
        sam.load_state_dict(state)
    except RuntimeError as error:
        detail = str(error).splitlines()[1].strip() if "\n" in str(error) else str(error)
        raise BootstrapError(f"{checkpoint} does not fit SAM {model_type}: {detail}") from None
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return SamPredictor(sam.to(device).eval())


def _encoder_width(state: Any) -> int | None:
    weight = state.get("image_encoder.patch_embed.proj.weight") if isinstance(state, dict) else None
    return int(weight.shape[0]) if weight is not None and weight.ndim == 4 else None


def _check_checkpoint_option(checkpoint: Path, model_type: str) -> None:
    if model_type not in (*SAM_TYPES, TINY_SAM):
        raise BootstrapError(f"unknown SAM model type {model_type!r}; expected one of {SAM_TYPES}")
    if not checkpoint.is_file():
        raise BootstrapError(f"{checkpoint}: no such SAM checkpoint file")


def build_tiny_sam(checkpoint_path: Path) -> Path:
    """Save the weights of a tiny, randomly initialised SAM; ``load_sam(path, "tiny")`` loads it.

    The weights are seeded, so the file (and its sha256) is the same every time. Its masks are
    noise: it exists so tests run the real checkpoint loading, image embedding and box prompting.
    """
    import torch

    checkpoint_path = Path(checkpoint_path)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        state = _tiny_sam().state_dict()
    with atomic_path(checkpoint_path) as partial_file:
        torch.save(state, partial_file)
    return checkpoint_path


def _tiny_sam() -> Sam:
    """SAM's architecture at toy size: 2 ViT blocks of width 32 on 128 px images, a 32-wide decoder."""
    import torch

    from training.compat import patch_torchvision_ops

    patch_torchvision_ops()
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    patch_size = 16
    grid = _TINY_IMAGE_SIZE // patch_size
    return Sam(
        image_encoder=ImageEncoderViT(
            img_size=_TINY_IMAGE_SIZE,
            patch_size=patch_size,
            embed_dim=_TINY_ENCODER_DIM,
            depth=2,
            num_heads=2,
            mlp_ratio=2.0,
            out_chans=_TINY_PROMPT_DIM,
            qkv_bias=True,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            use_rel_pos=True,
            window_size=4,
            global_attn_indexes=(1,),
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=_TINY_PROMPT_DIM,
            image_embedding_size=(grid, grid),
            input_image_size=(_TINY_IMAGE_SIZE, _TINY_IMAGE_SIZE),
            mask_in_chans=8,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=_TINY_PROMPT_DIM, mlp_dim=64, num_heads=2),
            transformer_dim=_TINY_PROMPT_DIM,
            iou_head_depth=3,
            iou_head_hidden_dim=32,
        ),
        # SAM's own pixel statistics (ImageNet in 0..255), as in segment_anything.build_sam.
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )


@dataclass
class BootstrapReport:
    """One bootstrap run. Box counts and the mean IoU cover every image in the output folder,
    including those finished by an earlier run, so the report describes the dataset on disk."""

    images_done: int  # labelled by this run
    images_skipped_existing: int  # already finished by an earlier run
    boxes: int
    boxes_fallback: int  # boxes painted filled because SAM was unsure or found nothing
    mean_predicted_iou: float | None  # SAM's mean predicted IoU over all boxes; None for labeler "box"
    labeler: str
    model_type: str | None
    checkpoint_sha256: str | None
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def bootstrap_masks(
    annotations: Annotations,
    images_dir: Path,
    out_dir: Path,
    labels: LabelMap,
    labeler: str = "sam",
    checkpoint: Path | None = None,
    model_type: str = "vit_b",
    box_batch: int = 64,
    min_predicted_iou: float = 0.5,
    progress: Any = None,
) -> BootstrapReport:
    """Label every annotated image into ``out_dir`` (folder format + provenance); see the module doc.

    Writes ``images/<name>`` (a copy), ``masks/<stem>.png`` (product where the labeler says so,
    background elsewhere), ``provenance/<stem>.json``, ``annotations_report.json`` (the rows
    skipped while reading the CSV) and ``bootstrap_report.json``. ``labeler="box"`` paints filled
    boxes and needs no checkpoint. ``progress`` is an optional ``rich.progress.Progress``.
    Memory per SAM call grows with ``box_batch`` times the image's pixels: lower it for large
    images on small machines.
    """
    started = time.perf_counter()
    check_options(labeler, checkpoint, model_type, box_batch)
    try:
        product, background = labels.index("product"), labels.index("background")
    except KeyError as error:
        raise BootstrapError(f"the label map needs 'product' and 'background' classes: {error}") from None
    images_dir, out_dir = Path(images_dir), Path(out_dir)
    settings = {
        "labeler": labeler,
        "model_type": model_type if labeler == "sam" else None,
        "checkpoint": str(checkpoint) if labeler == "sam" else None,
        "checkpoint_sha256": _sha256(Path(checkpoint)) if labeler == "sam" else None,
        "min_predicted_iou": min_predicted_iou if labeler == "sam" else None,
        "product_class_id": product,
    }

    predictor: SamPredictor | None = None  # loaded when the first unfinished image needs it
    done = skipped = boxes = fallback = 0
    iou_sum = 0.0
    task = None if progress is None else progress.add_task(f"label ({labeler})", total=len(annotations.boxes))
    for name in sorted(annotations.boxes):
        record = _finished_record(out_dir, name, settings)
        if record is not None:
            skipped += 1
        else:
            image = _read_rgb(images_dir / name)
            image_boxes = annotations.boxes[name]
            _check_boxes_fit(images_dir / name, image, image_boxes)
            if labeler == "sam":
                predictor = predictor or load_sam(checkpoint, model_type)
                labelled = _sam_box_masks(predictor, image, image_boxes, box_batch)
            else:
                labelled = ((np.ones((b.y2 - b.y1, b.x2 - b.x1), bool), None) for b in image_boxes)
            mask, stats = _paint(
                image.shape[:2], image_boxes, labelled, min_predicted_iou, product, background
            )
            record = {"image": name, **settings, **stats, "created": dt.datetime.now(dt.UTC).isoformat()}
            _write_image_outputs(images_dir / name, out_dir, name, mask, record)
            done += 1
        boxes += record["boxes"]
        fallback += record["boxes_fallback"]
        iou_sum += (record["mean_predicted_iou"] or 0.0) * record["boxes"]
        if task is not None:
            progress.advance(task)

    report = BootstrapReport(
        images_done=done,
        images_skipped_existing=skipped,
        boxes=boxes,
        boxes_fallback=fallback,
        mean_predicted_iou=round(iou_sum / boxes, 4) if labeler == "sam" and boxes else None,
        labeler=labeler,
        model_type=settings["model_type"],
        checkpoint_sha256=settings["checkpoint_sha256"],
        seconds=round(time.perf_counter() - started, 2),
    )
    write_json_atomically(out_dir / "annotations_report.json", annotations.report())
    write_json_atomically(out_dir / "bootstrap_report.json", report.to_dict())
    return report


def check_options(labeler: str, checkpoint: Path | None, model_type: str, box_batch: int) -> None:
    """Fail fast on options :func:`bootstrap_masks` cannot use, before any slow work starts."""
    if labeler not in LABELERS:
        raise BootstrapError(f"unknown labeler {labeler!r}; expected one of {LABELERS}")
    if labeler == "sam" and checkpoint is None:
        raise BootstrapError("labeler 'sam' needs a SAM checkpoint; use labeler 'box' for filled boxes")
    if labeler == "sam":
        _check_checkpoint_option(Path(checkpoint), model_type)
    if box_batch < 1:
        raise BootstrapError(f"box_batch must be >= 1, got {box_batch}")


def _finished_record(out_dir: Path, name: str, settings: dict[str, Any]) -> dict[str, Any] | None:
    """The provenance of an image an earlier run finished with the same settings, else None."""
    stem = Path(name).stem
    provenance = out_dir / "provenance" / f"{stem}.json"
    if not all(
        p.is_file() for p in (provenance, out_dir / "masks" / f"{stem}.png", out_dir / "images" / name)
    ):
        return None
    try:
        record = json.loads(provenance.read_text())
    except (OSError, ValueError):
        return None  # unreadable provenance: label the image again
    before = {key: record.get(key) for key in _RESUME_KEYS if record.get(key) != settings[key]}
    if before:
        now = {key: settings[key] for key in before}
        raise BootstrapError(
            f"{provenance} was made with {before} but this run uses {now}; "
            "bootstrap into a new folder instead of mixing labels"
        )
    return record


def _read_rgb(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise BootstrapError(f"{path}: not a decodable image")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _check_boxes_fit(path: Path, image: np.ndarray, boxes: Sequence[Box]) -> None:
    """read_annotations checked boxes against the file's header; this checks the decoded pixels."""
    height, width = image.shape[:2]
    outside = [box for box in boxes if box.x2 > width or box.y2 > height]
    if outside:
        raise BootstrapError(f"{path}: box {outside[0]} lies outside the decoded {width}x{height} image")


def _sam_box_masks(
    predictor: SamPredictor, image: np.ndarray, boxes: Sequence[Box], box_batch: int
) -> Iterator[tuple[np.ndarray, float]]:
    """Per box: SAM's mask inside the box (bool ``[y2-y1, x2-x1]``) and its predicted IoU."""
    import torch

    predictor.set_image(image)  # RGB uint8 [H, W, 3]; the image embedding is computed once here
    for start in range(0, len(boxes), box_batch):
        chunk = boxes[start : start + box_batch]
        xyxy = torch.tensor([[b.x1, b.y1, b.x2, b.y2] for b in chunk], dtype=torch.float32)
        masks, ious, _ = predictor.predict_torch(
            point_coords=None,
            point_labels=None,
            boxes=predictor.transform.apply_boxes_torch(xyxy.to(predictor.device), image.shape[:2]),
            multimask_output=False,
        )
        for box, mask, iou in zip(chunk, masks[:, 0], ious[:, 0].tolist(), strict=True):
            yield mask[box.y1 : box.y2, box.x1 : box.x2].cpu().numpy(), iou


def _paint(
    shape: tuple[int, int],
    boxes: Sequence[Box],
    labelled: Iterator[tuple[np.ndarray, float | None]],
    min_predicted_iou: float,
    product: int,
    background: int,
) -> tuple[np.ndarray, dict[str, Any]]:
    """The image's class mask and its box statistics; unsure or empty SAM masks become filled boxes."""
    mask = np.full(shape, background, np.uint8)
    fallback, ious = 0, []
    for box, (inside, iou) in zip(boxes, labelled, strict=True):
        if iou is not None:
            ious.append(iou)
            if iou < min_predicted_iou or not inside.any():
                inside = np.ones_like(inside)
                fallback += 1
        mask[box.y1 : box.y2, box.x1 : box.x2][inside] = product
    stats = {
        "boxes": len(boxes),
        "boxes_fallback": fallback,
        "mean_predicted_iou": round(float(np.mean(ious)), 4) if ious else None,
    }
    return mask, stats


def _write_image_outputs(
    source: Path, out_dir: Path, name: str, mask: np.ndarray, record: dict[str, Any]
) -> None:
    """Image, mask, then provenance, each renamed into place: the provenance marks the image finished."""
    stem = Path(name).stem
    with atomic_path(out_dir / "images" / name) as partial_image:
        shutil.copyfile(source, partial_image)
    write_bytes(out_dir / "masks" / f"{stem}.png", encode_mask_png(mask))
    write_json_atomically(out_dir / "provenance" / f"{stem}.json", record)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
