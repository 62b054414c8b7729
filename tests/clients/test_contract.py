"""Model contracts per task, read from config.pbtxt; repository discovery and version rules."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from clients.contract import ContractError, ModelContract, Task, default_repository, read_model_config
from clients.repository import discover, served_versions, versions

REPOSITORY = default_repository()
# Model folders; the JPEG wire's companions (clients/wire.py) have configs too but are not models.
COMPANIONS = discover(REPOSITORY).companions
MODEL_DIRS = sorted(
    p for p in REPOSITORY.iterdir() if (p / "config.pbtxt").is_file() and p.name not in COMPANIONS
)

HEAD = 'name: "{name}"\nbackend: "onnxruntime"\nmax_batch_size: 8\n'
INPUT = 'input [ { name: "images" data_type: TYPE_UINT8 dims: [ 64, 96, 3 ] } ]\n'
OUTPUTS = {
    "segmentation": 'output [ { name: "masks" data_type: TYPE_UINT8 dims: [ 64, 96 ] '
    'label_filename: "labels.txt" } ]',
    "detection": """output [
  { name: "boxes" data_type: TYPE_FP32 dims: [ 50, 4 ] },
  { name: "scores" data_type: TYPE_FP32 dims: [ 50 ] },
  { name: "class_ids" data_type: TYPE_INT32 dims: [ 50 ] label_filename: "labels.txt" },
  { name: "num_detections" data_type: TYPE_INT32 dims: [ 1 ] }
]""",
    "classification": 'output [ { name: "probabilities" data_type: TYPE_FP32 dims: [ 3 ] '
    'label_filename: "labels.txt" } ]',
}


def write_model(repository: Path, name: str, task: str, body: str | None = None, labels: int = 3) -> Path:
    model_dir = repository / name
    model_dir.mkdir(parents=True)
    (model_dir / "labels.txt").write_text("".join(f"class{i} #{i:02x}0000\n" for i in range(labels)))
    text = body if body is not None else HEAD.format(name=name) + INPUT + OUTPUTS[task]
    text += f'\nparameters [ {{ key: "task" value: {{ string_value: "{task}" }} }} ]\n'
    (model_dir / "config.pbtxt").write_text(text)
    return model_dir


@pytest.mark.parametrize("task", list(Task))
def test_each_task_has_a_contract(tmp_path: Path, task: Task):
    write_model(tmp_path, "m", task.value)
    contract = ModelContract.load("m", tmp_path)
    assert (contract.task, contract.input_size, contract.max_batch_size) == (task, (64, 96), 8)
    assert contract.labels.names == ["class0", "class1", "class2"]
    assert contract.max_detections == (50 if task == Task.DETECTION else 0)


@pytest.mark.parametrize(
    ("task", "edit", "field"),
    [
        ("segmentation", lambda t: t.replace('"segmentation"', '"tracking"'), "parameters.task"),
        ("segmentation", lambda t: t.replace("parameters", "# parameters"), "parameters.task"),
        ("segmentation", lambda t: t.replace("dims: [ 64, 96 ]", "dims: [ 32, 96 ]"), "output masks"),
        ("detection", lambda t: t.replace('name: "scores"', 'name: "confidences"'), "output"),
        ("detection", lambda t: t.replace("INT32 dims: [ 50 ]", "INT64 dims: [ 50 ]"), "output class_ids"),
        ("classification", lambda t: t.replace("dims: [ 3 ]", "dims: [ 4 ]"), "output probabilities"),
        (
            "classification",
            lambda t: t.replace(' label_filename: "labels.txt"', ""),
            "output probabilities.label",
        ),
        ("classification", lambda t: t.replace("TYPE_UINT8", "TYPE_FP32", 1), "input"),
        ("classification", lambda t: t.replace("max_batch_size: 8", "max_batch_size: 0"), "max_batch_size"),
    ],
)
def test_a_config_that_breaks_its_task_is_refused_naming_model_and_field(tmp_path, task, edit, field):
    model_dir = write_model(tmp_path, "broken", task)
    (model_dir / "config.pbtxt").write_text(edit((model_dir / "config.pbtxt").read_text()))
    with pytest.raises(ContractError, match=f"^broken: {field}"):
        ModelContract.load("broken", tmp_path)


def test_discovery_reports_a_broken_model_and_keeps_the_others(tmp_path: Path):
    write_model(tmp_path, "good", "classification")
    bad = write_model(tmp_path, "bad", "detection")
    (bad / "config.pbtxt").write_text((bad / "config.pbtxt").read_text().replace('"detection"', '"tracking"'))
    (tmp_path / "not_a_model").mkdir()  # no config.pbtxt: ignored, as Triton does
    found = discover(tmp_path)
    assert list(found.contracts) == ["good"]
    assert "bad: parameters.task" in found.errors["bad"]
    assert found.default_model == "good"  # the only model
    with pytest.raises(KeyError, match="known models: good"):
        found.get("bad")


def test_a_config_variant_must_keep_the_contract(tmp_path: Path):
    model_dir = write_model(tmp_path, "m", "classification")
    (model_dir / "configs").mkdir()
    variant = (model_dir / "config.pbtxt").read_text().replace("max_batch_size: 8", "max_batch_size: 32")
    (model_dir / "configs" / "gpu.pbtxt").write_text(variant)  # batching may differ
    assert "m" in discover(tmp_path).contracts
    (model_dir / "configs" / "cpu.pbtxt").write_text(
        variant.replace("dims: [ 64, 96, 3 ]", "dims: [ 64, 64, 3 ]")
    )
    assert "configs/cpu.pbtxt" in discover(tmp_path).errors["m"]


def test_the_default_model_is_flagged_in_its_config_or_chosen_by_environment(tmp_path, monkeypatch):
    write_model(tmp_path, "a", "classification")
    flagged = write_model(tmp_path, "b", "segmentation")
    assert discover(tmp_path).default_model is None  # two models, none flagged: no guess
    text = (
        (flagged / "config.pbtxt")
        .read_text()
        .replace("parameters [", 'parameters [ { key: "default_model" value: { string_value: "true" } },')
    )
    (flagged / "config.pbtxt").write_text(text)
    assert discover(tmp_path).default_model == "b"
    monkeypatch.setenv("PRODSEG_DEFAULT_MODEL", "a")
    assert discover(tmp_path).default_model == "a"


def test_versions_are_integer_folders_with_files_and_served_by_the_policy(tmp_path: Path):
    model_dir = write_model(tmp_path, "m", "classification")
    for version in (1, 2, 10):
        (model_dir / str(version)).mkdir()
        (model_dir / str(version) / "model.onnx").write_bytes(b"x")
    (model_dir / "3").mkdir()  # empty: a publish that never completed
    (model_dir / "configs").mkdir()  # not a version
    assert versions(model_dir) == [1, 2, 10]
    config = read_model_config(model_dir / "config.pbtxt")
    assert served_versions(config, [1, 2, 10]) == [10]  # Triton's default: the latest one
    config.version_policy.specific.versions.extend([2, 7])
    assert served_versions(config, [1, 2, 10]) == [2]
    config.version_policy.latest.num_versions = 2
    assert served_versions(config, [1, 2, 10]) == [2, 10]
    config.version_policy.all.SetInParent()
    assert served_versions(config, [1, 2, 10]) == [1, 2, 10]


def test_the_repository_holds_only_valid_models_with_their_own_variants():
    found = discover(REPOSITORY)
    assert found.errors == {}
    assert found.default_model == "shelf_segmenter"
    assert set(found.contracts) == {d.name for d in MODEL_DIRS}
    for model_dir in MODEL_DIRS:
        cpu = read_model_config(model_dir / "configs" / "cpu.pbtxt")
        assert cpu.backend == "python" and cpu.parameters["engine"].string_value == "openvino"
        assert (model_dir / "model.py").resolve() == (REPOSITORY / "onnx_runner.py").resolve()


def test_the_chart_deploys_exactly_the_published_models():
    import yaml

    values = yaml.safe_load((REPOSITORY.parent / "charts" / "prodsegmenter" / "values.yaml").read_text())
    published = {d.name for d in MODEL_DIRS if versions(d)}
    assert {"shelf_segmenter", "crack_segmenter", "mask_detector"} <= published
    assert {m["name"] for m in values["models"]} == published
    for entry in values["models"]:
        assert entry["version"] in versions(REPOSITORY / entry["name"]), entry


def test_the_gpu_configs_use_tensorrt_on_gpus():
    for model_dir in MODEL_DIRS:
        gpu = read_model_config(model_dir / "configs" / "gpu.pbtxt")
        assert gpu.instance_group[0].kind == gpu.instance_group[0].KIND_GPU, model_dir.name
        accelerators = gpu.optimization.execution_accelerators.gpu_execution_accelerator
        assert [a.name for a in accelerators] == ["tensorrt"] or gpu.backend == "tensorrt", model_dir.name


def test_frames_are_resized_to_the_model(contract):
    frame = np.random.default_rng(0).integers(0, 255, (720, 1280, 3), dtype=np.uint8)
    assert contract.to_model_input(frame).shape == (contract.height, contract.width, 3)
    with pytest.raises(ValueError, match="expected an RGB uint8 frame"):
        contract.to_model_input(np.zeros((10, 10), np.uint8))


def test_a_copied_model_folder_keeps_its_contract(tmp_path: Path):
    shutil.copytree(
        REPOSITORY / "shelf_segmenter",
        tmp_path / "shelf_segmenter",
        symlinks=False,
        ignore=shutil.ignore_patterns("*.onnx", "model.py"),
    )
    assert ModelContract.load("shelf_segmenter", tmp_path) == ModelContract.load("shelf_segmenter")


JPEG_INPUTS = """input [
  { name: "images" data_type: TYPE_UINT8 dims: [ 64, 96, 3 ] optional: true },
  { name: "jpeg" data_type: TYPE_UINT8 dims: [ -1 ] optional: true allow_ragged_batch: true }
]
"""
PNG_OUTPUT = '  { name: "masks_png" data_type: TYPE_STRING dims: [ 1 ] }\n'


def jpeg_config(name: str, task: str) -> str:
    outputs = OUTPUTS[task]
    if task == "segmentation":
        outputs = outputs.replace("} ]", "},\n" + PNG_OUTPUT + "]")
    return HEAD.format(name=name) + JPEG_INPUTS + outputs


@pytest.mark.parametrize("task", list(Task))
def test_a_config_may_also_take_the_frames_as_jpeg(tmp_path: Path, task: Task):
    write_model(tmp_path, "m", task.value, body=jpeg_config("m", task.value))
    contract = ModelContract.load("m", tmp_path)
    assert contract.takes_jpeg and contract.input_name == "images" and contract.input_size == (64, 96)
    assert "masks_png" not in contract.output_names  # the raw outputs stay the contract's
    write_model(tmp_path, "plain", task.value)
    assert not ModelContract.load("plain", tmp_path).takes_jpeg


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (lambda t: t.replace("dims: [ -1 ] optional: true", "dims: [ 4 ] optional: true"), "TYPE_UINT8 [-1]"),
        (lambda t: t.replace(" allow_ragged_batch: true", ""), "allow_ragged_batch"),
        (lambda t: t.replace("dims: [ 64, 96, 3 ] optional: true", "dims: [ 64, 96, 3 ]"), "optional"),
        (lambda t: t.replace(",\n" + PNG_OUTPUT, "\n"), "masks_png"),
        (
            lambda t: t.replace('"masks_png" data_type: TYPE_STRING', '"masks_png" data_type: TYPE_UINT8'),
            "masks_png",
        ),
        (lambda t: t.replace('name: "jpeg"', 'name: "png"'), "expected 'images'"),
    ],
)
def test_a_jpeg_input_that_cannot_serve_the_wire_is_refused_naming_why(tmp_path: Path, edit, reason):
    write_model(tmp_path, "m", "segmentation", body=edit(jpeg_config("m", "segmentation")))
    with pytest.raises(ContractError, match=re.escape(reason)):
        ModelContract.load("m", tmp_path)


def test_a_cpu_variant_that_takes_jpeg_keeps_the_contract(tmp_path: Path):
    model_dir = write_model(tmp_path, "m", "segmentation")
    (model_dir / "configs").mkdir()
    variant = (
        jpeg_config("m", "segmentation")
        + '\nparameters [ { key: "task" value: { string_value: "segmentation" } } ]\n'
    )
    (model_dir / "configs" / "cpu.pbtxt").write_text(variant)
    found = discover(tmp_path)
    assert "m" in found.contracts and not found.errors


def test_the_served_cpu_configs_take_jpeg_and_the_portable_ones_do_not():
    """The embedded server's configs decode JPEG in the model's process; config.pbtxt (TensorRT and
    ONNX Runtime backends, which cannot) keeps the one input."""
    for model_dir in MODEL_DIRS:
        assert ModelContract.load(model_dir.name, REPOSITORY, "configs/cpu.pbtxt").takes_jpeg, model_dir.name
        assert not ModelContract.load(model_dir.name, REPOSITORY).takes_jpeg, model_dir.name
