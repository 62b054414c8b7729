"""The JPEG wire without Triton: the served decoder's and encoder's own code, the SDK's codecs, the
companions' configs (discover keeps them out of the models) and the nvJPEG variant as data."""

from __future__ import annotations

import ast
import asyncio
import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from clients import config_text
from clients.contract import ModelContract, default_repository, read_model_config
from clients.masks import decode_mask_png
from clients.repository import discover, versions
from clients.triton_client import TritonModelClient
from clients.wire import (
    CODEC_TASK,
    JPEG_INPUT,
    JPEG_WIRE_TASK,
    PNG_MASKS,
    JpegRoute,
    Wire,
    decode_jpeg,
    encode_jpeg,
    jpeg_route,
    jpeg_route_from_triton,
    jpeg_rows,
    looks_like_jpeg,
    masks_from_pngs,
    tensor_bytes,
    wire_model_name,
    wire_output_names,
)

REPOSITORY = default_repository()
CODECS = ("jpeg_decoder", "mask_encoder")


def served_module(name: str):
    """A companion's model.py from the repository, loaded by path (it imports Triton's utils lazily)."""
    spec = importlib.util.spec_from_file_location(f"served_{name}", REPOSITORY / name / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def decoder():
    return served_module("jpeg_decoder")


@pytest.fixture(scope="module")
def encoder():
    return served_module("mask_encoder")


@pytest.fixture(scope="module")
def scene():
    from datagen.shelves import render_scene

    return render_scene(3)


# --- masks: PNG out, bit-identical in ---


def mask_cases() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "random ids": rng.integers(0, 4, (384, 640), dtype=np.uint8),
        "all 256 values (the up filter wraps)": rng.integers(0, 256, (37, 53), dtype=np.uint8),
        "one pixel": np.array([[7]], np.uint8),
        "one row": rng.integers(0, 3, (1, 640), dtype=np.uint8),
        "one column": rng.integers(0, 3, (384, 1), dtype=np.uint8),
        "empty background": np.zeros((384, 640), np.uint8),
        "stripes": np.tile(np.array([[0], [255]], np.uint8), (192, 640)),
    }


@pytest.mark.parametrize("name", list(mask_cases()))
@pytest.mark.parametrize("row_filter", [0, 1, 2])
def test_masks_round_trip_bit_identical_through_the_served_encoder(encoder, name, row_filter):
    mask = mask_cases()[name]
    png = encoder.encode_png(mask, row_filter=row_filter)
    assert np.array_equal(decode_mask_png(png), mask)


def test_a_shelf_mask_is_under_a_twentieth_of_its_bytes(encoder, scene):
    png = encoder.encode_png(scene.mask)
    assert len(png) <= scene.mask.nbytes / 20
    assert np.array_equal(decode_mask_png(png), scene.mask)


def test_the_encoder_refuses_what_is_not_a_class_mask(encoder):
    with pytest.raises(ValueError, match="UINT8"):
        encoder.encode_png(np.zeros((4, 4), np.int32))


def test_the_sdk_decodes_a_bytes_tensor_of_pngs(encoder, scene):
    other = np.flipud(scene.mask).copy()
    tensor = np.array([[encoder.encode_png(scene.mask)], [encoder.encode_png(other)]], dtype=np.object_)
    masks = masks_from_pngs(tensor)
    assert masks.shape == (2, *scene.mask.shape)
    assert np.array_equal(masks[0], scene.mask) and np.array_equal(masks[1], other)
    assert tensor_bytes(tensor) == sum(len(png) + 4 for png in tensor.ravel())


# --- frames: JPEG in, decoded by the served decoder ---


def test_jpeg_rows_pad_with_zeros_the_decoder_ignores(decoder, scene):
    small = encode_jpeg(scene.image, 30)
    large = encode_jpeg(np.ascontiguousarray(scene.image[::-1]), 95)
    rows = jpeg_rows([small, large])
    assert rows.shape == (2, len(large)) and rows.dtype == np.uint8
    assert not rows[0, len(small) :].any()
    images = decoder.decode_jpeg_rows(rows)
    assert images.shape == (2, *scene.image.shape)
    # The served decoder gives what the SDK's decode gives (both OpenCV): the same pixels.
    assert np.array_equal(images[0], decode_jpeg(small)) and np.array_equal(images[1], decode_jpeg(large))
    assert np.abs(images[1].astype(int) - scene.image[::-1]).mean() < 8  # close to the frame it encodes


def test_an_opencv_without_direct_rgb_decoding_gives_the_same_frames(decoder, scene, monkeypatch):
    # A CPU pool's own image may carry an OpenCV older than 4.10 (no IMREAD_COLOR_RGB): it swaps.
    rows = jpeg_rows([encode_jpeg(scene.image, 80)])
    direct = decoder.decode_jpeg_rows(rows)
    monkeypatch.delattr(decoder.cv2, "IMREAD_COLOR_RGB")
    swapped = decoder.decode_jpeg_rows(rows)
    assert direct.shape == swapped.shape == (1, *scene.image.shape)
    assert np.array_equal(direct, swapped) and direct.flags.c_contiguous


def test_encode_jpeg_keeps_rgb_order(scene):
    frame = np.zeros((64, 64, 3), np.uint8)
    frame[..., 0] = 200  # red
    decoded = decode_jpeg(encode_jpeg(frame, 90))
    assert decoded[..., 0].mean() > 180 and decoded[..., 2].mean() < 20
    with pytest.raises(ValueError, match="quality"):
        encode_jpeg(frame, 0)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda jpeg: b"not a jpeg at all", "not a JPEG"),
        (lambda jpeg: jpeg[: len(jpeg) // 2], "truncated"),
        (lambda jpeg: jpeg[:-2], "truncated"),
        (lambda jpeg: jpeg[:2] + bytes(range(256)) * 8 + jpeg[-2:], "corrupt"),
    ],
    ids=["garbage", "cut in half", "no end marker", "corrupt body"],
)
def test_a_bad_frame_is_refused_with_its_reason(decoder, scene, make, message):
    jpeg = encode_jpeg(scene.image)
    with pytest.raises(decoder.FrameError, match=message):
        decoder.decode_jpeg_rows(jpeg_rows([make(jpeg)]))
    assert decoder.decode_jpeg_rows(jpeg_rows([jpeg])).shape == (1, *scene.image.shape)  # the next decodes


def test_frames_of_different_sizes_in_one_request_are_refused(decoder, scene):
    other = np.ascontiguousarray(scene.image[:100, :100])
    with pytest.raises(decoder.FrameError, match="differ in size"):
        decoder.decode_jpeg_rows(jpeg_rows([encode_jpeg(scene.image), encode_jpeg(other)]))


def test_looks_like_jpeg(scene):
    import cv2

    assert looks_like_jpeg(encode_jpeg(scene.image))
    assert not looks_like_jpeg(cv2.imencode(".png", scene.image)[1].tobytes())


# --- the SDK's defaults ---


def test_the_sdk_stays_raw_unless_asked(contract):
    async def make() -> tuple[Wire, Wire, int]:
        raw = TritonModelClient("127.0.0.1:9", contract)
        jpeg = TritonModelClient("127.0.0.1:9", contract, wire="jpeg", jpeg_quality=70)
        try:
            return raw.wire, jpeg.wire, jpeg.jpeg_quality
        finally:
            await raw.close()
            await jpeg.close()

    assert asyncio.run(make()) == (Wire.RAW, Wire.JPEG, 70)
    with pytest.raises(ValueError):
        TritonModelClient("127.0.0.1:9", contract, wire="png")


def test_wire_names_and_outputs(contract):
    assert wire_model_name("shelf_segmenter") == "shelf_segmenter_jpeg"
    assert wire_output_names(contract) == (PNG_MASKS,)
    detector = ModelContract.load("mask_detector")
    assert wire_output_names(detector) == detector.output_names  # detections come back as they are


# --- the repository: companions, not models ---


def test_companions_are_not_models_and_every_served_model_has_its_wire():
    found = discover(REPOSITORY)
    assert found.errors == {}
    assert not set(found.companions) & set(found.contracts)
    assert {name for name, c in found.companions.items() if c.task == CODEC_TASK} == set(CODECS)
    published = [name for name in found.contracts if versions(REPOSITORY / name)]
    wires = found.companions_of(published)
    assert set(wires) == {*CODECS, *(wire_model_name(name) for name in published)}
    for name in published:
        assert found.companions[wire_model_name(name)].serves == name
    assert found.companions_of([]) == ()  # no model, no helpers


def scratch_repository(tmp_path: Path, *companions: str) -> Path:
    """The shelf model's folder (configs only) and the named companions, copied."""
    ignore = shutil.ignore_patterns("*.onnx", "__pycache__")
    for name in ("shelf_segmenter", *companions):
        shutil.copytree(REPOSITORY / name, tmp_path / name, ignore=ignore)
    return tmp_path


def test_a_wire_whose_model_is_absent_is_left_out_quietly(tmp_path):
    repository = scratch_repository(tmp_path, *CODECS, "shelf_segmenter_jpeg")
    shutil.copytree(REPOSITORY / "mask_detector_jpeg", repository / "mask_detector_jpeg")
    found = discover(repository)
    assert found.errors == {} and "mask_detector_jpeg" not in found.companions
    assert found.companions_of(["shelf_segmenter"]) == (*CODECS, "shelf_segmenter_jpeg")


def test_a_wire_that_does_not_fit_its_model_is_reported(tmp_path):
    repository = scratch_repository(tmp_path, *CODECS, "shelf_segmenter_jpeg")
    config = repository / "shelf_segmenter_jpeg" / "config.pbtxt"
    config.write_text(config.read_text().replace('name: "masks_png"', 'name: "masks"'))
    found = discover(repository)
    assert "expected outputs ['masks_png']" in found.errors["shelf_segmenter_jpeg"]
    assert found.companions_of(["shelf_segmenter"]) == ()
    assert "shelf_segmenter" in found.contracts  # the model itself still serves, raw


@pytest.mark.parametrize(
    ("old", "new", "reported"),
    [
        ('name: "masks_png"', 'name: "masks"', "configs/cpu.pbtxt: name, inputs or outputs differ"),
        ('value: "shelf_segmenter" }', 'value: "crack_segmenter" }', "must be 'shelf_segmenter'"),
    ],
)
def test_a_wire_variant_that_serves_another_way_is_reported(tmp_path, old, new, reported):
    repository = scratch_repository(tmp_path, *CODECS, "shelf_segmenter_jpeg")
    variant = repository / "shelf_segmenter_jpeg" / "configs" / "cpu.pbtxt"
    assert old in variant.read_text()
    variant.write_text(variant.read_text().replace(old, new))
    assert reported in discover(repository).errors["shelf_segmenter_jpeg"]


def test_a_wire_needs_its_codecs_in_the_repository(tmp_path):
    repository = scratch_repository(tmp_path, "jpeg_decoder", "shelf_segmenter_jpeg")
    assert "mask_encoder" in discover(repository).errors["shelf_segmenter_jpeg"]


def test_a_wire_that_pins_a_version_is_reported(tmp_path):
    repository = scratch_repository(tmp_path, *CODECS, "shelf_segmenter_jpeg")
    config = repository / "shelf_segmenter_jpeg" / "config.pbtxt"
    config.write_text(config.read_text().replace("model_version: -1", "model_version: 1", 1))
    assert "model_version -1" in discover(repository).errors["shelf_segmenter_jpeg"]


# --- the nvJPEG (DALI) variant, checked as data: it cannot run here ---


def test_the_gpu_decoder_is_dali_with_the_cpu_decoders_tensors():
    cpu_text = (REPOSITORY / "jpeg_decoder" / "config.pbtxt").read_text()
    gpu_text = (REPOSITORY / "jpeg_decoder" / "configs" / "gpu.pbtxt").read_text()
    cpu, gpu = config_text.parse(cpu_text), config_text.parse(gpu_text)
    assert gpu.get("backend") == "dali" and cpu.get("backend") == "python"

    def tensors(parsed, field: str) -> list[tuple]:
        return [(t.get("name"), t.get("data_type"), t.all("dims")) for t in parsed.all(field)]

    assert tensors(gpu, "input") == tensors(cpu, "input") == [("jpeg", "TYPE_UINT8", ["-1"])]
    assert tensors(gpu, "output") == tensors(cpu, "output") == [("images", "TYPE_UINT8", ["-1", "-1", "3"])]
    assert gpu.get("max_batch_size") == cpu.get("max_batch_size")
    # The same, read by Triton's own schema; and the variant check discover() applies holds.
    schema = text_format.Parse(gpu_text, model_config_pb2.ModelConfig())
    assert schema.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert list(schema.input) == list(read_model_config(REPOSITORY / "jpeg_decoder" / "config.pbtxt").input)
    assert schema.parameters["task"].string_value == CODEC_TASK


def call_keywords(tree: ast.AST, function: str) -> list[dict[str, object]]:
    """The literal keyword arguments of every call to ``function`` (``fn.X`` or a bare name)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            callee = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if callee == function:
                found.append({k.arg: _literal(k.value) for k in node.keywords})
    return found


def _literal(node: ast.expr) -> object:
    """A constant's value, ``types.UINT8`` as "types.UINT8", a module constant's name as itself."""
    if isinstance(node, ast.Attribute):
        return f"{ast.unparse(node.value)}.{node.attr}"
    return ast.literal_eval(node) if isinstance(node, ast.Constant) else ast.unparse(node)


def test_the_dali_pipeline_the_backend_autoserializes_fits_the_gpu_config():
    """1/dali.py, read as source (DALI does not install here): the DALI backend serializes it at
    load, feeds each config input to the external_source of that name and maps the pipeline's
    outputs to the config's outputs by position."""
    source = (REPOSITORY / "jpeg_decoder" / "1" / "dali.py").read_text()
    tree = ast.parse(source)
    gpu = read_model_config(REPOSITORY / "jpeg_decoder" / "configs" / "gpu.pbtxt")
    assert gpu.default_model_filename == "dali.py"
    (pipeline,) = [node for node in tree.body if isinstance(node, ast.FunctionDef)]
    # autoserialize must wrap a pipeline_def, so it is the outer decorator.
    decorators = [ast.unparse(d).split("(")[0] for d in pipeline.decorator_list]
    assert decorators == ["autoserialize", "pipeline_def"]
    constants = {
        target.id: ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign)
        for target in node.targets
        if isinstance(target, ast.Name)
    }
    (definition,) = call_keywords(pipeline, "pipeline_def")
    assert constants[definition["batch_size"]] == gpu.max_batch_size
    sources = call_keywords(pipeline, "external_source")
    assert [s["name"] for s in sources] == [tensor.name for tensor in gpu.input] == ["jpeg"]
    assert sources[0]["dtype"] == "types.UINT8" and sources[0]["device"] == "cpu"
    (decode,) = call_keywords(pipeline, "image")
    assert decode == {"device": "mixed", "output_type": "types.RGB"}
    (returned,) = [node for node in ast.walk(pipeline) if isinstance(node, ast.Return)]
    assert isinstance(returned.value, ast.Call)  # one output, as the config has one: "images"
    assert [tensor.name for tensor in gpu.output] == ["images"]


def test_the_one_step_wire_speaks_the_sdks_tensor_names():
    """model_repository/jpeg_wire.py cannot import clients/ (a Triton pod has only the repository)."""
    spec = importlib.util.spec_from_file_location("served_jpeg_wire", REPOSITORY / "jpeg_wire.py")
    wire = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(wire)
    assert (wire.JPEG_INPUT, wire.PNG_MASKS) == (JPEG_INPUT, PNG_MASKS)
    for name in ("shelf_segmenter", "mask_detector"):
        contract = ModelContract.load(name)
        assert wire.MODEL_INPUT == contract.input_name
        assert wire.model_outputs(list(wire_output_names(contract))) == list(contract.output_names)


def test_the_model_runner_speaks_the_sdks_tensor_names():
    """model_repository/onnx_runner.py takes JPEG frames itself under the SDK's names."""
    spec = importlib.util.spec_from_file_location("served_onnx_runner", REPOSITORY / "onnx_runner.py")
    runner = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runner)
    assert (runner.JPEG_INPUT, runner.PNG_MASKS) == (JPEG_INPUT, PNG_MASKS)
    assert runner.MASKS == ModelContract.load("shelf_segmenter").output_names[0]


@pytest.mark.parametrize(
    ("ready", "inputs", "route"),
    [
        # The wire served and the model takes JPEG: straight to the model (no hop through another stub).
        ([("m", "1"), ("m", "2"), ("m_jpeg", "1")], ["images", "jpeg"], JpegRoute("m", True, True, "2")),
        # A model that takes raw pixels only (GPU config): the ensemble.
        ([("m", "2"), ("m_jpeg", "1")], ["images"], JpegRoute("m_jpeg", False, True, "2")),
        # No wire served (a server without the codecs): not ready, whatever the model's inputs.
        ([("m", "2")], ["images", "jpeg"], JpegRoute("m_jpeg", False, False, "2")),
        # The model unready: the ensemble, whose readiness Triton reports.
        ([("m_jpeg", "1")], [], JpegRoute("m_jpeg", False, True, "")),
    ],
)
def test_jpeg_frames_go_to_the_model_when_it_takes_them(ready, inputs, route):
    assert jpeg_route("m", ready, inputs) == route


def test_the_route_reads_tritons_index_and_metadata_as_json():
    index = {
        "models": [
            {"name": "m", "version": "1", "state": "UNAVAILABLE"},
            {"name": "m", "version": "2", "state": "READY"},
            {"name": "m_jpeg", "version": "1", "state": "READY"},
        ]
    }
    metadata = {"name": "m", "inputs": [{"name": "images"}, {"name": "jpeg"}]}
    assert jpeg_route_from_triton("m", index, metadata) == JpegRoute("m", True, True, "2")
    assert jpeg_route_from_triton("m", index, None) == JpegRoute("m_jpeg", False, True, "2")
    assert jpeg_route_from_triton("m", {}, None) == JpegRoute("m_jpeg", False, False, "")


def test_every_wire_config_names_its_model_and_runs_the_newest_version():
    for path in sorted(REPOSITORY.glob("*_jpeg/config.pbtxt")):
        config = read_model_config(path)
        assert config.platform == "ensemble"
        assert config.parameters["task"].string_value == JPEG_WIRE_TASK
        served = config.parameters["serves"].string_value
        assert path.parent.name == wire_model_name(served)
        steps = [step.model_name for step in config.ensemble_scheduling.step]
        assert steps[:2] == ["jpeg_decoder", served] and all(
            step.model_version == -1 for step in config.ensemble_scheduling.step
        )
        # The CPU variant: the same wire in one python step, linked to the shared wire code.
        variant = read_model_config(path.parent / "configs" / "cpu.pbtxt")
        assert variant.backend == "python" and variant.parameters["serves"].string_value == served
        assert (path.parent / "1" / "model.py").resolve() == REPOSITORY / "jpeg_wire.py"
