"""The models this gateway serves: their contracts (from the repository) and a Triton client each.

Built once at start-up from ``clients.repository.discover``. A model whose config breaks the
platform's contract is left out and reported (``/readyz`` and the log name it and the field); the
others are served.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from clients.contract import ModelContract
from clients.repository import discover, model_versions
from clients.triton_client import TritonModelClient
from gateway.errors import ApiError
from gateway.settings import GatewaySettings

log = logging.getLogger("prodseg.gateway")


@dataclass
class ServedModel:
    contract: ModelContract
    client: TritonModelClient

    @property
    def name(self) -> str:
        return self.contract.model_name


class ModelCatalog:
    """Name -> ``ServedModel``; the default model answers ``/v1/frames`` and ``/v1/videos``."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        found = discover(settings.model_repository)
        wanted = settings.models or tuple(found.contracts)
        self.errors = {name: error for name, error in found.errors.items() if name in wanted}
        for name in wanted:
            if name not in found.contracts and name not in found.errors:
                self.errors[name] = f"{name}: no such model in {settings.model_repository}"
        for name, error in self.errors.items():
            log.error("model %s is not served: %s", name, error)
        self.contracts = {name: found.contracts[name] for name in wanted if name in found.contracts}
        self.default_model = found.default_model if found.default_model in self.contracts else None
        self.models: dict[str, ServedModel] = {}

    def open_clients(self) -> None:
        """Create the gRPC clients (inside the server's event loop, where gRPC channels must live)."""
        s = self.settings
        for name, contract in self.contracts.items():
            frames = min(s.frames_per_request, contract.max_batch_size)
            client = TritonModelClient(s.triton_grpc_url, contract, s.max_in_flight, frames)
            self.models[name] = ServedModel(contract, client)

    async def close(self) -> None:
        for model in self.models.values():
            await model.client.close()

    def get(self, name: str) -> ServedModel:
        try:
            return self.models[name]
        except KeyError:
            known = ", ".join(self.models) or "none"
            raise ApiError(404, "model_not_found", f"unknown model {name!r}; known models: {known}") from None

    def default(self) -> ServedModel:
        if self.default_model is None:
            raise ApiError(
                404, "no_default_model", "no default model is configured: use /v1/models/{model}/... routes"
            )
        return self.models[self.default_model]

    async def describe(self, model: ServedModel) -> dict:
        published, served = model_versions(
            model.name, self.settings.model_repository, self.settings.triton_config_name
        )
        ready_versions = await model.client.served_versions()
        return model.contract.to_dict() | {
            "versions": {
                "published": published,
                "served": served,
                "ready": [int(v) for v in ready_versions if v.isdigit()],
            },
            "ready": bool(ready_versions),
            "default": model.name == self.default_model,
        }
