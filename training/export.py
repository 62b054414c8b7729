"""The serving graph: the model I/O contract inside the model, ONNX export, parity, OpenVINO IR.

:class:`ServingModel` wraps a trained network so that it takes what Triton receives (uint8 RGB
``[N, H, W, 3]``) and returns what clients want (uint8 class ids ``[N, H, W]``): normalisation and
argmax live in the graph, so no client repeats them. Training uses the same ``preprocess``, so train
and serve cannot drift. :func:`export_onnx` writes that graph (batch dynamic, H and W from the
contract, slimmed); :func:`check_parity` measures how often ONNX Runtime and OpenVINO pick the same
class as PyTorch on held-out images.
"""

from __future__ import annotations

import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clients.contract import ModelContract
from training.datasets import DatasetError, Sample, SegmentationDataset, replace_atomically

# ImageNet statistics: the usual choice for timm encoders, kept even when training from scratch so
# that pretrained encoder weights can be dropped in without changing the serving graph.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

Predictor = Callable[[np.ndarray], np.ndarray]


class ServingModel(torch.nn.Module):
    """The model I/O contract in the graph: uint8 RGB ``[N, H, W, 3]`` -> uint8 class ids ``[N, H, W]``."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        # Folded into one multiply-add on 0..255 pixels.
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("inv_std", 1.0 / (torch.tensor(STD).view(1, 3, 1, 1) * 255.0))

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 NHWC -> normalised float NCHW; training uses this too, so train and serve match."""
        return (images.permute(0, 3, 1, 2).float() - self.mean) * self.inv_std

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(self.preprocess(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits(images).argmax(dim=1).to(torch.uint8)


def predictor(model_or_onnx: torch.nn.Module | Path | str) -> Predictor:
    """uint8 ``[N, H, W, 3]`` -> uint8 ``[N, H, W]`` for a torch model (fp32) or an ONNX file (ORT)."""
    if isinstance(model_or_onnx, torch.nn.Module):
        serving = model_or_onnx if isinstance(model_or_onnx, ServingModel) else ServingModel(model_or_onnx)
        device = next(serving.parameters()).device
        serving = serving.to(device).eval()  # a fresh wrapper's buffers start on the CPU

        def run_torch(images: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return serving(torch.from_numpy(images).to(device)).cpu().numpy()

        return run_torch

    import onnxruntime as ort

    session = ort.InferenceSession(str(model_or_onnx), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    return lambda images: session.run(None, {input_name: images})[0]


def model_input_batches(
    dataset: SegmentationDataset, contract: ModelContract, batch_size: int, limit: int | None = None
) -> Iterator[tuple[np.ndarray, list[Sample]]]:
    """Stacked model inputs (each image resized to the contract as clients do) with their samples."""
    count = len(dataset) if limit is None else min(limit, len(dataset))
    for start in range(0, count, batch_size):
        samples = [dataset[i] for i in range(start, min(start + batch_size, count))]
        yield np.stack([contract.to_model_input(s.image) for s in samples]), samples


# -------------------------------------------------------------------------------------------- ONNX


def export_onnx(model: torch.nn.Module, path: Path, contract: ModelContract, opset: int = 17) -> None:
    """Export ``ServingModel(model)``: batch axis dynamic, H and W fixed by the contract; slimmed.

    Written to a temporary file beside ``path`` and moved into place, so readers never see half a file.
    """
    import onnx
    import onnxslim

    serving = (model if isinstance(model, ServingModel) else ServingModel(model)).cpu().eval()
    example = torch.zeros((1, contract.height, contract.width, 3), dtype=torch.uint8)

    def write(tmp: Path) -> None:
        # The legacy exporter: 0.4-2.5 s per model against 5-10 s for dynamo=True (see NOTES); its
        # deprecation warning is noise until it stops working.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                serving,
                (example,),
                str(tmp),
                opset_version=opset,
                dynamo=False,
                input_names=[contract.input_name],
                output_names=[contract.output_name],
                dynamic_axes={contract.input_name: {0: "batch"}, contract.output_name: {0: "batch"}},
            )
        slimmed = onnxslim.slim(onnx.load(str(tmp)))
        # The tracer loses H and W through the decoder's scale-factor Resizes and even labels the
        # output's dim 1 "batch": state the contract's output shape so Triton and readers see it.
        (output,) = slimmed.graph.output
        dims = output.type.tensor_type.shape.dim
        del dims[:]
        dims.add().dim_param = "batch"
        for size in (contract.height, contract.width):
            dims.add().dim_value = size
        onnx.checker.check_model(slimmed, full_check=True)
        onnx.save(slimmed, str(tmp))

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_atomically(path, write)


@dataclass(frozen=True)
class ParityResult:
    """Fraction of pixels where an engine picks the same class as PyTorch fp32 on the same images."""

    onnxruntime: float
    openvino: float
    openvino_precision: str  # e.g. "bf16": OpenVINO's CPU default, as the serving backend runs it
    pixels: int
    images: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_parity(
    model: torch.nn.Module,
    onnx_path: Path,
    dataset: SegmentationDataset,
    contract: ModelContract,
    max_images: int = 16,
    batch_size: int = 4,
) -> ParityResult:
    """ONNX Runtime and OpenVINO vs PyTorch fp32 on up to ``max_images`` held-out images.

    OpenVINO runs with its CPU defaults (bf16 on CPUs that have it), as the serving backend does, so
    its agreement is below 1 by design and only reported; ONNX Runtime fp32 should agree almost
    exactly, and the quality gate holds it to that.
    """
    import openvino as ov

    reference = predictor(model)
    onnxruntime_run = predictor(onnx_path)
    compiled = ov.Core().compile_model(str(onnx_path), "CPU")
    precision = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()

    total = ort_same = ov_same = images = 0
    for batch, _ in model_input_batches(dataset, contract, batch_size, max_images):
        expected = reference(batch)
        ort_same += int((onnxruntime_run(batch) == expected).sum())
        ov_same += int((compiled(batch)[0] == expected).sum())
        total += expected.size
        images += len(batch)
    if not total:
        raise DatasetError("parity needs at least one held-out image: the test split is empty")
    return ParityResult(
        onnxruntime=round(ort_same / total, 6),
        openvino=round(ov_same / total, 6),
        openvino_precision=precision,
        pixels=total,
        images=images,
    )


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
