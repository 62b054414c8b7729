"""``prodseg drift`` and ``prodseg keys``, run as a user runs them (a subprocess)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

from clients.contract import default_repository
from clients.drift import DriftReference, reference_path
from datagen.shelves import write_dataset
from gateway.auth import Authenticator
from tests.conftest import copy_model


def prodseg(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "prodseg.cli", *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    result.stderr = " ".join(result.stderr.split())  # rich wraps long messages at the terminal width
    return result


@pytest.fixture(scope="module")
def repository(tmp_path_factory) -> Path:
    """A copy of shelf_segmenter (v1) in a repository of its own, so references land there."""
    root = tmp_path_factory.mktemp("repository")
    shutil.copy(default_repository() / "onnx_runner.py", root)
    copy_model("shelf_segmenter", root / "shelf_segmenter", ignore=("drift_reference.json",))
    return root


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    write_dataset(folder, 20, seed=123)  # the smallest reference allowed
    return folder / "images"


def test_reference_then_report_of_darkened_images(repository, images, tmp_path):
    built = prodseg(
        "drift", "reference", "--model", "shelf_segmenter", "--repository", str(repository), str(images)
    )
    assert built.returncode == 0, built.stderr
    path = reference_path("shelf_segmenter", 1, repository)
    assert built.stdout.strip() == str(path)
    reference = DriftReference.load(path)
    assert reference.num_samples == 20 and reference.version == 1
    assert {"share_product", "share_price_tag", "blur", "embedding_pc1"} <= set(reference.feature_names)

    dark = tmp_path / "dark"
    dark.mkdir()
    for png in images.glob("*.png"):
        cv2.imwrite(str(dark / png.name), (cv2.imread(str(png)) * 0.5).astype("uint8"))
    html, report_json = tmp_path / "report.html", tmp_path / "report.json"
    result = prodseg(
        "drift", "report", "--model", "shelf_segmenter", "--repository", str(repository), str(dark),
        "-o", str(html), "--json", str(report_json), "--min-samples", "20", "--threads", "1",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(report_json.read_text())
    assert report["status"] == "drift" and "brightness" in report["drifted_features"]
    page = html.read_text()
    assert "Drift report: shelf_segmenter" in page and page.count("data:image/png;base64,") == report["tests"]


def test_drift_commands_fail_clearly(repository, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    no_images = prodseg(
        "drift", "reference", "--model", "shelf_segmenter", "--repository", str(repository), str(empty)
    )
    assert no_images.returncode == 2 and "holds no images" in no_images.stderr
    unknown = prodseg("drift", "reference", "--model", "nope", "--repository", str(repository), str(empty))
    assert unknown.returncode == 2 and "no config.pbtxt" in unknown.stderr
    other = tmp_path / "repo"
    shutil.copytree(repository, other, symlinks=True, ignore=shutil.ignore_patterns("drift_reference.json"))
    missing = prodseg("drift", "report", "--model", "shelf_segmenter", "--repository", str(other), str(empty))
    assert missing.returncode == 2 and "prodseg drift reference" in missing.stderr


def test_keys_create_list_revoke(tmp_path):
    store = tmp_path / "keys.json"
    env = dict(os.environ, PRODSEG_API_KEYS_FILE=str(store))
    created = prodseg("keys", "create", "camera-7", "--models", "shelf_segmenter", "--rate", "5/s", env=env)
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()  # the key alone on stdout, once
    assert key.startswith("psk_") and "not shown again" in created.stderr
    assert key not in store.read_text()
    assert Authenticator(store).authorize(f"Bearer {key}", "shelf_segmenter").name == "camera-7"

    listed = prodseg("keys", "list", "--file", str(store))
    assert listed.returncode == 0 and "camera-7" in listed.stdout and "5/s" in listed.stdout
    assert key not in listed.stdout

    duplicate = prodseg("keys", "create", "camera-7", env=env)
    assert duplicate.returncode == 2 and "exists" in duplicate.stderr
    assert prodseg("keys", "revoke", "camera-7", env=env).returncode == 0
    gone = prodseg("keys", "revoke", "camera-7", env=env)
    assert gone.returncode == 2 and "no key named 'camera-7'" in gone.stderr
    no_store = prodseg(
        "keys", "list", env={k: v for k, v in os.environ.items() if k != "PRODSEG_API_KEYS_FILE"}
    )
    assert no_store.returncode == 2 and "--file" in no_store.stderr


def tiny_classifier_onnx(path: Path, classes: int) -> None:
    """uint8 [N, H, W, 3] -> mean colour -> linear -> softmax ``probabilities`` [N, classes]."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = np.random.default_rng(0).normal(0, 0.05, (3, classes)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["images"], ["pixels"], to=TensorProto.FLOAT),
            helper.make_node("ReduceMean", ["pixels"], ["colour"], axes=[1, 2], keepdims=0),
            helper.make_node("MatMul", ["colour", "weights"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        ],
        "tiny",
        [helper.make_tensor_value_info("images", TensorProto.UINT8, ["N", 64, 64, 3])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", classes])],
        [
            numpy_helper.from_array(np.array([1, 2], np.int64), "axes"),
            numpy_helper.from_array(weights, "weights"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True)
    onnx.save(model, path)


def test_reference_of_a_classifier_through_its_engine(tmp_path):
    """The same builder serves every task: a classification model's reference holds its class mix."""
    from datagen.products import write_image_folder
    from prodseg.drift_cli import build_reference

    repository = tmp_path / "repository"
    source = default_repository() / "returns_classifier"
    (repository / "returns_classifier").mkdir(parents=True)
    shutil.copy(default_repository() / "onnx_runner.py", repository)
    for name in ("config.pbtxt", "labels.txt"):
        shutil.copy(source / name, repository / "returns_classifier" / name)
    tiny_classifier_onnx(repository / "returns_classifier" / "1" / "model.onnx", classes=5)
    write_image_folder(tmp_path / "images", 25, seed=4)

    built = build_reference("returns_classifier", tmp_path / "images", repository=repository, threads=1)
    assert built.version == 1 and built.task == "classification"
    assert built.class_counts["predicted_class"].sum() == 25
    assert (
        DriftReference.load(reference_path("returns_classifier", 1, repository)).feature_names
        == built.feature_names
    )
