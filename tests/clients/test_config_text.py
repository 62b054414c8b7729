"""The config-text editor against Triton's own protobuf schema: every rewritten config parses and
says what was asked, everything else (and every comment) stays as it was."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from clients import config_text
from clients.config_text import ConfigTextError
from clients.contract import default_repository

ROOT = Path(__file__).resolve().parents[2]
PLANS = {"8.6": "model.sm86.plan", "9.0": "model.sm90.plan"}


def repository_configs() -> list[Path]:
    """Every config of every model in the repository (config.pbtxt and configs/*.pbtxt)."""
    repository = default_repository()
    return sorted([*repository.glob("*/config.pbtxt"), *repository.glob("*/configs/*.pbtxt")])


CONFIGS = repository_configs()


def schema(text: str) -> model_config_pb2.ModelConfig:
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def without(config: model_config_pb2.ModelConfig, *fields: str) -> model_config_pb2.ModelConfig:
    copy = model_config_pb2.ModelConfig()
    copy.CopyFrom(config)
    for field in fields:
        copy.ClearField(field)
    return copy


def comments(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip().startswith("#")]


def test_the_repository_has_configs_to_check():
    assert any(p.parent.name == "configs" and p.name == "gpu.pbtxt" for p in CONFIGS)


# --- reading ---


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parts[-3]}/{p.parts[-2]}/{p.name}")
def test_reads_what_protobuf_reads(path: Path):
    text = path.read_text()
    config, parsed = schema(text), config_text.parse(text)
    assert parsed.get("name") == config.name
    assert int(parsed.get("max_batch_size", "0")) == config.max_batch_size
    inputs = parsed.all("input")
    assert [i.get("name") for i in inputs] == [i.name for i in config.input]
    assert [[int(d) for d in i.all("dims")] for i in inputs] == [list(i.dims) for i in config.input]
    assert [o.get("name") for o in parsed.all("output")] == [o.name for o in config.output]


def test_repeated_fields_list_syntax_and_nesting_read_alike():
    text = """
    input { name: "a" dims: 3 dims: 4 }
    input: [ { name: 'b' dims: [ 5 ] } ]  # a comment with { braces ] and "quotes
    parameters { key: "note" value: { string_value: "version_policy: { all { } }" } }
    """
    parsed = config_text.parse(text)
    assert [i.get("name") for i in parsed.all("input")] == ["a", "b"]
    assert parsed.all("input")[0].all("dims") == ["3", "4"]
    assert parsed.get("parameters").get("value").get("string_value") == "version_policy: { all { } }"
    assert parsed.field("version_policy") is None  # not fooled by the string


@pytest.mark.parametrize(
    "text, where",
    [
        ('name: "unterminated\n', "line 1: unterminated string"),
        ('name: "x"\ninput {\n  dims: 3\n', "missing '}'"),
        ("input [ { dims: 3 }\n", "missing ']'"),
        ("}\n", "line 1: expected a field name"),
    ],
)
def test_broken_text_is_refused_with_the_line(text: str, where: str):
    with pytest.raises(ConfigTextError, match=where.replace("[", r"\[").replace("]", r"\]")):
        config_text.parse(text)


# --- pinning a version ---


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parts[-3]}/{p.parts[-2]}/{p.name}")
def test_pin_version_changes_only_the_version_policy(path: Path):
    text = path.read_text()
    pinned = config_text.pin_version(text, 7)
    before, after = schema(text), schema(pinned)
    assert list(after.version_policy.specific.versions) == [7]
    assert without(after, "version_policy") == without(before, "version_policy")
    assert comments(pinned) == comments(text)
    # Pinning again (a restarted init container, a second promote) moves only the version.
    assert config_text.pin_version(config_text.pin_version(pinned, 2), 7) == pinned


@pytest.mark.parametrize(
    "policy",
    [
        "version_policy: { latest: { num_versions: 2 } }",
        "version_policy { all { } }",
        "version_policy <specific <versions: [1, 2]>>",
        "version_policy{latest{num_versions:1}}",
    ],
)
def test_pin_version_replaces_any_spelling_of_the_policy(policy: str):
    text = f'name: "m"\n{policy}  # served versions\nmax_batch_size: 4\n'
    pinned = config_text.pin_version(text, 3)
    policy_line = "version_policy: { specific: { versions: [ 3 ] } }  # served versions"
    assert pinned == f'name: "m"\n{policy_line}\nmax_batch_size: 4\n'
    assert list(schema(pinned).version_policy.specific.versions) == [3]


def test_pin_version_appends_the_policy_with_its_comment_when_absent():
    text = 'name: "m"\nmax_batch_size: 4\n'
    pinned = config_text.pin_version(text, 2, comment="# Pinned by the registry.")
    assert pinned == text + "# Pinned by the registry.\nversion_policy: { specific: { versions: [ 2 ] } }\n"
    assert list(schema(pinned).version_policy.specific.versions) == [2]


@pytest.mark.parametrize("version", [0, -1, True, "2"])
def test_pin_version_refuses_what_is_not_a_version(version):
    with pytest.raises(ConfigTextError, match="integer >= 1"):
        config_text.pin_version('name: "m"\n', version)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parts[-3]}/{p.parts[-2]}/{p.name}")
def test_serve_versions_serves_both_sides_of_an_ab_test_and_changes_nothing_else(path: Path):
    text = path.read_text()
    served = config_text.serve_versions(text, [3, 1])
    before, after = schema(text), schema(served)
    assert list(after.version_policy.specific.versions) == [1, 3]  # ascending, whatever the order asked
    assert without(after, "version_policy") == without(before, "version_policy")
    assert comments(served) == comments(text)
    # Back to one version (the A/B test ended) is the same edit as pin_version's.
    assert config_text.serve_versions(served, [2]) == config_text.pin_version(text, 2)


@pytest.mark.parametrize(
    ("versions", "message"),
    [
        ([], "at least one version"),
        ([1, 1], "distinct"),
        ([1, 0], "integer >= 1"),
        ([2, "3"], "integer >= 1"),
    ],
)
def test_serve_versions_refuses_bad_version_lists(versions, message):
    with pytest.raises(ConfigTextError, match=message):
        config_text.serve_versions('name: "m"\n', versions)


# --- TensorRT plans ---


def gpu_configs() -> list[Path]:
    """GPU configs serving model.onnx, which TensorRT plans can replace (not the JPEG wire's DALI one)."""
    return [p for p in CONFIGS if p.name == "gpu.pbtxt" and schema(p.read_text()).backend == "onnxruntime"]


def test_plan_file_names_round_trip():
    assert config_text.plan_filename("9.0") == "model.sm90.plan"
    assert config_text.plan_filename("8.6") == "model.sm86.plan"
    assert config_text.plan_filename("10.0") == "model.sm100.plan"
    assert config_text.plan_capability("model.sm100.plan") == "10.0"
    assert config_text.plan_capability("model.onnx") is None
    names = ["model.onnx", "model.sm90.plan", "model.sm86.plan", "model.sm86.plan.partial"]
    assert config_text.plans_by_capability(names) == PLANS
    with pytest.raises(ConfigTextError, match="looks like 8.6"):
        config_text.plan_filename("sm86")


@pytest.mark.parametrize("path", gpu_configs(), ids=lambda p: p.parts[-3])
def test_use_tensorrt_plans_serves_the_plan_with_the_same_contract(path: Path):
    text = config_text.pin_version(path.read_text(), 4)
    switched = config_text.use_tensorrt_plans(text, PLANS, "8.6")
    before, after = schema(text), schema(switched)
    assert after.backend == "tensorrt" and not after.platform
    assert after.default_model_filename == "model.sm86.plan"
    assert dict(after.cc_model_filenames) == PLANS
    assert not after.optimization.execution_accelerators.gpu_execution_accelerator
    # Everything clients, the batcher and the rollout depend on stays as published.
    changed = ("backend", "platform", "default_model_filename", "cc_model_filenames", "optimization")
    assert without(after, *changed) == without(before, *changed)
    assert list(after.version_policy.specific.versions) == [4]
    assert set(comments(text)) <= set(comments(switched))
    # A rerun gives the same text; a rerun on another GPU only moves the default plan.
    assert config_text.use_tensorrt_plans(switched, PLANS, "8.6") == switched
    other = schema(config_text.use_tensorrt_plans(switched, PLANS, "9.0"))
    assert other.default_model_filename == "model.sm90.plan"
    assert without(other, "default_model_filename") == without(after, "default_model_filename")


def test_use_tensorrt_plans_keeps_other_optimization_settings_and_drops_the_platform():
    text = """name: "m"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "images" data_type: TYPE_UINT8 dims: [ 4, 4, 3 ] } ]
output [ { name: "masks" data_type: TYPE_UINT8 dims: [ 4, 4 ] } ]
optimization {
  priority: PRIORITY_MAX
  execution_accelerators { gpu_execution_accelerator: [ { name: "tensorrt" } ] }
}
"""
    after = schema(config_text.use_tensorrt_plans(text, {"9.0": "model.sm90.plan"}, "9.0"))
    assert after.platform == "" and after.backend == "tensorrt"
    assert after.optimization.priority == model_config_pb2.ModelOptimizationPolicy.PRIORITY_MAX
    assert not after.optimization.HasField("execution_accelerators")


def test_use_tensorrt_plans_refuses_other_backends_and_missing_plans():
    python_config = default_repository() / "shelf_segmenter" / "configs" / "cpu.pbtxt"
    with pytest.raises(ConfigTextError, match="only an ONNX Runtime config"):
        config_text.use_tensorrt_plans(python_config.read_text(), PLANS, "8.6")
    gpu = (default_repository() / "shelf_segmenter" / "configs" / "gpu.pbtxt").read_text()
    with pytest.raises(ConfigTextError, match="no TensorRT plan for compute capability 7.5"):
        config_text.use_tensorrt_plans(gpu, PLANS, "7.5")


@pytest.mark.parametrize("path", gpu_configs(), ids=lambda p: p.parts[-3])
def test_tensorrt_profile_follows_the_config(path: Path):
    config = schema(path.read_text())
    profile = config_text.tensorrt_profile(path.read_text())
    assert profile.inputs == tuple((i.name, tuple(i.dims)) for i in config.input)
    preferred = list(config.dynamic_batching.preferred_batch_size)
    assert (profile.min_batch, profile.opt_batch, profile.max_batch) == (
        1,
        max(preferred) if preferred else config.max_batch_size,
        config.max_batch_size,
    )
    accelerators = config.optimization.execution_accelerators.gpu_execution_accelerator
    wants_fp16 = any(
        a.name == "tensorrt" and a.parameters.get("precision_mode") == "FP16" for a in accelerators
    )
    assert profile.fp16 == wants_fp16
    (name, dims), *_ = profile.inputs
    shape = "x".join(str(d) for d in dims)
    assert profile.trtexec_flags()[:3] == [
        f"--minShapes={name}:1x{shape}",
        f"--optShapes={name}:{profile.opt_batch}x{shape}",
        f"--maxShapes={name}:{profile.max_batch}x{shape}",
    ]


def test_tensorrt_profile_refuses_what_cannot_be_built():
    base = 'input [ { name: "images" dims: [ 8, 8, 3 ] } ]\n'
    profile = config_text.tensorrt_profile("max_batch_size: 4\n" + base)
    assert (profile.opt_batch, profile.fp16) == (4, False)  # no preferred sizes: the maximum
    assert config_text.tensorrt_profile("max_batch_size: 4\n" + base, opt_batch=2).opt_batch == 2
    with pytest.raises(ConfigTextError, match="max_batch_size must be >= 1"):
        config_text.tensorrt_profile(base)
    with pytest.raises(ConfigTextError, match="fixed dims"):
        config_text.tensorrt_profile('max_batch_size: 4\ninput [ { name: "images" dims: [ -1, 8, 3 ] } ]\n')
    with pytest.raises(ConfigTextError, match="outside the profile's range 1..4"):
        config_text.tensorrt_profile("max_batch_size: 4\n" + base, opt_batch=8)


# --- editing primitives ---


def test_remove_field_keeps_the_rest_of_a_shared_line():
    text = 'name: "m" backend: "onnxruntime"  # trailing\nmax_batch_size: 2\n'
    assert config_text.remove_field(text, "backend") == 'name: "m"   # trailing\nmax_batch_size: 2\n'
    assert config_text.remove_field(text, "absent") == text
    own_line = 'name: "m"\n  backend: "onnxruntime"\nmax_batch_size: 2\n'
    assert config_text.remove_field(own_line, "backend") == 'name: "m"\nmax_batch_size: 2\n'


def test_the_editor_runs_where_the_pod_script_runs():
    """Standard library only, and no syntax newer than the NGC image's Python 3.10."""
    source = (ROOT / "clients" / "config_text.py").read_text()
    tree = ast.parse(source, feature_version=(3, 10))
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")])
    }
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}, imported
