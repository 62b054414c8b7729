"""The published mask_detector served by the real embedded Triton (python backend, OpenVINO)."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from clients.contract import ModelContract
from clients.repository import discover, versions
from clients.results import Detections
from datagen.faces import render_faces, scene_seed

pytestmark = pytest.mark.triton
NAME = "mask_detector"


@pytest.fixture(scope="module")
def contract() -> ModelContract:
    found = discover()
    assert NAME not in found.errors, found.errors.get(NAME)
    if not versions(found.repository / NAME):
        pytest.skip("mask_detector has no published version yet: run its pipeline config")
    return found.get(NAME)


@pytest.fixture(scope="module")
def server(tmp_path_factory, contract):
    from prodseg.triton_server import TritonServer

    with TritonServer(models=(NAME,), log_path=tmp_path_factory.mktemp("triton") / "triton.log") as server:
        yield server


@pytest.fixture(scope="module")
def scenes(contract):
    return [render_faces(scene_seed("test", i), contract.height, contract.width, "test") for i in range(4)]


def _infer(server, contract, images: np.ndarray) -> dict[str, np.ndarray]:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        tensor = grpcclient.InferInput(contract.input_name, list(images.shape), "UINT8")
        tensor.set_data_from_numpy(images)
        result = client.infer(NAME, [tensor])
        return {name: result.as_numpy(name) for name in contract.output_names}
    finally:
        client.close()


def test_served_detections_follow_the_contract_and_find_the_faces(server, contract, scenes) -> None:
    images = np.stack([s.image for s in scenes])
    outputs = _infer(server, contract, images)
    k = contract.max_detections
    assert outputs["boxes"].shape == (4, k, 4) and outputs["boxes"].dtype == np.float32
    assert outputs["scores"].shape == (4, k) and outputs["class_ids"].dtype == np.int32
    assert outputs["num_detections"].shape == (4, 1)
    found = Detections.from_outputs(outputs)  # the SDK's validating result type accepts them
    confident = sum(len(d.with_min_confidence(0.5)) for d in found)
    faces = sum(len(s.boxes) for s in scenes)
    assert faces > 0 and 0.5 * faces <= confident <= 2 * faces


def test_served_detections_equal_the_bare_engine(server, contract, scenes) -> None:
    from prodseg.engine import load_engine
    from training.detection.parity import agreement

    images = np.stack([s.image for s in scenes[:2]])
    agreeing, units = agreement(
        load_engine(NAME, engine="openvino")(images), _infer(server, contract, images)
    )
    assert agreeing == units
