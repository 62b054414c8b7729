"""``prodseg batch``: run a model over a folder of images as a resumable batch job, and merge shards.

The logic lives in ``prodseg.batch``; this module parses options, draws the progress bar and maps
outcomes to exit codes: 0 done (or nothing to do), 1 Triton unreachable or failed (rerun: it resumes),
2 the batch cannot run as asked (the message says why).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

batch_app = typer.Typer(
    help="Batch jobs: every image of a folder through a model once, resumable after any crash.",
    no_args_is_help=True,
)
console = Console(stderr=True, soft_wrap=True)  # paths in messages stay whole: no wrapping

SHARD_COUNT_ENV = "PRODSEG_BATCH_SHARD_COUNT"


@batch_app.command("run")
def run(
    input_path: Annotated[
        Path, typer.Argument(help="a folder of images (recursive) or a list file of paths")
    ],
    output: Annotated[Path, typer.Argument(help="output folder: predictions.csv/.jsonl, checkpoint")],
    model: Annotated[str, typer.Option(help="model of the repository to run")],
    triton: Annotated[
        str, typer.Option(help="Triton gRPC host:port", envvar="PRODSEG_TRITON_GRPC_URL")
    ] = "127.0.0.1:8001",
    shard_index: Annotated[
        int, typer.Option(help="this shard (an Indexed Job sets it)", envvar="JOB_COMPLETION_INDEX")
    ] = 0,
    shard_count: Annotated[int, typer.Option(help="number of shards", envvar=SHARD_COUNT_ENV)] = 1,
    max_in_flight: Annotated[int, typer.Option(help="requests in flight to Triton")] = 4,
    frames_per_request: Annotated[
        int, typer.Option(help="images per request, up to max_batch_size (0: by image size)")
    ] = 0,
    pushgateway: Annotated[
        str | None, typer.Option(help="Prometheus Pushgateway URL", envvar="PRODSEG_PUSHGATEWAY_URL")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="count the work (total, done, to do) only")
    ] = False,
    repository: Annotated[
        Path | None, typer.Option(help="model repository holding the contract (default: this checkout's)")
    ] = None,
) -> None:
    """Predict every image of INPUT once; the same command after a crash resumes where it stopped."""
    from prodseg.batch import BatchError, BatchSettings, TritonFailure, plan_batch, push_metrics, run_batch

    try:
        settings = BatchSettings(
            model=model,
            source=input_path,
            output=output,
            triton_url=triton,
            shard_index=shard_index,
            shard_count=shard_count,
            max_in_flight=max_in_flight,
            frames_per_request=frames_per_request,
            repository=repository,
        )
        plan = plan_batch(settings)
    except BatchError as error:
        raise _fail(str(error)) from None

    counts = plan.counts()
    if not plan.input.items:
        console.print(
            f"No images in {plan.input.source} (looked for PNG, JPEG, BMP, WebP, TIFF): nothing to do."
        )
        return
    if plan.input.duplicates:
        console.print(f"{plan.input.duplicates} repeated paths in {plan.input.source} are processed once.")
    if dry_run:
        typer.echo(json.dumps({"folder": str(settings.folder), "shard_index": shard_index, **counts}))
        return
    if plan.meta and not counts["todo"]:  # run_batch still writes summary.json, without Triton
        console.print(f"All {counts['total']} images of {settings.folder} are done: nothing to do.")

    with Progress(
        TextColumn(f"{model} shard {shard_index}/{shard_count}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=not console.is_terminal,
    ) as progress:
        bar = progress.add_task("batch", total=counts["total"], completed=counts["done"])
        try:
            report = asyncio.run(run_batch(plan, lambda n: progress.advance(bar, n)))
        except BatchError as error:
            raise _fail(str(error)) from None
        except TritonFailure as error:
            console.print(f"[red]error:[/red] {error}")
            raise typer.Exit(code=1) from None
    console.print(
        f"{report.processed} predicted, {report.failed} failed in {report.seconds:.1f} s "
        f"({report.images_per_s:.1f} images/s); {report.done_total}/{report.total} done -> {settings.folder}"
    )
    if pushgateway:
        try:
            push_metrics(pushgateway, report)
        except OSError as error:  # metrics are a report, not the job: never fail a finished batch on them
            console.print(f"[yellow]warning:[/yellow] could not push metrics to {pushgateway}: {error}")


@batch_app.command("merge")
def merge(
    output: Annotated[Path, typer.Argument(help="the output folder holding shard-<i>/ folders")],
    if_complete: Annotated[
        bool,
        typer.Option(
            "--if-complete",
            help="exit 0 without merging while shards are missing or unfinished "
            "(each shard's pod runs it when done: the last one merges)",
        ),
    ] = False,
) -> None:
    """Join the shards' results into OUTPUT/predictions.csv and .jsonl (each image once, sorted)."""
    from prodseg.batch import BatchError, ShardsPending, merge_shards

    try:
        report = merge_shards(output)
    except ShardsPending as pending:
        if if_complete:
            console.print(f"not merging yet: {pending}")
            return
        raise _fail(str(pending)) from None
    except BatchError as error:
        raise _fail(str(error)) from None
    console.print(
        f"merged {report.shards} shards of {report.model} v{report.version}: {report.rows} images "
        f"({report.ok} ok, {report.failed} failed) -> {output}"
    )


def _fail(message: str) -> typer.Exit:
    console.print(f"[red]error:[/red] {message}")
    return typer.Exit(code=2)
