"""The scripts the pods run (charts/prodsegmenter/files/), run here against the real model repository:
model sync of several models from a volume, version pinning, the per-model served config, TensorRT
plan selection, and the engine build (with stand-ins for nvidia-smi and trtexec, which need a GPU).
The rewritten configs are parsed with Triton's own protobuf schema."""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from clients import config_text
from clients.contract import ModelContract, default_repository, read_model_config
from clients.repository import discover
from tests.charts.conftest import MODEL, SECOND
from tests.charts.toolbox import CHART, ROOT

FILES = CHART / "files"


def prepare(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(FILES / "prepare_model.py"), *args], capture_output=True, text=True, check=check
    )


def prepare_models(models_dir: Path, models: list[dict], *extra: str, check: bool = True):
    return prepare(
        "prepare", f"--repository={models_dir}", f"--models={json.dumps(models)}", *extra, check=check
    )


def sync_from_volume(store: Path, destination: Path, models: str) -> subprocess.CompletedProcess:
    env = {
        "PATH": "/usr/bin:/bin",
        "MODEL_SOURCE": "pvc",
        "STORE_DIR": str(store),
        "MODELS": models,
        "MODEL_DIR": str(destination),
    }
    return subprocess.run(
        ["sh", str(FILES / "model-store.sh"), "sync"], env=env, capture_output=True, text=True
    )


@pytest.fixture
def synced(store: Path, tmp_path: Path) -> Path:
    models = tmp_path / "models"
    result = sync_from_volume(store, models, f"{MODEL}=2 {SECOND}=1")
    assert result.returncode == 0, result.stderr
    return models


def test_scripts_are_valid_posix_sh():
    for script in ("model-store.sh", "build-engine.sh"):
        subprocess.run(["sh", "-n", str(FILES / script)], check=True)


def test_the_chart_ships_the_one_config_editor_and_atomic_writer():
    """prepare_model.py imports them from beside itself. They are copies, not links: helm 3.17 follows
    a symlink but warns on stderr at every command, and checkov then scans nothing."""
    for name in ("config_text.py", "atomic.py"):
        copy, source = FILES / name, ROOT / "clients" / name
        assert not copy.is_symlink()
        assert copy.read_bytes() == source.read_bytes(), (
            f"stale copy: cp clients/{name} {copy.relative_to(ROOT)}"
        )


def own_entries(model_dir: Path) -> list[str]:
    """A model folder's own files and folders, not its versions: the sync copies every one of them
    (aliases live in the MLflow Model Registry; an extra file such as an old aliases.json travels too)."""
    names = [p.name for p in model_dir.iterdir() if not p.name.isdigit()]
    assert {"config.pbtxt", "configs", "labels.txt", "model.py"} <= set(names)
    return names


def test_sync_copies_one_version_of_each_model_and_its_files(store, synced):
    assert sorted(p.name for p in synced.iterdir()) == [SECOND, MODEL]
    shelf = synced / MODEL
    assert sorted(p.name for p in shelf.iterdir()) == sorted(["2", *own_entries(store / MODEL)])
    assert sorted(p.name for p in (synced / SECOND).iterdir() if p.name.isdigit()) == ["1"]
    # The version's model.py link (../model.py -> ../onnx_runner.py) arrives as a file.
    assert (shelf / "2" / "model.py").is_file() and not (shelf / "2" / "model.py").is_symlink()
    assert (shelf / "2" / "model.onnx").stat().st_size == (store / MODEL / "2" / "model.onnx").stat().st_size


def test_sync_of_an_unpublished_version_fails_and_names_it(store, tmp_path):
    result = sync_from_volume(store, tmp_path / "models", f"{MODEL}=1 {SECOND}=7")
    assert result.returncode != 0
    assert f"{SECOND} version 7 not found" in result.stderr


@pytest.mark.parametrize(
    "models, message",
    [
        (f"{MODEL}=1 Bad-Name=1", "model name must be lowercase letters"),
        (f"{MODEL}=latest", f"{MODEL}: versions must be integers separated by commas"),
        (f"{MODEL}=1,,2", f"{MODEL}: versions must be integers separated by commas"),
        (f"{MODEL}=1,", f"{MODEL}: versions must be integers separated by commas"),
        ("", "MODELS lists the models to sync"),
    ],
)
def test_sync_checks_every_entry_before_copying_anything(store, tmp_path, models, message):
    result = sync_from_volume(store, tmp_path / "models", models)
    assert result.returncode != 0
    assert message in result.stderr
    assert not (tmp_path / "models" / MODEL).exists()


def test_prepare_pins_every_config_and_serves_each_models_chosen_config(synced):
    result = prepare_models(
        synced,
        [
            {"name": MODEL, "version": 2, "configName": "cpu", "tensorrt": False},
            {"name": SECOND, "version": 1, "configName": "", "tensorrt": False},
        ],
    )
    assert f"{MODEL} version 2 serves configs/cpu.pbtxt" in result.stdout
    assert f"{SECOND} version 1 serves config.pbtxt" in result.stdout
    for name, version in ((MODEL, 2), (SECOND, 1)):
        for path in [synced / name / "config.pbtxt", *(synced / name / "configs").glob("*.pbtxt")]:
            assert list(read_model_config(path).version_policy.specific.versions) == [version], path
    # The shelf model's config.pbtxt is now its CPU variant (what Triton loads); its contract holds.
    served = read_model_config(synced / MODEL / "config.pbtxt")
    assert served == read_model_config(synced / MODEL / "configs" / "cpu.pbtxt")
    assert served.backend == "python"
    found = discover(synced)
    assert found.errors == {} and set(found.contracts) == {MODEL, SECOND}
    prepared = ModelContract.load(MODEL, synced)
    assert prepared.takes_jpeg  # the CPU variant decodes JPEG frames itself
    assert dataclasses.replace(prepared, takes_jpeg=False) == ModelContract.load(MODEL)
    # No partial files are left behind by the atomic writes.
    assert not list(synced.rglob("*.partial"))


def test_a_plan_for_this_gpu_switches_only_the_models_that_want_tensorrt(synced):
    for name, version in ((MODEL, 2), (SECOND, 1)):
        for plan in ("model.sm86.plan", "model.sm90.plan"):
            (synced / name / str(version) / plan).write_bytes(b"plan")
    original = read_model_config(synced / MODEL / "configs" / "gpu.pbtxt")
    models = [
        {"name": MODEL, "version": 2, "configName": "gpu", "tensorrt": True},
        {"name": SECOND, "version": 1, "configName": "gpu", "tensorrt": False},
    ]
    result = prepare_models(synced, models, "--compute-capability=8.6")
    assert f"{MODEL} version 2 serves configs/gpu.pbtxt on TensorRT plan model.sm86.plan" in result.stdout
    config = read_model_config(synced / MODEL / "config.pbtxt")
    assert config.backend == "tensorrt"
    assert config.default_model_filename == "model.sm86.plan"
    assert dict(config.cc_model_filenames) == {"8.6": "model.sm86.plan", "9.0": "model.sm90.plan"}
    assert not config.optimization.execution_accelerators.gpu_execution_accelerator  # ONNX Runtime's EP
    # Everything clients and the batcher depend on stays as published.
    assert config.input == original.input and config.output == original.output
    assert config.max_batch_size == original.max_batch_size
    assert config.dynamic_batching == original.dynamic_batching
    assert config.instance_group == original.instance_group
    assert list(config.version_policy.specific.versions) == [2]
    # The variant itself stays ONNX Runtime (pinned): a rerun starts from it again.
    assert read_model_config(synced / MODEL / "configs" / "gpu.pbtxt").backend == "onnxruntime"
    # tensorrt off: ONNX Runtime serves even with plans present.
    assert read_model_config(synced / SECOND / "config.pbtxt").backend == "onnxruntime"
    # Running again (an init container restart) gives the same configs.
    before = {p: p.read_text() for p in synced.rglob("*.pbtxt")}
    prepare_models(synced, models, "--compute-capability=8.6")
    assert {p: p.read_text() for p in synced.rglob("*.pbtxt")} == before


@pytest.mark.parametrize("capability", ["7.5", ""], ids=["other-gpu", "no-nvidia-smi"])
def test_without_a_matching_plan_the_onnx_runtime_config_serves(synced, capability):
    (synced / MODEL / "2" / "model.sm86.plan").write_bytes(b"plan")
    models = [{"name": MODEL, "version": 2, "configName": "gpu", "tensorrt": True}]
    result = prepare_models(synced, models, *([f"--compute-capability={capability}"] if capability else []))
    assert "no TensorRT plan for GPU" in result.stdout
    config = read_model_config(synced / MODEL / "config.pbtxt")
    assert config.backend == "onnxruntime"
    assert config.optimization.execution_accelerators.gpu_execution_accelerator[0].name == "tensorrt"
    assert not config.cc_model_filenames


@pytest.mark.parametrize(
    "models, message",
    [
        ("not json", "--models is not JSON"),
        ("[]", "must be a non-empty JSON list"),
        (json.dumps([{"name": MODEL, "version": 0}]), f"{MODEL}: version must be an integer >= 1"),
        (json.dumps([{"name": MODEL, "version": 1}]), "was version 1 synced?"),
        (
            json.dumps([{"name": MODEL, "version": 2, "configName": "tpu"}]),
            "configs/tpu.pbtxt does not exist",
        ),
    ],
)
def test_prepare_refuses_bad_input_with_a_clear_message(synced, models, message):
    result = prepare("prepare", f"--repository={synced}", f"--models={models}", check=False)
    assert result.returncode != 0
    assert message in result.stderr


def test_trtexec_flags_follow_the_gpu_config():
    gpu_config_path = default_repository() / MODEL / "configs" / "gpu.pbtxt"
    config = read_model_config(gpu_config_path)
    flags = prepare("trtexec-flags", f"--config={gpu_config_path}").stdout.split()
    (image,) = config.input
    shape = "x".join(str(d) for d in image.dims)
    opt = max(config.dynamic_batching.preferred_batch_size)
    assert flags[:3] == [
        f"--minShapes={image.name}:1x{shape}",
        f"--optShapes={image.name}:{opt}x{shape}",
        f"--maxShapes={image.name}:{config.max_batch_size}x{shape}",
    ]
    accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator[0]
    assert ("--fp16" in flags) == (accelerator.parameters.get("precision_mode") == "FP16")


def test_engine_build_writes_the_plan_prepare_serves(synced, tmp_path):
    """The Job's build step (GPU tools stood in) and the pod's prepare step agree on one plan name."""
    bin_dir, plans = tmp_path / "bin", tmp_path / "plans"
    bin_dir.mkdir()
    plans.mkdir()
    (bin_dir / "nvidia-smi").write_text("#!/bin/sh\necho 8.6\n")
    # trtexec stand-in: writes its arguments as the "engine", so the test sees what it was asked.
    (bin_dir / "trtexec").write_text(
        '#!/bin/sh\nfor a in "$@"; do case "$a" in --saveEngine=*) out="${a#--saveEngine=}" ;; esac; done\n'
        'echo "$@" > "$out"\n'
    )
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    env = {
        "PATH": f"{bin_dir}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}/usr/bin:/bin",
        "MODEL_NAME": MODEL,
        "MODEL_VERSION": "2",
        "MODEL_DIR": str(synced),
        "CONFIG_NAME": "gpu",
        "TRTEXEC": "trtexec",
        "PLAN_DIR": str(plans),
    }
    result = subprocess.run(["sh", str(FILES / "build-engine.sh")], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    (plan,) = plans.iterdir()
    assert plan.name == config_text.plan_filename("8.6") == "model.sm86.plan"
    arguments = plan.read_text().split()
    assert f"--onnx={synced / MODEL / '2' / 'model.onnx'}" in arguments
    profile = config_text.tensorrt_profile((synced / MODEL / "configs" / "gpu.pbtxt").read_text())
    assert set(profile.trtexec_flags()) <= set(arguments)
    # The upload puts it next to model.onnx; at the next pod start prepare serves it.
    shutil.copy2(plan, synced / MODEL / "2" / plan.name)
    models = [{"name": MODEL, "version": 2, "configName": "gpu", "tensorrt": True}]
    prepare_models(synced, models, "--compute-capability=8.6")
    assert read_model_config(synced / MODEL / "config.pbtxt").default_model_filename == plan.name
    # A plan already in the store is not built again.
    again = subprocess.run(["sh", str(FILES / "build-engine.sh")], env=env, capture_output=True, text=True)
    assert again.returncode == 0 and "already has model.sm86.plan" in again.stdout


# A stand-in for the Azure CLI: blobs are the files under $FAKE_BLOB_ROOT/<container>/, matched with
# fnmatch as `az storage blob download-batch --pattern` does; every call is logged.
FAKE_AZ = """#!{python}
import fnmatch, os, shutil, sys
from pathlib import Path
args = sys.argv[1:]
with open(os.environ["FAKE_AZ_LOG"], "a") as log:
    log.write(" ".join(args) + "\\n")
def option(name):
    return args[args.index(name) + 1]
root = Path(os.environ["FAKE_BLOB_ROOT"])
if args[:1] == ["login"]:
    sys.exit(0)
if args[:3] == ["storage", "blob", "download-batch"]:
    container = root / option("--source")
    for path in sorted(p for p in container.rglob("*") if p.is_file()):
        name = path.relative_to(container).as_posix()
        if fnmatch.fnmatch(name, option("--pattern")):
            target = Path(option("--destination")) / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
    sys.exit(0)
if args[:3] == ["storage", "blob", "upload"]:
    target = root / option("--container-name") / option("--name")
    if target.exists() and option("--overwrite") == "false":
        sys.exit("BlobAlreadyExists")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(option("--file"), target)
    sys.exit(0)
sys.exit("fake az: unexpected " + " ".join(args))
"""


def test_blob_sync_and_plan_upload_with_a_stand_in_az(store, tmp_path):
    """The blob branch of model-store.sh (workload identity login, two download patterns per model,
    one version only; plan upload next to model.onnx), against a stand-in `az` on a local folder."""
    blobs = tmp_path / "blobs"
    container = blobs / "models" / "model_repository"
    shutil.copytree(store, container)  # the model folders' links become files, as uploads would
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "az").write_text(FAKE_AZ.format(python=sys.executable))
    (bin_dir / "az").chmod(0o755)
    token = tmp_path / "token"
    token.write_text("federated-token")
    log = tmp_path / "az.log"
    env = {
        "PATH": f"{bin_dir}{os.pathsep}/usr/bin:/bin",
        "MODEL_SOURCE": "blob",
        "MODELS": f"{MODEL}=2 {SECOND}=1",
        "MODEL_DIR": str(tmp_path / "models"),
        "BLOB_ACCOUNT_URL": "https://prodsegmodels.blob.core.windows.net",
        "BLOB_CONTAINER": "models",
        "BLOB_PREFIX": "model_repository",
        "AZURE_CLIENT_ID": "client",
        "AZURE_TENANT_ID": "tenant",
        "AZURE_FEDERATED_TOKEN_FILE": str(token),
        "FAKE_BLOB_ROOT": str(blobs),
        "FAKE_AZ_LOG": str(log),
    }
    (tmp_path / "models").mkdir()
    sync = subprocess.run(
        ["sh", str(FILES / "model-store.sh"), "sync"], env=env, capture_output=True, text=True
    )
    assert sync.returncode == 0, sync.stderr
    synced = tmp_path / "models"
    assert sorted(p.name for p in (synced / MODEL).iterdir() if p.name.isdigit()) == ["2"]
    assert sorted(p.name for p in (synced / SECOND).iterdir() if p.name.isdigit()) == ["1"]
    assert (synced / MODEL / "configs" / "gpu.pbtxt").is_file() and not (synced / ".download").exists()
    calls = log.read_text().splitlines()
    assert calls[0].startswith("login --service-principal --username client --tenant tenant")
    assert "--federated-token federated-token" in calls[0]
    assert sum(c.startswith("storage blob download-batch") for c in calls) == 4  # 2 per model
    assert f"--pattern model_repository/{MODEL}/2/*" in "\n".join(calls)

    plans = tmp_path / "plans"
    plans.mkdir()
    (plans / "model.sm90.plan").write_bytes(b"engine")
    upload_env = dict(env, MODEL_NAME=MODEL, MODEL_VERSION="2", PLAN_DIR=str(plans))
    upload = subprocess.run(
        ["sh", str(FILES / "model-store.sh"), "upload-plans"], env=upload_env, capture_output=True, text=True
    )
    assert upload.returncode == 0, upload.stderr
    assert (container / MODEL / "2" / "model.sm90.plan").read_bytes() == b"engine"
    # A second pool of the same GPU type must not replace a plan a pod may be loading.
    again = subprocess.run(
        ["sh", str(FILES / "model-store.sh"), "upload-plans"], env=upload_env, capture_output=True, text=True
    )
    assert again.returncode != 0 and "BlobAlreadyExists" in again.stderr


def test_prepare_model_runs_in_the_triton_image():
    """Python 3.10 (NGC 24.10) and the standard library, plus the two modules shipped beside it."""
    for script in ("prepare_model.py", "config_text.py", "atomic.py"):
        tree = ast.parse((FILES / script).read_text(), feature_version=(3, 10))
        imported = {
            alias.name.split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.Import)
            for alias in node.names
        }
        imported |= {
            node.module.split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module
        }
        assert imported <= set(sys.stdlib_module_names) | {"__future__", "atomic", "config_text"}, (
            script,
            imported,
        )


# --- Two versions of one model (an A/B test: models[].abTest or models[].versions) ---


@pytest.fixture
def synced_two_versions(store: Path, tmp_path: Path) -> Path:
    models = tmp_path / "models"
    result = sync_from_volume(store, models, f"{MODEL}=1,2 {SECOND}=1")
    assert result.returncode == 0, result.stderr
    return models


def test_sync_copies_every_version_an_ab_test_serves(store, synced_two_versions):
    shelf = synced_two_versions / MODEL
    assert sorted(p.name for p in shelf.iterdir()) == sorted(["1", "2", *own_entries(store / MODEL)])
    assert (shelf / "1" / "model.onnx").is_file() and (shelf / "2" / "model.onnx").is_file()
    assert sorted(p.name for p in (synced_two_versions / SECOND).iterdir() if p.name.isdigit()) == ["1"]


def test_sync_fails_naming_the_missing_version_of_a_pair(store, tmp_path):
    result = sync_from_volume(store, tmp_path / "models", f"{MODEL}=2,7")
    assert result.returncode != 0
    assert f"{MODEL} version 7 not found" in result.stderr


def test_prepare_pins_both_versions_in_every_config(synced_two_versions):
    models = [
        {"name": MODEL, "version": 1, "versions": [2, 1], "configName": "cpu", "tensorrt": False},
        {"name": SECOND, "version": 1, "configName": "cpu", "tensorrt": False},
    ]
    result = prepare_models(synced_two_versions, models)
    assert f"{MODEL} versions 1, 2 serves configs/cpu.pbtxt" in result.stdout
    shelf = synced_two_versions / MODEL
    for path in [shelf / "config.pbtxt", *(shelf / "configs").glob("*.pbtxt")]:
        assert list(read_model_config(path).version_policy.specific.versions) == [1, 2], path
    second = read_model_config(synced_two_versions / SECOND / "config.pbtxt")
    assert list(second.version_policy.specific.versions) == [1]


def test_a_plan_serves_two_versions_only_when_both_have_it(synced_two_versions):
    shelf = synced_two_versions / MODEL
    (shelf / "1" / "model.sm86.plan").write_bytes(b"plan")
    (shelf / "2" / "model.sm86.plan").write_bytes(b"plan")
    (shelf / "2" / "model.sm90.plan").write_bytes(b"plan")  # built for the new version only
    models = [{"name": MODEL, "version": 2, "versions": [1, 2], "configName": "gpu", "tensorrt": True}]
    prepare_models(synced_two_versions, models, "--compute-capability=8.6")
    config = read_model_config(shelf / "config.pbtxt")
    assert config.backend == "tensorrt"
    assert dict(config.cc_model_filenames) == {"8.6": "model.sm86.plan"}
    assert list(config.version_policy.specific.versions) == [1, 2]
    # On the GPU only version 2 has a plan for, both versions stay on ONNX Runtime.
    result = prepare_models(synced_two_versions, models, "--compute-capability=9.0")
    assert "no TensorRT plan for GPU 9.0" in result.stdout
    assert read_model_config(shelf / "config.pbtxt").backend == "onnxruntime"


@pytest.mark.parametrize(
    "entry, message",
    [
        (
            {"name": MODEL, "version": 3, "versions": [1, 2]},
            f"{MODEL}: version 3 must be one of its versions",
        ),
        ({"name": MODEL, "version": 1, "versions": [1, 1]}, "lists a version twice"),
        ({"name": MODEL, "version": 1, "versions": []}, "versions must be a non-empty list"),
        ({"name": MODEL, "version": 1, "versions": [1, "2"]}, "every version must be an integer >= 1"),
        ({"name": MODEL, "version": 1, "versions": [1, 5]}, "was version 5 synced?"),
    ],
)
def test_prepare_refuses_bad_version_lists(synced_two_versions, entry, message):
    result = prepare_models(synced_two_versions, [entry], check=False)
    assert result.returncode != 0
    assert message in result.stderr


# --- The JPEG wire's companions, as the rendered chart lists them for the GPU pool ---


@pytest.mark.k8s
def test_the_gpu_pool_syncs_and_prepares_the_dali_decoder_and_the_wire(store_with_jpeg_wire, tmp_path, tools):
    from tests.charts.test_rendered_objects import models_file, prepared, synced
    from tests.charts.toolbox import one, render

    models = [{"name": MODEL, "version": 2}, {"name": SECOND, "version": 1, "jpegWire": False}]
    triton = one(render([models_file(tmp_path, models)]), "Deployment", "-triton")
    models_dir = tmp_path / "models"
    result = sync_from_volume(store_with_jpeg_wire, models_dir, synced(triton))
    assert result.returncode == 0, result.stderr
    done = prepare_models(models_dir, prepared(triton), "--compute-capability=8.6").stdout
    assert "jpeg_decoder version 1 serves configs/gpu.pbtxt" in done
    # The DALI decoder, with the pipeline the backend serializes when it loads.
    decoder = read_model_config(models_dir / "jpeg_decoder" / "config.pbtxt")
    assert (decoder.backend, decoder.default_model_filename) == ("dali", "dali.py")
    assert (models_dir / "jpeg_decoder" / "1" / "dali.py").is_file()
    assert (models_dir / "jpeg_decoder" / "1" / "model.py").is_file()  # the CPU decoder's, unused here
    # The encoder and the ensemble keep their one config; every companion serves its version 1.
    assert read_model_config(models_dir / "mask_encoder" / "config.pbtxt").backend == "python"
    wire = read_model_config(models_dir / f"{MODEL}_jpeg" / "config.pbtxt")
    assert wire.platform == "ensemble"
    for name in ("jpeg_decoder", "mask_encoder", f"{MODEL}_jpeg"):
        config = read_model_config(models_dir / name / "config.pbtxt")
        assert list(config.version_policy.specific.versions) == [1], name
    # What the clients look for: the shelf model's wire, fitting its model, with both steps.
    found = discover(models_dir)
    assert set(found.companions_of([MODEL, SECOND])) == {"jpeg_decoder", "mask_encoder", f"{MODEL}_jpeg"}
