"""Build ``drift_reference.json`` for every published model version that lacks one.

    .venv/bin/python -m benchmarks.drift_references [--images 400] [--force] [--threads 2]

Each model's reference images are held-out scenes from its own generator in ``datagen`` (a base
seed, or split, that its training never draws), written to a temporary folder and run through the
model's bare engine by ``prodseg drift reference`` (``prodseg.drift_cli.build_reference``). With
real data, run ``prodseg drift reference --model M IMAGES_DIR`` on held-out production images.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from pathlib import Path

from clients.contract import default_repository
from clients.drift import reference_path
from clients.repository import versions
from prodseg.drift_cli import build_reference

HELD_OUT_SEED = 7070  # no training configuration uses it


def _shelves(out: Path, count: int) -> None:
    from datagen.shelves import write_dataset

    write_dataset(out, count, seed=HELD_OUT_SEED)


def _cracks(out: Path, count: int) -> None:
    from datagen.cracks import write_crack_folder

    write_crack_folder(out, count, seed=HELD_OUT_SEED)


def _faces(out: Path, count: int) -> None:
    from datagen.faces import write_yolo_dataset

    write_yolo_dataset(out, count, split="test", seed=HELD_OUT_SEED)  # identities training never sees


def _products(out: Path, count: int) -> None:
    from datagen.products import write_image_folder

    write_image_folder(out, count, seed=HELD_OUT_SEED)


def _engagement(out: Path, count: int) -> None:
    from datagen.engagement import write_image_folder

    write_image_folder(out, count, seed=HELD_OUT_SEED)


GENERATORS: dict[str, Callable[[Path, int], None]] = {
    "shelf_segmenter": _shelves,
    "crack_segmenter": _cracks,
    "mask_detector": _faces,
    "returns_classifier": _products,
    "engagement_classifier": _engagement,
}
# Where each writer puts its images (masks and labels live beside them and must not be read).
IMAGE_FOLDERS = {name: "images" for name in GENERATORS} | {
    "returns_classifier": "",
    "engagement_classifier": "",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--force", action="store_true", help="rebuild references that exist")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    for model, generate in GENERATORS.items():
        published = versions(default_repository() / model)
        if not published:
            print(f"{model}: no published version yet")
            continue
        version = published[-1]
        if reference_path(model, version).exists() and not args.force:
            print(f"{model} v{version}: has a reference")
            continue
        with tempfile.TemporaryDirectory(prefix=f"drift-{model}-") as scratch:
            generate(Path(scratch), args.images)
            built = build_reference(
                model, Path(scratch) / IMAGE_FOLDERS[model], version, threads=args.threads
            )
        print(
            f"{model} v{version}: reference of {built.num_samples} images -> {reference_path(model, version)}"
        )


if __name__ == "__main__":
    main()
