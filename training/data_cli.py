"""``prodseg`` commands for datasets and SAM bootstrapping (registered by prodseg.cli).

``ingest`` checks an SKU-110K-format CSV, ``bootstrap`` turns its boxes into a mask dataset, and
``synth-boxes`` writes such a CSV from generated shelves for trying both without the real data.
``data snapshot|track|versions|checkout`` version each model's feedback and base training sets with
DVC (training/data_versions.py).
Only typer and the standard library are imported at load time: the rest inside the commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from rich.console import Console

    from training.data_versions import Snapshot

CsvArgument = Annotated[
    Path, typer.Argument(help="annotations CSV: image_name,x1,y1,x2,y2,class,image_width,image_height")
]
ImagesArgument = Annotated[Path, typer.Argument(help="folder holding the images the CSV names")]
ModelOption = Annotated[str, typer.Option(help="the model whose data is versioned, e.g. shelf_segmenter")]
WorkspaceOption = Annotated[
    Path | None,
    typer.Option(help="the DVC workspace (default: $PRODSEG_DATA_WORKSPACE, else out/data)"),
]
RemoteOption = Annotated[
    str | None,
    typer.Option(
        help="DVC remote URL or folder "
        "(default: $PRODSEG_DVC_REMOTE, else the workspace's, else out/dvc-remote)"
    ),
]

data_app = typer.Typer(
    help="Versioned datasets (DVC): snapshot each model's feedback, track its base training set, "
    "list versions, restore one.",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``; heavy imports stay inside the commands."""
    app.command()(ingest)
    app.command()(bootstrap)
    app.command("synth-boxes")(synth_boxes)
    data_app.command()(snapshot)
    data_app.command()(track)
    data_app.command()(versions)
    data_app.command()(checkout)
    app.add_typer(data_app, name="data")


def snapshot(
    model: ModelOption,
    message: Annotated[str | None, typer.Option(help="a note kept with the version")] = None,
    feedback_dir: Annotated[
        Path | None,
        typer.Option(
            help="the gateway's feedback folder (default: $PRODSEG_GATEWAY_DATA_DIR/feedback, "
            "else out/gateway/feedback)"
        ),
    ] = None,
    workspace: WorkspaceOption = None,
    remote: RemoteOption = None,
) -> None:
    """Freeze a model's current feedback into a new data version (dvc add) and push it to the remote.

    The complete entries of the gateway's index are copied into the workspace and added with DVC;
    the version is `feedback/<model>/v<N>`. Nothing new since the last version: no version is made
    (exit 0). A push that fails keeps the version in the local cache, says why and exits 1; the
    next snapshot pushes it again.
    """
    from training.cli_output import console, fail
    from training.data_versions import DataVersionError, DataWorkspace, DvcError, default_feedback_root

    feedback_root = feedback_dir or default_feedback_root()
    if not (feedback_root / model).is_dir():
        known = sorted(p.name for p in feedback_root.glob("*") if (p / "index.jsonl").is_file())
        raise fail(f"no feedback for {model} in {feedback_root} (models with feedback: {known or 'none'})")
    store = DataWorkspace(workspace, remote)
    try:
        with console().status(f"Snapshotting the feedback of {model}"):
            result = store.snapshot(model, feedback_root, message)
    except (DataVersionError, OSError) as error:
        raise fail(str(error)) from None
    except DvcError as error:
        console().print(f"[red]error:[/red] dvc failed in {store.root}: {error}")
        raise typer.Exit(code=1) from None
    if result.skipped:
        console().print(
            f"left out {len(result.skipped)} entries whose files are missing: {result.skipped[:5]}"
        )
    if result.version is None:
        console().print(f"nothing to snapshot: {model} has no feedback entries yet")
        return
    _report_version(result, store.root, "entries", "snapshot")


def track(
    path: Annotated[Path | None, typer.Argument(help="the base training set's folder (with --model)")] = None,
    model: Annotated[
        str | None, typer.Option(help="the model it trains (default with --config: the config's)")
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help="a training config: track the data it trains on (a folder, or procedural data "
            "rendered to a folder) instead of PATH",
        ),
    ] = None,
    message: Annotated[str | None, typer.Option(help="a note kept with the version")] = None,
    workspace: WorkspaceOption = None,
    remote: RemoteOption = None,
) -> None:
    """Version a model's base training set with DVC, beside its feedback: `base/<model>/v<N>`.

    PATH (a folder) is copied into the workspace as it is and added with DVC. With --config, the
    config's own data is tracked: its folder, or its procedural scenes rendered at the model's input
    size (train/, val/, test/ in the folder format). Training runs on that data then name this version
    in their lineage (data.json, MLflow params and tags, the model card). The same data as the latest
    base version: no version (exit 0). A push that fails keeps the version locally, says why and
    exits 1; the next track pushes it again.
    """
    from training.cli_output import console, fail
    from training.config import ConfigError, load_config
    from training.data_versions import DataVersionError, DataWorkspace, DvcError, track_config
    from training.datasets import DatasetError

    if (path is None) == (config is None):
        raise fail("give either PATH (with --model) or --config")
    store = DataWorkspace(workspace, remote)
    try:
        if config is not None:
            loaded = load_config(config)
            named = loaded.publish.model_name
            if model is not None and model != named:
                raise fail(f"--model {model}, but {config} trains {named}")
            model = named
            with console().status(f"Tracking the data of {config}"):
                result = track_config(loaded, store, message)
        else:
            if model is None:
                raise fail("--model is required with PATH")
            with console().status(f"Tracking {path} as {model}'s base training set"):
                result = store.track(model, path, message)
    except (DataVersionError, ConfigError, DatasetError, OSError) as error:
        raise fail(str(error)) from None
    except DvcError as error:
        console().print(f"[red]error:[/red] dvc failed in {store.root}: {error}")
        raise typer.Exit(code=1) from None
    _report_version(result, store.root, "images", "track")


def _report_version(result: Snapshot, workspace: Path, counted: str, command: str) -> None:
    """Say what a snapshot or track made; a version the remote did not get exits 1, naming why."""
    from training.cli_output import console

    version = result.version
    assert version is not None
    if result.created:
        console().print(
            f"{version.id}: {version.entries} {counted}, {version.files} files, md5 {version.md5}"
        )
    else:
        console().print(f"nothing new since {version.id}: no new version")
    if not version.pushed:
        console().print(
            f"[red]error:[/red] push of {version.id} to the DVC remote {version.remote} failed: "
            f"{version.push_error}. The version is kept in {workspace}; the next {command} pushes it again."
        )
        raise typer.Exit(code=1)
    print(version.id)  # stdout: the version alone, for scripts


def versions(
    model: ModelOption,
    workspace: WorkspaceOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the versions as JSON")] = False,
) -> None:
    """List a model's data versions, base sets then feedback: id, entries (feedback) or images (base),
    files, DVC md5, when, pushed to which remote, where a base set came from."""
    import json

    from rich.table import Table

    from training.cli_output import console, fail
    from training.data_versions import DataVersionError, DataWorkspace

    try:
        found = DataWorkspace(workspace).all_versions(model)
    except DataVersionError as error:
        raise fail(str(error)) from None
    if as_json:
        print(json.dumps([version.to_dict() for version in found], indent=2))
        return
    if not found:
        console().print(
            f"{model} has no data versions yet (`prodseg data snapshot --model {model}`, "
            f"`prodseg data track --model {model} PATH`)"
        )
        return
    table = Table("version", "entries", "files", "md5", "created", "remote", "source", "message")
    for version in found:
        pushed = version.remote if version.pushed else f"[red]not pushed[/red] ({version.push_error})"
        table.add_row(
            version.id,
            str(version.entries),
            str(version.files),
            version.md5,
            version.created,
            pushed,
            version.source or "",
            version.message or "",
        )
    console().print(table)


def checkout(
    model: ModelOption,
    version: Annotated[
        str,
        typer.Option(
            help="N, vN or latest (feedback), base/vN or base/latest, or a full id "
            "(feedback/<model>/vN, base/<model>/vN)"
        ),
    ] = "latest",
    out: Annotated[
        Path | None,
        typer.Option(
            help="an empty or new folder for the files (default: <workspace>/checkouts/<model>/v<N>)"
        ),
    ] = None,
    workspace: WorkspaceOption = None,
    remote: RemoteOption = None,
) -> None:
    """Restore a data version's files into a folder with `dvc pull` (local cache first, then the remote).

    A feedback version is a dataset in the gateway's layout (segmentation: images/ + masks/), ready
    for a training config's `data: {kind: folder, root: ...}`; a base version is the folder that was
    tracked (procedural data: train/, val/, test/). A run on the folder records this version.
    """
    from training.cli_output import console, fail
    from training.data_versions import DataVersionError, DataWorkspace, DvcError

    store = DataWorkspace(workspace, remote)
    try:
        restored, folder = store.checkout(model, version, out)
    except (DataVersionError, OSError) as error:
        raise fail(str(error)) from None
    except DvcError as error:
        remote_url = store.configured_remote()
        console().print(f"[red]error:[/red] dvc pull of {model} {version} from {remote_url} failed: {error}")
        raise typer.Exit(code=1) from None
    console().print(f"{restored.id}: {restored.files} files in {folder}")
    print(folder)


def ingest(
    csv_path: CsvArgument,
    images_dir: ImagesArgument,
    report: Annotated[Path | None, typer.Option(help="also write the full report (JSON) here")] = None,
    show: Annotated[int, typer.Option(help="how many skipped rows to list")] = 20,
) -> None:
    """Validate SKU-110K-format box annotations against their images and report what is skipped and why.

    Every row is checked: 8 fields, numeric coordinates, x1 < x2 and y1 < y2, the box inside the
    image (by the CSV's size columns and the file's own size), and the image present and readable.
    Bad rows are listed with their line numbers; the command fails only when no row is usable.
    """
    from training.cli_output import console, fail
    from training.datasets import DatasetError, write_json_atomically
    from training.sku110k import read_annotations

    try:
        with console().status(f"Checking {csv_path}"):
            annotations = read_annotations(csv_path, images_dir)
        summary = annotations.report()
        _print_annotations(console(), summary, show)
        if report is not None:
            write_json_atomically(report, summary)
            console().print(f"full report in {report}")
    except (DatasetError, OSError) as error:  # OSError: e.g. the report's folder is not writable
        raise fail(str(error)) from None


def bootstrap(
    csv_path: CsvArgument,
    images_dir: ImagesArgument,
    out_dir: Annotated[Path, typer.Argument(help="dataset folder to write (images/, masks/, provenance/)")],
    model: Annotated[
        str, typer.Option(help="the model whose labels.txt names the classes (it needs a 'product' class)")
    ],
    labeler: Annotated[
        str, typer.Option(help="'sam': Segment Anything box prompts; 'box': filled boxes, no checkpoint")
    ] = "sam",
    checkpoint: Annotated[
        Path | None, typer.Option(help="SAM checkpoint file (.pth), for --labeler sam")
    ] = None,
    model_type: Annotated[
        str, typer.Option(help="SAM type of the checkpoint: vit_b, vit_l or vit_h ('tiny': tests only)")
    ] = "vit_b",
    box_batch: Annotated[int, typer.Option(help="boxes per SAM call; lower it if memory runs out")] = 64,
    min_predicted_iou: Annotated[
        float, typer.Option(help="SAM masks predicted below this IoU fall back to the filled box")
    ] = 0.5,
) -> None:
    """Turn box annotations into a mask dataset (folder format) with Segment Anything box prompts.

    Validates the CSV as `prodseg ingest` does, then labels each image: SAM embeds it once and
    decodes all its boxes; a box SAM is unsure of falls back to the filled box (counted). Writes
    OUT_DIR/images, OUT_DIR/masks (product / background class ids), per-image provenance and a
    report. Rerunning skips images already finished, so an interrupted run resumes.
    """
    from rich.progress import Progress

    from clients.contract import ContractError, ModelContract
    from training.cli_output import console, fail
    from training.datasets import DatasetError
    from training.sam_bootstrap import BootstrapError, bootstrap_masks, check_options
    from training.sku110k import read_annotations

    try:
        check_options(labeler, checkpoint, model_type, box_batch)
        with console().status(f"Checking {csv_path}"):
            annotations = read_annotations(csv_path, images_dir)
        _print_annotations(console(), annotations.report(), show=5)
        with Progress(console=console(), transient=True) as progress:
            result = bootstrap_masks(
                annotations,
                images_dir,
                out_dir,
                ModelContract.load(model).labels,
                labeler=labeler,
                checkpoint=checkpoint,
                model_type=model_type,
                box_batch=box_batch,
                min_predicted_iou=min_predicted_iou,
                progress=progress,
            )
    except (DatasetError, BootstrapError, ContractError, OSError) as error:  # OSError: OUT_DIR not writable
        raise fail(str(error)) from None
    iou = "n/a" if result.mean_predicted_iou is None else f"{result.mean_predicted_iou:.3f}"
    console().print(
        f"labelled {result.images_done} images ({result.images_skipped_existing} already done) in "
        f"{result.seconds:.1f} s: {result.boxes} boxes, {result.boxes_fallback} fell back to the filled box, "
        f"mean predicted IoU {iou}"
    )
    console().print(f"dataset in {out_dir}; report in {out_dir / 'bootstrap_report.json'}")


def synth_boxes(
    out_dir: Annotated[Path, typer.Argument(help="new folder for images/ and annotations.csv")],
    count: Annotated[int, typer.Option(help="shelf images to render")] = 8,
    seed: Annotated[int, typer.Option(help="base seed; image i is scene_seed(seed, i)")] = 0,
    height: Annotated[int, typer.Option(help="image height in pixels")] = 384,
    width: Annotated[int, typer.Option(help="image width in pixels")] = 640,
) -> None:
    """Write generated shelves in SKU-110K format (JPEGs + box CSV), to try ingest and bootstrap without data.

    Boxes are the connected regions of the product class, so touching facings share a box.
    """
    from rich.progress import Progress

    from training.cli_output import console, fail
    from training.datasets import DatasetError
    from training.sku110k import write_sku110k_from_synth

    try:
        with Progress(console=console(), transient=True) as progress:
            csv_path = write_sku110k_from_synth(out_dir, count, seed, height, width, progress=progress)
    except (DatasetError, OSError) as error:
        raise fail(str(error)) from None
    rows = len(csv_path.read_text().splitlines())
    console().print(f"wrote {count} images and {rows} boxes: {csv_path}")
    console().print(
        f"try: prodseg bootstrap {csv_path} {out_dir / 'images'} DATASET_DIR "
        "--model shelf_segmenter --labeler box"
    )


def _print_annotations(out: Console, summary: dict[str, Any], show: int) -> None:
    out.print(
        f"{summary['rows']} rows: {summary['valid_rows']} valid boxes on {summary['images']} images, "
        f"{summary['skipped_rows']} skipped"
    )
    for kind, count in summary["skipped_by_kind"].items():
        out.print(f"  {count:6d} x {kind}")
    for row in summary["skipped"][:show]:
        out.print(f"  line {row['line']}: {row['reason']}", highlight=False, markup=False)
    if summary["skipped_rows"] > show:
        out.print(f"  ... {summary['skipped_rows'] - show} more skipped rows")
