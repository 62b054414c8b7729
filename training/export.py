"""The serving graph: the model I/O contract inside the model, ONNX export, parity, OpenVINO IR.

:class:`ServingModel` wraps a trained network and its task's serving head (:mod:`training.tasks`)
so that it takes what Triton receives (uint8 RGB ``[N, H, W, 3]``) and returns the task's outputs
(``masks``; ``boxes``, ``scores``, ``class_ids``, ``num_detections``; ``probabilities``):
normalisation and post-processing live in the graph, so no client repeats them. Training uses the
same ``preprocess``, so train and serve cannot drift. :func:`export_onnx` writes that graph (batch
dynamic, every other dimension from the contract, slimmed); :func:`check_parity` measures how often
ONNX Runtime and the engine the cpu config serves agree with PyTorch on held-out images.
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from clients.atomic import atomic_path
from clients.contract import OUTPUTS, ModelContract, served_engine
from training.datasets import DatasetError

if TYPE_CHECKING:
    from training.tasks import Predictor, TaskAdapter

# ImageNet statistics: the usual choice for timm encoders, kept even when training from scratch so
# that pretrained encoder weights can be dropped in without changing the serving graph.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


class ServingModel(torch.nn.Module):
    """uint8 RGB ``[N, H, W, 3]`` -> the task's outputs, as a tuple in the contract's order.

    ``model`` is the trainable network (normalised float NCHW in); ``head`` turns its output into
    the serving outputs (argmax, decode + NMS, softmax). Without a head, ``forward`` returns the
    network's raw output (used during training).
    """

    def __init__(self, model: torch.nn.Module, head: torch.nn.Module | None = None) -> None:
        super().__init__()
        self.model = model
        self.head = head
        # Folded into one multiply-add on 0..255 pixels.
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("inv_std", 1.0 / (torch.tensor(STD).view(1, 3, 1, 1) * 255.0))

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 NHWC -> normalised float NCHW; training uses this too, so train and serve match."""
        return (images.permute(0, 3, 1, 2).float() - self.mean) * self.inv_std

    def forward(self, images: torch.Tensor) -> Any:
        raw = self.model(self.preprocess(images))
        return raw if self.head is None else self.head(raw)


def serving_model(model: torch.nn.Module, adapter: TaskAdapter, contract: ModelContract) -> ServingModel:
    """``model`` (a bare network or a ServingModel) with the task's serving head, fp32 on the CPU."""
    network = model.model if isinstance(model, ServingModel) else model
    return ServingModel(network, adapter.serving_head(contract)).cpu().eval()


def torch_predictor(serving: ServingModel, output_names: Sequence[str]) -> Predictor:
    """uint8 ``[N, H, W, 3]`` -> ``{output name: array}`` from PyTorch, on the serving model's device."""
    device = next(serving.parameters()).device
    names = list(output_names)

    def run(images: np.ndarray) -> dict[str, np.ndarray]:
        was_training = serving.training
        serving.eval()
        with torch.inference_mode():
            outputs = serving(torch.from_numpy(images).to(device))
        serving.train(was_training)
        outputs = outputs if isinstance(outputs, tuple | list) else (outputs,)
        return {name: tensor.cpu().numpy() for name, tensor in zip(names, outputs, strict=True)}

    return run


def engine_predictor(
    onnx_path: Path, engine: str = "onnxruntime", threads: int = 0, precision: str = ""
) -> Predictor:
    """The exported graph run by the serving runner's ``OnnxEngine`` (the code Triton runs)."""
    return load_runner().OnnxEngine(Path(onnx_path), engine, threads, precision)


def load_runner(path: Path | None = None) -> Any:
    """``model_repository/onnx_runner.py`` as a module (it is not a package: Triton loads it by path)."""
    from clients.contract import default_repository

    path = Path(path or default_repository() / "onnx_runner.py").resolve()
    spec = importlib.util.spec_from_file_location("prodseg_onnx_runner", path)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"{path}: not a Python module")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def model_input_batches(
    dataset: Sequence[Any], contract: ModelContract, batch_size: int, limit: int | None = None
) -> Iterator[tuple[np.ndarray, list[Any]]]:
    """Stacked model inputs (each ``sample.image`` resized as clients do) with their samples."""
    count = len(dataset) if limit is None else min(limit, len(dataset))
    for start in range(0, count, batch_size):
        samples = [dataset[i] for i in range(start, min(start + batch_size, count))]
        yield np.stack([contract.to_model_input(s.image) for s in samples]), samples


# -------------------------------------------------------------------------------------------- ONNX


def output_dims(contract: ModelContract) -> dict[str, list[int]]:
    """Each output's dims after the batch axis, from the task's rules (H, W, K, C resolved)."""
    symbols = {
        "H": contract.height,
        "W": contract.width,
        "C": contract.num_classes,
        "K": contract.max_detections,
    }
    return {
        rule.name: [symbols[d] if isinstance(d, str) else d for d in rule.dims]
        for rule in OUTPUTS[contract.task]
    }


def export_onnx(
    model: torch.nn.Module, path: Path, contract: ModelContract, adapter: TaskAdapter, opset: int = 17
) -> None:
    """Export the serving model: batch axis dynamic, other dims fixed by the contract; slimmed.

    Written with :mod:`clients.atomic`, so readers never see half a file.
    """
    import onnx
    import onnxslim

    serving = serving_model(model, adapter, contract)
    example = torch.zeros((1, contract.height, contract.width, 3), dtype=torch.uint8)
    names = list(contract.output_names)
    with atomic_path(path) as partial:
        # The legacy exporter: 0.4-2.5 s per model against 5-10 s for dynamo=True (see NOTES); its
        # deprecation warning is noise until it stops working.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                serving,
                (example,),
                str(partial),
                opset_version=opset,
                dynamo=False,
                input_names=[contract.input_name],
                output_names=names,
                dynamic_axes={name: {0: "batch"} for name in [contract.input_name, *names]},
            )
        slimmed = onnxslim.slim(onnx.load(str(partial)))
        # The tracer loses sizes through the decoder's scale-factor Resizes (and may label a spatial
        # dim "batch"): state the contract's output shapes so Triton and readers see them.
        dims = output_dims(contract)
        for output in slimmed.graph.output:
            shape = output.type.tensor_type.shape.dim
            del shape[:]
            shape.add().dim_param = "batch"
            for size in dims[output.name]:
                shape.add().dim_value = size
        onnx.checker.check_model(slimmed, full_check=True)
        onnx.save(slimmed, str(partial))


# ------------------------------------------------------------------------------------------ parity


@dataclass(frozen=True)
class ParityResult:
    """Share of units (pixels, detections, images) where an engine agrees with PyTorch fp32.

    ``served`` is the engine of the served config (``configs/cpu.pbtxt``: its ``engine``
    parameter, OpenVINO on the embedded server) run through the serving runner's ``OnnxEngine``,
    exactly as Triton's python backend runs it.
    """

    onnxruntime: float
    served: float
    served_engine: str  # e.g. "openvino"
    served_precision: str  # e.g. "bf16": OpenVINO's CPU default where the CPU has it
    units: int
    images: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_parity(
    model: torch.nn.Module,
    onnx_path: Path,
    dataset: Sequence[Any],
    contract: ModelContract,
    adapter: TaskAdapter,
    repository: Path,
    max_images: int = 16,
    batch_size: int = 4,
) -> ParityResult:
    """ONNX Runtime and the served engine vs PyTorch fp32 on up to ``max_images`` held-out images.

    OpenVINO runs as the served config says (bf16 on CPUs that have it), so its agreement may be a
    little below 1; ONNX Runtime fp32 should agree almost exactly. The gate holds both to floors.
    """
    reference = torch_predictor(serving_model(model, adapter, contract), contract.output_names)
    onnxruntime_run = engine_predictor(onnx_path, "onnxruntime")
    served = served_engine(repository, contract.model_name)
    served_run = engine_predictor(onnx_path, *served)
    precision = _precision(onnx_path, served.precision) if served_run.engine == "openvino" else "fp32"

    total = ort_same = served_same = images = 0
    for batch, _ in model_input_batches(dataset, contract, batch_size, max_images):
        expected = reference(batch)
        same, count = adapter.agreement(expected, onnxruntime_run(batch))
        ort_same, total = ort_same + same, total + count
        served_same += adapter.agreement(expected, served_run(batch))[0]
        images += len(batch)
    if not total:
        raise DatasetError("parity needs at least one held-out image: the test split is empty")
    return ParityResult(
        onnxruntime=round(ort_same / total, 6),
        served=round(served_same / total, 6),
        served_engine=served_run.engine,
        served_precision=precision,
        units=total,
        images=images,
    )


def _precision(onnx_path: Path, hint: str) -> str:
    import openvino as ov

    compiled = ov.Core().compile_model(
        str(onnx_path), "CPU", {"INFERENCE_PRECISION_HINT": hint} if hint else {}
    )
    return compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()


def export_openvino(onnx_path: Path, out_dir: Path) -> list[Path]:
    """OpenVINO IR (``model.xml`` + ``model.bin``, fp32 weights) beside the ONNX, for OpenVINO backends."""
    import openvino as ov

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".openvino-", dir=out_dir))
    try:
        ov.save_model(ov.convert_model(str(onnx_path)), str(staging / "model.xml"), compress_to_fp16=False)
        written = []
        for name in ("model.bin", "model.xml"):  # the .xml last: it is what a loader opens
            (staging / name).replace(out_dir / name)
            written.append(out_dir / name)
        return written
    finally:
        shutil.rmtree(staging, ignore_errors=True)
