"""TensorRT engines for GPU nodes: ``model.sm<CC>.plan`` per compute capability, next to model.onnx.

One TensorRT path for the platform. A plan only runs on the GPU architecture it was built for, so a
version folder can hold one plan per compute capability (``model.sm90.plan`` for H100,
``model.sm80.plan`` for A100). Two builders write them under the same name
(:func:`clients.config_text.plan_filename`) with the same shapes and precision, read from the config
Triton serves (:func:`clients.config_text.tensorrt_profile`):

- ``prodseg build-engine`` (this module), on any machine with a GPU and the ``tensorrt`` package;
- the Helm chart's engine-build Jobs (``charts/prodsegmenter/files/build-engine.sh``, ``trtexec``).

Neither writes a config. The published ``configs/gpu.pbtxt`` stays ONNX Runtime with its TensorRT
execution provider: the fallback that serves any version on any GPU. Whether a plan serves is
decided where the GPU is known, at pod start: ``charts/prodsegmenter/files/prepare_model.py``
switches the served config with :func:`clients.config_text.use_tensorrt_plans` when the version
folder holds a plan for the node's compute capability. :func:`build_engine` runs that same switch on
the config once and checks the result with Triton's schema, so a plan it writes is one the pods can
serve.
"""

from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from clients import atomic, config_text

NO_GPU = "TensorRT engine builds need an NVIDIA GPU and the tensorrt package"
GPU_CONFIG = "gpu"  # configs/gpu.pbtxt: the config the chart serves on GPU nodes


class EngineBuildError(RuntimeError):
    """No engine could be built; the message says why (no GPU, no tensorrt, a failed build)."""


@dataclass(frozen=True)
class EngineBuild:
    plan: Path
    compute_capability: str  # "9.0"
    config: Path  # the config whose served form the plan switches to (configs/gpu.pbtxt)
    profile: tuple[int, int, int]  # batch sizes: min, opt, max
    fp16: bool
    tensorrt: str
    seconds: float
    plans: dict[str, str]  # every plan of the version folder now: compute capability -> file name


def plan_filename(compute_capability: str) -> str:
    """``"9.0"`` -> ``model.sm90.plan`` (the one naming rule: :mod:`clients.config_text`)."""
    return config_text.plan_filename(compute_capability)


def check_gpu() -> tuple[Any, str, str]:
    """The tensorrt module, the GPU's compute capability (``"9.0"``) and its name; or a clear error."""
    import torch

    problems = []
    if not torch.cuda.is_available():
        problems.append("no CUDA device is visible (torch.cuda.is_available() is False)")
    if importlib.util.find_spec("tensorrt") is None:
        problems.append("the tensorrt Python package is not installed (pip install tensorrt)")
    if problems:
        raise EngineBuildError(f"{NO_GPU}: {'; '.join(problems)}")
    import tensorrt

    major, minor = torch.cuda.get_device_capability()
    return tensorrt, f"{major}.{minor}", torch.cuda.get_device_name()


def build_engine(
    repository: Path,
    version: int,
    model_name: str,
    opt_batch: int | None = None,
    fp16: bool = True,
    workspace_gib: float = 4.0,
    config_name: str = GPU_CONFIG,
) -> EngineBuild:
    """Build the plan of ``<model>/<version>/model.onnx`` for this GPU as ``model.sm<CC>.plan``.

    The optimisation profile spans batch 1 to the served config's ``max_batch_size``, optimised for
    ``opt_batch`` (default: its largest ``preferred_batch_size``, what dynamic batching aims for);
    FP16 when ``fp16`` and the config's TensorRT accelerator ask for it and the GPU has fast FP16.
    """
    trt, capability, _ = check_gpu()
    model_dir = Path(repository) / model_name
    onnx_path = model_dir / str(version) / "model.onnx"
    if not onnx_path.is_file():
        raise EngineBuildError(f"{onnx_path} does not exist: publish version {version} first")
    config_path = model_dir / "configs" / f"{config_name}.pbtxt"
    if not config_path.is_file():
        raise EngineBuildError(f"{config_path} does not exist: the plan's shapes come from the served config")
    config_text_now = config_path.read_text()
    try:
        profile = config_text.tensorrt_profile(config_text_now, opt_batch)
    except config_text.ConfigTextError as error:
        raise EngineBuildError(f"{config_path}: {error}") from None

    started = time.perf_counter()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    explicit = getattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH", None)  # implied from TRT 10
    network = builder.create_network(0 if explicit is None else 1 << int(explicit))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"{onnx_path}: TensorRT cannot parse it: {errors}")
    builder_config = builder.create_builder_config()
    builder_config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * 2**30))
    fp16 = fp16 and profile.fp16 and builder.platform_has_fast_fp16
    if fp16:
        builder_config.set_flag(trt.BuilderFlag.FP16)
    optimisation = builder.create_optimization_profile()
    for name, dims in profile.inputs:
        batches = (profile.min_batch, profile.opt_batch, profile.max_batch)
        optimisation.set_shape(name, *[(batch, *dims) for batch in batches])
    builder_config.add_optimization_profile(optimisation)
    serialized = builder.build_serialized_network(network, builder_config)
    if serialized is None:
        raise EngineBuildError(f"{onnx_path}: TensorRT failed to build an engine (see its log above)")

    plan = onnx_path.with_name(plan_filename(capability))
    atomic.write_bytes(plan, bytes(serialized))
    plans = config_text.plans_by_capability(p.name for p in plan.parent.iterdir())
    check_served_config(config_text_now, plans, capability, config_path)
    return EngineBuild(
        plan=plan,
        compute_capability=capability,
        config=config_path,
        profile=(profile.min_batch, profile.opt_batch, profile.max_batch),
        fp16=fp16,
        tensorrt=trt.__version__,
        seconds=round(time.perf_counter() - started, 1),
        plans=plans,
    )


def check_served_config(text: str, plans: dict[str, str], capability: str, source: Path | str) -> str:
    """The config a GPU node of ``capability`` will serve (the pods' switch), checked with Triton's
    schema: TensorRT backend on that plan, the same inputs and outputs as ``text``."""
    try:
        served = config_text.use_tensorrt_plans(text, plans, capability)
        before = text_format.Parse(text, model_config_pb2.ModelConfig())
        after = text_format.Parse(served, model_config_pb2.ModelConfig())
    except (config_text.ConfigTextError, text_format.ParseError) as error:
        raise EngineBuildError(f"{source}: cannot be served on TensorRT plans: {error}") from None
    if after.default_model_filename != plans[capability] or (after.input, after.output) != (
        before.input,
        before.output,
    ):
        raise EngineBuildError(
            f"{source}: the TensorRT config would not serve {plans[capability]} as published"
        )
    return served
