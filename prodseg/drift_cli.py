"""``prodseg drift``: build a model version's drift reference, and report a folder of images against it.

Both commands run the model's bare engine (``model_repository/onnx_runner.py``, the runner Triton
serves) over the images, so the reference holds the outputs the served model gives.

    prodseg drift reference --model shelf_segmenter IMAGES_DIR   # <model>/<version>/drift_reference.json
    prodseg drift report --model shelf_segmenter IMAGES_DIR -o report.html [--json report.json]
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

drift_app = typer.Typer(
    help="Data drift: build a model version's reference, report a folder of images against it.",
    no_args_is_help=True,
)
console = Console(stderr=True)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}

ModelOption = Annotated[str, typer.Option("--model", help="model folder name in the repository")]
VersionOption = Annotated[int | None, typer.Option(help="model version (default: the latest)")]
RepositoryOption = Annotated[Path | None, typer.Option(help="model repository (default: this checkout's)")]
ImagesArgument = Annotated[
    Path, typer.Argument(help="folder of images (png, jpg, bmp, webp; searched recursively)")
]
ThreadsOption = Annotated[int, typer.Option(help="engine threads (0: all cores)")]


def _fail(message: str) -> typer.Exit:
    console.print(f"[red]error:[/red] {message}")
    return typer.Exit(code=2)


def image_files(images_dir: Path) -> list[Path]:
    if not images_dir.is_dir():
        raise ValueError(f"{images_dir} is not a folder")
    files = sorted(p for p in images_dir.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"{images_dir} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return files


def model_outputs(
    model: str, version: int, files: list[Path], repository: Path | None, threads: int
) -> Iterator[tuple[Path, object, dict]]:
    """(file, RGB image as read, output summary) per image, from the version's bare engine."""
    from clients.contract import ModelContract
    from clients.drift import summarize_outputs
    from clients.images import decode_image
    from prodseg.engine import load_engine

    contract = ModelContract.load(model, repository)
    engine = load_engine(model, repository, version, threads=threads)
    for path in files:
        try:
            image = decode_image(path.read_bytes())
        except (OSError, ValueError) as error:
            raise ValueError(f"{path}: {error}") from error
        outputs = engine(contract.to_model_input(image)[None])
        single = {name: value[0] for name, value in outputs.items()}
        yield path, image, summarize_outputs(contract.task, single, contract.num_classes)


def _resolve(model: str, version: int | None, repository: Path | None):
    from clients.contract import ContractError, ModelContract
    from clients.repository import latest_version

    try:
        contract = ModelContract.load(model, repository)
        return contract, version or latest_version(model, repository)
    except (ContractError, FileNotFoundError) as error:
        raise _fail(str(error)) from error


def build_reference(
    model: str,
    images_dir: Path,
    version: int | None = None,
    repository: Path | None = None,
    components: int = 3,
    threads: int = 0,
):
    """Run the model version over ``images_dir`` and save its reference; returns it (``ValueError``s)."""
    from clients.contract import ModelContract
    from clients.drift import DriftReference, reference_path
    from clients.repository import latest_version

    contract = ModelContract.load(model, repository)
    version = version or latest_version(model, repository)
    rows = list(model_outputs(model, version, image_files(images_dir), repository, threads))
    built = DriftReference.build(
        model,
        contract.task,
        contract.labels.names,
        [image for _, image, _ in rows],
        [summary for _, _, summary in rows],
        version=version,
        components=components,
    )
    built.save(reference_path(model, version, repository))
    return built


@drift_app.command()
def reference(
    images_dir: ImagesArgument,
    model: ModelOption,
    version: VersionOption = None,
    repository: RepositoryOption = None,
    components: Annotated[int, typer.Option(help="principal components of the thumbnail embedding")] = 3,
    threads: ThreadsOption = 0,
) -> None:
    """Run the model over held-out images and write drift_reference.json beside its version."""
    from clients.drift import reference_path

    _, version = _resolve(model, version, repository)
    try:
        built = build_reference(model, images_dir, version, repository, components, threads)
    except ValueError as error:
        raise _fail(str(error)) from error
    console.print(
        f"{model} v{version}: reference of {built.num_samples} images, {len(built.feature_names)} features"
    )
    print(reference_path(model, version, repository))


@drift_app.command()
def report(
    images_dir: ImagesArgument,
    model: ModelOption,
    output: Annotated[Path, typer.Option("-o", "--output", help="HTML report to write")] = Path(
        "drift_report.html"
    ),
    json_output: Annotated[Path | None, typer.Option("--json", help="also write the report as JSON")] = None,
    version: VersionOption = None,
    repository: RepositoryOption = None,
    min_samples: Annotated[int, typer.Option(help="fewer images: insufficient_data")] = 30,
    alpha: Annotated[float, typer.Option(help="family-wise significance (Bonferroni)")] = 0.01,
    threads: ThreadsOption = 0,
) -> None:
    """Test a folder of images (as one window) against the version's reference: HTML with plots."""
    import json

    from clients.atomic import write_text
    from clients.drift import DriftReference, DriftSettings, reference_path
    from prodseg.drift_report import render_html

    _, version = _resolve(model, version, repository)
    try:
        ref = DriftReference.load(reference_path(model, version, repository))
        files = image_files(images_dir)
        samples = [
            ref.sample(image, summary)
            for _, image, summary in model_outputs(model, version, files, repository, threads)
        ]
        result = ref.compare(samples, DriftSettings(alpha=alpha, min_samples=min_samples))
    except (ValueError, FileNotFoundError) as error:
        raise _fail(str(error)) from error
    write_text(output, render_html(result, ref, samples, source=str(images_dir)))
    if json_output:
        write_text(json_output, json.dumps(result, indent=2) + "\n")
    drifted = ", ".join(result["drifted_features"]) or "none"
    console.print(f"{model} v{version}: {result['status']} on {len(samples)} images; drifted: {drifted}")
    print(output)
