"""Prepare the synced model folders for Triton at pod start; runs in the Triton image (Python 3.10,
standard library only: the image has no protobuf).

    prepare_model.py prepare --repository /models --models JSON [--compute-capability 8.6]
        JSON is the chart's ``models`` list as rendered:
        ``[{"name": "shelf_segmenter", "version": 1, "configName": "gpu", "tensorrt": true}, ...]``;
        an entry may add ``"versions": [1, 2]`` (every version it serves, e.g. both sides of an A/B
        test; ``version`` must be one of them). With the chart's jpegWire on, the JPEG wire's
        companions follow the models as entries of the same shape at version 1 (``jpeg_decoder``
        with configName ``gpu`` on the GPU pool: the DALI decoder; ``mask_encoder`` and the
        ``<model>_jpeg`` ensembles on their config.pbtxt), prepared like any model. For each model:
        1. Pins ``version_policy`` to its versions in config.pbtxt and configs/*.pbtxt: the pod holds
           only the versions its Deployment names, whatever the store's config says (``prodseg
           promote`` may already point it at a newer one; ``helm rollback`` may ask for an older one).
        2. Serves ``configs/<configName>.pbtxt`` by writing it as the model's config.pbtxt (Triton's
           ``--model-config-name`` is one name for every model; this picks one per model). An empty
           configName serves config.pbtxt itself.
        3. With ``tensorrt``: if every served version folder holds a TensorRT plan for this GPU's compute
           capability (``model.sm86.plan`` for 8.6, built by the engine-build Job or ``prodseg
           build-engine``), switches the served config to Triton's TensorRT backend with
           ``cc_model_filenames`` listing every plan present. Otherwise the config serves as
           published (ONNX Runtime with the TensorRT execution provider): the fallback for a GPU
           nobody built a plan for yet.

    prepare_model.py trtexec-flags --config PATH
        Prints trtexec's shape and precision flags for that config (min 1, opt = largest preferred
        batch, max = max_batch_size), so the engine build reads the model contract, not a copy.

The edits are clients/config_text.py's (shipped beside this script in the chart's ConfigMap); every
file is written atomically with clients/atomic.py (also shipped beside it).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import atomic  # clients/atomic.py, beside this script
import config_text  # clients/config_text.py, beside this script


def fail(message: str) -> None:
    sys.exit(f"prepare_model: {message}")


def gpu_compute_capability() -> str | None:
    """The first GPU's compute capability ("8.6"), or None without a visible GPU."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    first = out.strip().splitlines()[0].strip() if out.strip() else ""
    return first if re.fullmatch(r"\d+\.\d", first) else None


def read_models(text: str) -> list[dict]:
    """The models list, checked: a clear message beats a KeyError in an init container's log."""
    try:
        models = json.loads(text)
    except json.JSONDecodeError as error:
        fail(f"--models is not JSON: {error}")
    if not isinstance(models, list) or not models:
        fail("--models must be a non-empty JSON list of {name, version, configName, tensorrt}")
    for entry in models:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"]:
            fail(f"every model needs a name, got {entry!r}")
        version = entry.get("version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            fail(f"{entry['name']}: version must be an integer >= 1, got {version!r}")
        entry["versions"] = served_versions(entry)
    return models


def served_versions(entry: dict) -> list[int]:
    """The versions an entry serves: its ``versions`` list (which must hold ``version``), else ``version``."""
    versions = entry.get("versions", [entry["version"]])
    if not isinstance(versions, list) or not versions:
        fail(f"{entry['name']}: versions must be a non-empty list of integers, got {versions!r}")
    for version in versions:
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            fail(f"{entry['name']}: every version must be an integer >= 1, got {version!r} in {versions}")
    if len(set(versions)) != len(versions):
        fail(f"{entry['name']}: versions lists a version twice: {versions}")
    if entry["version"] not in versions:
        fail(f"{entry['name']}: version {entry['version']} must be one of its versions {versions}")
    return sorted(versions)


def prepare_one(
    model_dir: Path, versions: list[int], config_name: str, tensorrt: bool, capability: str | None
) -> str:
    """Pin, pick the served config, switch it to a plan when one fits; returns what it did."""
    for version in versions:
        if not (model_dir / str(version)).is_dir():
            fail(f"{model_dir / str(version)} does not exist (was version {version} synced?)")
    configs = [model_dir / "config.pbtxt", *sorted((model_dir / "configs").glob("*.pbtxt"))]
    pinned = {}
    for path in configs:
        if path.is_file():
            try:
                pinned[path] = config_text.serve_versions(path.read_text(), versions)
            except config_text.ConfigTextError as error:
                fail(f"{path}: {error}")
    source = model_dir / "configs" / f"{config_name}.pbtxt" if config_name else model_dir / "config.pbtxt"
    if source not in pinned:
        fail(f"{source} does not exist (configName {config_name!r} of {model_dir.name})")
    served = pinned[source]
    note = f"serves {source.relative_to(model_dir)}"
    if tensorrt:
        # One config serves every version: use a plan only where each served version has it.
        per_version = [
            config_text.plans_by_capability(p.name for p in (model_dir / str(v)).iterdir()) for v in versions
        ]
        plans = {
            cc: name for cc, name in per_version[0].items() if all(p.get(cc) == name for p in per_version)
        }
        if capability and capability in plans:
            try:
                served = config_text.use_tensorrt_plans(served, plans, capability)
            except config_text.ConfigTextError as error:
                fail(f"{source}: {error}")
            note += f" on TensorRT plan {plans[capability]} (GPU {capability}; plans: {sorted(plans)})"
        else:
            found = ", ".join(sorted(plans)) or "none"
            note += f" as published: no TensorRT plan for GPU {capability or 'unknown'} (plans: {found})"
    pinned[model_dir / "config.pbtxt"] = served
    for path, text in pinned.items():
        atomic.write_text(path, text)
    listed = ", ".join(str(v) for v in versions)
    return f"{model_dir.name} version{'s' if len(versions) > 1 else ''} {listed} {note}"


def prepare(args: argparse.Namespace) -> None:
    models = read_models(args.models)
    wants_plans = any(entry.get("tensorrt", False) for entry in models)
    capability = args.compute_capability or (gpu_compute_capability() if wants_plans else None)
    for entry in models:
        model_dir = Path(args.repository) / entry["name"]
        done = prepare_one(
            model_dir,
            entry["versions"],
            entry.get("configName", ""),
            bool(entry.get("tensorrt", False)),
            capability,
        )
        print(f"prepare_model: {done}")


def trtexec_flags(args: argparse.Namespace) -> None:
    try:
        profile = config_text.tensorrt_profile(Path(args.config).read_text())
    except (OSError, config_text.ConfigTextError) as error:
        fail(f"{args.config}: {error}")
    print(" ".join(profile.trtexec_flags()))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    prepare_parser = commands.add_parser("prepare", help="pin versions, pick configs and TensorRT plans")
    prepare_parser.add_argument("--repository", required=True, help="the synced model repository")
    prepare_parser.add_argument("--models", required=True, help="JSON list of the chart's models")
    prepare_parser.add_argument("--compute-capability", default="", help="override nvidia-smi (e.g. 8.6)")
    prepare_parser.set_defaults(run=prepare)
    flags_parser = commands.add_parser("trtexec-flags", help="trtexec shape flags for a config")
    flags_parser.add_argument("--config", required=True)
    flags_parser.set_defaults(run=trtexec_flags)
    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
