"""The committed crack segmenter: version 1 in this checkout's repository keeps its contract and card."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from clients.contract import Task, default_repository
from clients.repository import discover, model_versions
from datagen.cracks import render_crack, sample_seed
from tests.training.helpers import CRACKS

MODEL_DIR = default_repository() / CRACKS


def test_v1_is_discovered_with_its_contract_and_no_errors() -> None:
    found = discover()
    assert CRACKS not in found.errors, found.errors.get(CRACKS)
    contract = found.get(CRACKS)
    assert contract.task == Task.SEGMENTATION and contract.output_names == ("masks",)
    assert contract.labels.names == ["background", "crack"] and contract.input_size == (320, 320)
    published, served = model_versions(CRACKS, config_name="cpu")
    assert published[0] == 1 and served  # v1 is committed; later runs may publish more
    assert (MODEL_DIR / "model.py").resolve() == (default_repository() / "onnx_runner.py").resolve()


def test_v1_card_reports_held_out_quality_and_matches_the_file() -> None:
    onnx = MODEL_DIR / "1" / "model.onnx"
    card = json.loads((MODEL_DIR / "1" / "model_card.json").read_text())
    assert onnx.stat().st_size <= 15_000_000  # small enough to commit
    assert card["onnx"]["sha256"] == hashlib.sha256(onnx.read_bytes()).hexdigest()
    assert card["task"] == "segmentation" and card["config_file"] == "crack.yaml" and card["gate"]["passed"]
    assert card["options"]["decoder_attention_type"] == "scse"
    evaluation = card["evaluation"]
    assert evaluation["images"] >= 100 and evaluation["per_class_dice"]["crack"] >= 0.70
    assert card["parity"]["served_engine"] == "openvino" and card["parity"]["served"] >= 0.99


def test_v1_finds_cracks_it_never_saw() -> None:
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(MODEL_DIR / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    samples = [render_crack(sample_seed(12345, i), negative_fraction=0.0) for i in range(4)]
    (masks,) = session.run(None, {"images": np.stack([s.image for s in samples])})
    truth = np.stack([s.mask for s in samples])
    dice = 2 * np.logical_and(masks == 1, truth == 1).sum() / ((masks == 1).sum() + (truth == 1).sum())
    assert masks.dtype == np.uint8 and dice > 0.6
