"""What Triton's statistics API says a model answered: tests use it to see which model a request
reached (the model itself or its ``<model>_jpeg`` wire) and whether requests shared executions."""

from __future__ import annotations

from dataclasses import dataclass

import tritonclient.grpc as grpcclient


@dataclass(frozen=True)
class ModelStatistics:
    requests: int  # answered successfully, every version
    executions: int  # model executions (batches) that ran them


def statistics(grpc_url: str, model: str) -> ModelStatistics:
    client = grpcclient.InferenceServerClient(grpc_url)
    try:
        stats = client.get_inference_statistics(model, as_json=True)["model_stats"]
    finally:
        client.close()
    return ModelStatistics(
        requests=sum(int(entry["inference_stats"]["success"].get("count", 0)) for entry in stats),
        executions=sum(int(entry.get("execution_count", 0)) for entry in stats),
    )


def inference_count(grpc_url: str, model: str) -> int:
    """Requests Triton has answered successfully for ``model`` (every version)."""
    return statistics(grpc_url, model).requests
