"""Prepare a synced model folder for Triton; runs in the Triton image (python3 >= 3.8, stdlib only).

    prepare_model.py pin --model-dir /models/shelf_segmenter --version N [--config gpu]
        1. Pins ``version_policy`` to version N in config.pbtxt and configs/*.pbtxt: the pod holds
           only the version its Deployment names, whatever the store's config says (``prodseg
           promote`` may already point it at a newer one; ``helm rollback`` may ask for an older one).
        2. With ``--config NAME``: if the version folder holds a TensorRT plan for this GPU's compute
           capability (``model.sm86.plan`` for 8.6, built by the engine-build Job), rewrites
           configs/NAME.pbtxt for Triton's TensorRT backend with ``cc_model_filenames`` listing every
           plan present. Otherwise configs/NAME.pbtxt (ONNX Runtime + TensorRT EP) serves unchanged:
           the fallback for a GPU nobody built a plan for yet.

    prepare_model.py trtexec-flags --config configs/gpu.pbtxt
        Prints trtexec's shape and precision flags for that config (min 1, opt = largest preferred
        batch, max = max_batch_size), so the engine build reads the model contract, not a copy.

The configs are edited as text (the image has no protobuf module); comments are kept.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

PLAN_PATTERN = re.compile(r"^model\.sm(\d)(\d+)\.plan$")  # model.sm86.plan -> "8.6"
PLANS_COMMENT = "# Written at pod start by prepare_model.py: a TensorRT plan per GPU compute capability.\n"


def block_span(text: str, field: str, opening: str = "{") -> tuple[int, int] | None:
    """Span of a top-level ``field { ... }`` (or ``field: [ ... ]`` with opening "[") in protobuf
    text, brackets matched while skipping comments and strings; None if the field is absent."""
    closing = {"{": "}", "[": "]"}[opening]
    match = re.search(rf"(?m)^[ \t]*{field}[ \t]*:?[ \t]*{re.escape(opening)}", text)
    if not match:
        return None
    depth, i, in_string = 0, match.end() - 1, False
    while i < len(text):
        char = text[i]
        if in_string:
            if char == "\\":
                i += 1
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char == "#":
            i = text.find("\n", i)
            if i < 0:
                break
        elif char == opening:
            depth += 1
        elif char == closing:
            depth -= 1
            if depth == 0:
                end = i + 1
                if end < len(text) and text[end] == "\n":
                    end += 1
                return match.start(), end
        i += 1
    raise ValueError(f"unbalanced braces after '{field}'")


def replace_block(text: str, field: str, replacement: str, opening: str = "{") -> str:
    """Replace a top-level block (appending it when absent); an empty replacement removes it."""
    span = block_span(text, field, opening)
    if span is None:
        return text.rstrip("\n") + "\n" + replacement if replacement else text
    return text[: span[0]] + replacement + text[span[1] :]


def set_scalar(text: str, field: str, value: str) -> str:
    """Set a top-level ``field: "value"`` (added after ``name:`` when absent)."""
    line = f'{field}: "{value}"'
    pattern = rf'(?m)^[ \t]*{field}[ \t]*:[ \t]*"[^"]*"[ \t]*$'
    if re.search(pattern, text):
        return re.sub(pattern, line, text, count=1)
    return re.sub(r'(?m)^(name[ \t]*:[ \t]*"[^"]*"[ \t]*)$', rf"\1\n{line}", text, count=1)


def pin_version(text: str, version: int) -> str:
    pinned = f"version_policy: {{ specific: {{ versions: [ {version} ] }} }}\n"
    return replace_block(text, "version_policy", pinned)


def plans_by_capability(version_dir: Path) -> dict[str, str]:
    plans = {}
    for path in sorted(version_dir.glob("model.sm*.plan")):
        match = PLAN_PATTERN.match(path.name)
        if match:
            plans[f"{match.group(1)}.{match.group(2)}"] = path.name
    return plans


def tensorrt_config(text: str, plans: dict[str, str], default_plan: str) -> str:
    """The ONNX Runtime config turned into a TensorRT-plan config: same I/O, batching, instances."""
    text = re.sub(r'(?m)^[ \t]*platform[ \t]*:[ \t]*"[^"]*"[ \t]*\n', "", text)
    text = set_scalar(text, "backend", "tensorrt")
    text = set_scalar(text, "default_model_filename", default_plan)
    text = replace_block(text, "optimization", "")  # ONNX Runtime's execution-provider settings
    text = replace_block(text.replace(PLANS_COMMENT, ""), "cc_model_filenames", "", "[")  # rerun-safe
    entries = ",\n".join(f'  {{ key: "{cc}" value: "{name}" }}' for cc, name in plans.items())
    return text.rstrip("\n") + f"\n{PLANS_COMMENT}cc_model_filenames [\n{entries}\n]\n"


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
    return first if re.fullmatch(r"\d+\.\d+", first) else None


def pin(args: argparse.Namespace) -> None:
    model_dir = Path(args.model_dir)
    version_dir = model_dir / str(args.version)
    if not version_dir.is_dir():
        sys.exit(f"prepare_model: {version_dir} does not exist")
    configs = [model_dir / "config.pbtxt", *sorted((model_dir / "configs").glob("*.pbtxt"))]
    for config in configs:
        if config.exists():
            config.write_text(pin_version(config.read_text(), args.version))
    print(f"prepare_model: {model_dir.name} pinned to version {args.version}")
    if not args.config:
        return
    config = model_dir / "configs" / f"{args.config}.pbtxt"
    if not config.exists():
        sys.exit(f"prepare_model: {config} does not exist (--model-config-name={args.config})")
    capability = args.compute_capability or gpu_compute_capability()
    plans = plans_by_capability(version_dir)
    if capability and capability in plans:
        config.write_text(tensorrt_config(config.read_text(), plans, plans[capability]))
        print(f"prepare_model: GPU {capability}: TensorRT plan {plans[capability]} (of {sorted(plans)})")
    else:
        found = ", ".join(sorted(plans)) or "none"
        print(
            f"prepare_model: GPU {capability or 'unknown'}: no TensorRT plan for it (plans: {found}); "
            f"serving {config.name} as published (ONNX Runtime with the TensorRT execution provider)"
        )


def trtexec_flags(args: argparse.Namespace) -> None:
    text = Path(args.config).read_text()
    span = block_span(text, "input", "[")
    inputs = text[span[0] : span[1]] if span else ""
    names = re.findall(r'name[ \t]*:[ \t]*"([^"]+)"', inputs)
    dims = re.findall(r"dims[ \t]*:[ \t]*\[([^\]]*)\]", inputs)
    if len(names) != 1 or len(dims) != 1:
        sys.exit(f"prepare_model: expected one input in {args.config}, found {names}")
    shape = "x".join(d.strip() for d in dims[0].split(","))
    max_batch = int(re.search(r"(?m)^[ \t]*max_batch_size[ \t]*:[ \t]*(\d+)", text).group(1))
    preferred = re.search(r"preferred_batch_size[ \t]*:[ \t]*\[([^\]]*)\]", text)
    opt = max(int(b) for b in preferred.group(1).split(",")) if preferred else max_batch
    batches = (("min", 1), ("opt", min(opt, max_batch)), ("max", max_batch))
    flags = [f"--{kind}Shapes={names[0]}:{batch}x{shape}" for kind, batch in batches]
    if re.search(r'key[ \t]*:[ \t]*"precision_mode"[ \t]*value[ \t]*:[ \t]*"FP16"', text):
        flags.append("--fp16")
    print(" ".join(flags))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    pin_parser = commands.add_parser("pin", help="pin the version; pick a TensorRT plan if one fits")
    pin_parser.add_argument("--model-dir", required=True)
    pin_parser.add_argument("--version", type=int, required=True)
    pin_parser.add_argument("--config", default="", help="the --model-config-name Triton will use")
    pin_parser.add_argument("--compute-capability", default="", help="override nvidia-smi (e.g. 8.6)")
    pin_parser.set_defaults(run=pin)
    flags_parser = commands.add_parser("trtexec-flags", help="trtexec shape flags for a config")
    flags_parser.add_argument("--config", required=True)
    flags_parser.set_defaults(run=trtexec_flags)
    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
