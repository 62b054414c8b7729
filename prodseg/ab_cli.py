"""``prodseg ab``: A/B tests between two (or more) versions of one model.

``start`` makes Triton serve the versions side by side (``version_policy: specific``, written into the
model's configs with the one config editor, then a reload) and asks the gateway to split traffic;
``report`` prints the gateway's per-version report; ``stop`` ends the split and serves one version;
``promote`` stops the test and moves the ``production`` alias to the winner. With API keys on, the
key comes from ``PRODSEG_API_KEY``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import httpx
import typer
from rich.console import Console

from clients import config_text
from clients.contract import default_repository
from clients.triton_admin import TritonAdmin
from prodseg.rollout import write_served_versions

ab_app = typer.Typer(help="A/B tests between model versions, split by the gateway.", no_args_is_help=True)
console = Console(stderr=True)

ModelOption = Annotated[str, typer.Option("--model", "-m", help="the model's name")]
GatewayOption = Annotated[str, typer.Option(help="the gateway's URL")]
TritonOption = Annotated[str, typer.Option(help="Triton's HTTP address, to reload the model")]
RepositoryOption = Annotated[Path | None, typer.Option(help="model repository (default: this checkout's)")]


def _fail(message: str) -> typer.Exit:
    console.print(f"[red]error:[/red] {message}")
    return typer.Exit(code=2)


def parse_split(text: str) -> dict[str, int]:
    """``1=50,2=50`` -> {"1": 50, "2": 50}."""
    weights = {}
    for part in text.split(","):
        version, _, weight = part.partition("=")
        if not version.strip().isdigit() or not weight.strip().isdigit():
            raise ValueError(f"expected VERSION=PERCENT pairs such as 1=50,2=50, got {part!r}")
        weights[version.strip()] = int(weight)
    return weights


def serve_versions(repository: Path, model: str, versions: list[int]) -> list[str]:
    """Write ``version_policy: specific`` with ``versions`` into every config of the model."""
    model_dir = repository / model
    return [str(path.relative_to(model_dir)) for path in write_served_versions(model_dir, versions)]


def reload_model(triton_http: str, model: str) -> None:
    """Ask Triton to re-read the model's config (the platform's one model-repository client)."""
    with TritonAdmin(triton_http, load_timeout_s=120) as admin:
        admin.load(model)


def _headers() -> dict[str, str]:
    """The API key from ``PRODSEG_API_KEY``, for a gateway with keys on."""
    key = os.environ.get("PRODSEG_API_KEY")
    return {"Authorization": f"Bearer {key}"} if key else {}


def _gateway(method: str, url: str) -> dict:
    try:
        response = httpx.request(method, url, timeout=30, headers=_headers())
    except httpx.HTTPError as error:
        raise _fail(f"gateway: {error}") from error
    return _answer(response)


def _answer(response: httpx.Response) -> dict:
    if response.status_code >= 400:
        try:
            error = response.json()["error"]
            raise _fail(f"{response.status_code} {error['code']}: {error['message']}")
        except (ValueError, KeyError):
            raise _fail(f"{response.status_code}: {response.text[:200]}") from None
    return response.json()


@ab_app.command()
def start(
    model: ModelOption,
    split: Annotated[str, typer.Option(help="VERSION=PERCENT pairs summing to 100, e.g. 1=50,2=50")],
    gateway: GatewayOption = "http://127.0.0.1:8080",
    triton_http: TritonOption = "127.0.0.1:8000",
    repository: RepositoryOption = None,
) -> None:
    """Serve the versions side by side on Triton and split the gateway's traffic between them."""
    try:
        weights = parse_split(split)
        configs = serve_versions(repository or default_repository(), model, sorted(int(v) for v in weights))
        reload_model(triton_http, model)
    except (ValueError, RuntimeError, config_text.ConfigTextError) as error:
        raise _fail(str(error)) from error
    try:
        response = httpx.put(
            f"{gateway}/v1/models/{model}/ab", json={"weights": weights}, timeout=30, headers=_headers()
        )
    except httpx.HTTPError as error:
        raise _fail(f"gateway: {error}") from error
    report = _answer(response)
    console.print(f"A/B test {report['id']} on {model}: {weights} (configs: {', '.join(configs)})")


@ab_app.command()
def report(model: ModelOption, gateway: GatewayOption = "http://127.0.0.1:8080") -> None:
    """Print the per-version report: requests, latency, prediction mix, confidence, accuracy, p-values."""
    print(json.dumps(_gateway("GET", f"{gateway}/v1/models/{model}/ab"), indent=2))


@ab_app.command()
def stop(
    model: ModelOption,
    keep: Annotated[int, typer.Option(help="the version to serve alone afterwards")],
    gateway: GatewayOption = "http://127.0.0.1:8080",
    triton_http: TritonOption = "127.0.0.1:8000",
    repository: RepositoryOption = None,
) -> None:
    """End the split (printing the final report) and serve one version."""
    final = _gateway("DELETE", f"{gateway}/v1/models/{model}/ab")
    try:
        serve_versions(repository or default_repository(), model, [keep])
        reload_model(triton_http, model)
    except (ValueError, RuntimeError) as error:
        raise _fail(str(error)) from error
    print(json.dumps(final, indent=2))
    console.print(f"A/B test on {model} stopped; serving version {keep}")


@ab_app.command()
def promote(
    model: ModelOption,
    version: Annotated[int, typer.Option(help="the winner: it becomes the production version")],
    gateway: GatewayOption = "http://127.0.0.1:8080",
    triton_http: TritonOption = "127.0.0.1:8000",
    repository: RepositoryOption = None,
) -> None:
    """Stop the test and move the ``production`` alias to ``version`` (served alone, reloaded)."""
    from training import registry  # the registry of record owns the aliases

    final = _gateway("DELETE", f"{gateway}/v1/models/{model}/ab")
    try:
        change = registry.promote(
            repository or default_repository(), model, version, "production", triton_http
        )
    except (ValueError, registry.RegistryError) as error:
        raise _fail(str(error)) from error
    print(json.dumps(final, indent=2))
    console.print(f"production: {change.previous} -> {change.version}; A/B test on {model} ended")
