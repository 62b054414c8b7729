"""SAM bootstrap: a tiny real SAM checkpoint is loaded, prompted with boxes, and its masks written.

A randomly initialised tiny SAM paints noise, so these tests check the mechanics (loading, batched
prompting, fallbacks, provenance, resuming, errors), not mask quality.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from clients.labels import LabelMap
from tests.training.helpers import MODEL
from training.datasets import FolderDataset
from training.sam_bootstrap import BootstrapError, bootstrap_masks, load_sam
from training.sku110k import Annotations, read_annotations


@pytest.fixture(scope="module")
def annotations(sku_dir: Path) -> Annotations:
    return read_annotations(sku_dir / "annotations.csv", sku_dir / "images")


def box_union(annotations: Annotations, name: str, shape: tuple[int, int]) -> np.ndarray:
    covered = np.zeros(shape, bool)
    for box in annotations.boxes[name]:
        covered[box.y1 : box.y2, box.x1 : box.x2] = True
    return covered


def test_sam_masks_stay_in_boxes_with_provenance(
    tmp_path: Path, sku_dir: Path, annotations: Annotations, tiny_sam: Path, labels: LabelMap
) -> None:
    out = tmp_path / "out"
    report = bootstrap_masks(
        annotations,
        sku_dir / "images",
        out,
        labels,
        checkpoint=tiny_sam,
        model_type="tiny",
        box_batch=8,  # several chunks per image
        min_predicted_iou=-1.0,  # keep every non-empty SAM mask
    )
    boxes = sum(len(b) for b in annotations.boxes.values())
    assert (report.images_done, report.images_skipped_existing, report.boxes) == (3, 0, boxes)
    assert 0 < report.boxes_fallback < boxes, "empty SAM masks fall back; the rest are SAM's"
    assert report.mean_predicted_iou is not None
    sha256 = hashlib.sha256(tiny_sam.read_bytes()).hexdigest()
    assert report.checkpoint_sha256 == sha256

    product, filled_pixels, sam_pixels = labels.index("product"), 0, 0
    for sample in FolderDataset(out, labels):
        name = f"{sample.name}.jpg"
        inside = box_union(annotations, name, sample.mask.shape)
        is_product = sample.mask == product
        assert is_product.any() and not is_product[~inside].any(), "masks stay inside their boxes"
        assert set(np.unique(sample.mask)) <= {labels.index("background"), product}
        filled_pixels, sam_pixels = filled_pixels + inside.sum(), sam_pixels + is_product.sum()
        provenance = json.loads((out / "provenance" / f"{sample.name}.json").read_text())
        assert provenance["checkpoint_sha256"] == sha256 and provenance["model_type"] == "tiny"
        assert provenance["boxes"] == len(annotations.boxes[name]) and provenance["labeler"] == "sam"
        assert 0 <= provenance["boxes_fallback"] <= provenance["boxes"]
        assert isinstance(provenance["mean_predicted_iou"], float)
        assert (out / "images" / name).read_bytes() == (sku_dir / "images" / name).read_bytes()
    assert sam_pixels < filled_pixels, "SAM's masks, not just filled boxes"
    assert json.loads((out / "bootstrap_report.json").read_text()) == report.to_dict()
    assert json.loads((out / "annotations_report.json").read_text()) == annotations.report()
    assert not list(out.rglob("*.partial"))

    masks_before = {p.name: p.read_bytes() for p in (out / "masks").iterdir()}
    again = bootstrap_masks(
        annotations,
        sku_dir / "images",
        out,
        labels,
        checkpoint=tiny_sam,
        model_type="tiny",
        min_predicted_iou=-1.0,
    )
    assert (again.images_done, again.images_skipped_existing) == (0, 3)
    assert (again.boxes, again.boxes_fallback, again.mean_predicted_iou) == (
        report.boxes,
        report.boxes_fallback,
        report.mean_predicted_iou,
    ), "the report describes the whole folder, resumed or not"
    assert {p.name: p.read_bytes() for p in (out / "masks").iterdir()} == masks_before

    with pytest.raises(BootstrapError, match="bootstrap into a new folder"):
        bootstrap_masks(annotations, sku_dir / "images", out, labels, labeler="box")


def test_unsure_boxes_fall_back_to_filled_boxes(
    tmp_path: Path, sku_dir: Path, annotations: Annotations, tiny_sam: Path, labels: LabelMap
) -> None:
    report = bootstrap_masks(
        annotations,
        sku_dir / "images",
        tmp_path / "out",
        labels,
        checkpoint=tiny_sam,
        model_type="tiny",
        min_predicted_iou=1.01,  # no prediction reaches it
    )
    assert report.boxes_fallback == report.boxes > 0
    product = labels.index("product")
    for sample in FolderDataset(tmp_path / "out", labels):
        inside = box_union(annotations, f"{sample.name}.jpg", sample.mask.shape)
        assert np.array_equal(sample.mask == product, inside)


def test_box_labeler_needs_no_checkpoint_and_resumes_after_a_failure(
    tmp_path: Path, sku_dir: Path, annotations: Annotations, labels: LabelMap
) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for path in (sku_dir / "images").iterdir():
        (images / path.name).write_bytes(path.read_bytes())
    (images / "000001.jpg").write_bytes(b"broken after validation")
    out = tmp_path / "out"
    with pytest.raises(BootstrapError, match=r"000001\.jpg: not a decodable image"):
        bootstrap_masks(annotations, images, out, labels, labeler="box")
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["000000.png"], "no half-written mask"
    assert not list(out.rglob("*.partial"))

    (images / "000001.jpg").write_bytes((sku_dir / "images" / "000001.jpg").read_bytes())
    report = bootstrap_masks(annotations, images, out, labels, labeler="box")
    assert (report.images_done, report.images_skipped_existing, report.boxes_fallback) == (2, 1, 0)
    assert report.mean_predicted_iou is None and report.checkpoint_sha256 is None
    product = labels.index("product")
    for sample in FolderDataset(out, labels):
        inside = box_union(annotations, f"{sample.name}.jpg", sample.mask.shape)
        assert np.array_equal(sample.mask == product, inside)
    provenance = json.loads((out / "provenance" / "000002.json").read_text())
    assert provenance["labeler"] == "box" and provenance["checkpoint_sha256"] is None


def test_bad_labeler_settings_are_clear_errors(
    tmp_path: Path, sku_dir: Path, annotations: Annotations, labels: LabelMap
) -> None:
    images = sku_dir / "images"
    with pytest.raises(BootstrapError, match="labeler 'sam' needs a SAM checkpoint"):
        bootstrap_masks(annotations, images, tmp_path / "out", labels)
    with pytest.raises(BootstrapError, match="unknown labeler 'magic'"):
        bootstrap_masks(annotations, images, tmp_path / "out", labels, labeler="magic")
    with pytest.raises(BootstrapError, match=r"nope\.pth: no such SAM checkpoint file"):
        bootstrap_masks(annotations, images, tmp_path / "out", labels, checkpoint=tmp_path / "nope.pth")


def test_wrong_sam_type_names_the_file_and_both_types(tmp_path: Path, tiny_sam: Path) -> None:
    with pytest.raises(BootstrapError, match=rf"{tiny_sam} is a SAM tiny checkpoint, but model type vit_b"):
        load_sam(tiny_sam, "vit_b")
    with pytest.raises(BootstrapError, match="unknown SAM model type 'vit_x'"):
        load_sam(tiny_sam, "vit_x")
    not_a_checkpoint = tmp_path / "sam.pth"
    not_a_checkpoint.write_text("hello")
    with pytest.raises(BootstrapError, match=r"sam\.pth: not a PyTorch checkpoint"):
        load_sam(not_a_checkpoint, "vit_b")


def test_bootstrap_command(tmp_path: Path, sku_dir: Path, tiny_sam: Path, prodseg, labels: LabelMap) -> None:
    csv_path, images = str(sku_dir / "annotations.csv"), str(sku_dir / "images")
    result = prodseg(
        "bootstrap", csv_path, images, str(tmp_path / "box"), "--model", MODEL, "--labeler", "box"
    )
    assert result.returncode == 0, result.stderr
    assert "labelled 3 images (0 already done)" in result.stderr
    assert len(FolderDataset(tmp_path / "box", labels)) == 3

    args = ["--checkpoint", str(tiny_sam), "--model-type", "tiny", "--box-batch", "16"]
    result = prodseg("bootstrap", csv_path, images, str(tmp_path / "sam"), "--model", MODEL, *args)
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "sam" / "bootstrap_report.json").read_text())["model_type"] == "tiny"

    result = prodseg(
        "bootstrap", csv_path, images, str(tmp_path / "bad"), "--model", MODEL, "--checkpoint", str(tiny_sam)
    )
    assert result.returncode == 2
    assert f"error: {tiny_sam} is a SAM tiny checkpoint, but model type vit_b was asked for" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_a_real_vit_b_checkpoint_loads_and_prompts(
    tmp_path: Path, sku_dir: Path, annotations: Annotations, labels: LabelMap
) -> None:
    """The sam_model_registry path, with a randomly initialised vit_b (~375 MB, ~20 s on CPU)."""
    import torch

    from training.compat import patch_torchvision_ops

    patch_torchvision_ops()
    from segment_anything import sam_model_registry

    checkpoint = tmp_path / "vit_b.pth"
    torch.save(sam_model_registry["vit_b"]().state_dict(), checkpoint)
    with pytest.raises(BootstrapError, match=r"is a SAM vit_b checkpoint, but model type vit_l"):
        load_sam(checkpoint, "vit_l")
    one_image = Annotations({"000000.jpg": annotations.boxes["000000.jpg"]}, [], [])
    report = bootstrap_masks(
        one_image, sku_dir / "images", tmp_path / "out", labels, checkpoint=checkpoint, model_type="vit_b"
    )
    assert report.images_done == 1 and report.model_type == "vit_b"
    assert report.boxes == len(annotations.boxes["000000.jpg"])
