"""What Triton's statistics API says a model answered: tests use it to see which model a request
reached (the model itself or its ``<model>_jpeg`` wire)."""

from __future__ import annotations

import tritonclient.grpc as grpcclient


def inference_count(grpc_url: str, model: str) -> int:
    """Requests Triton has answered successfully for ``model`` (every version)."""
    client = grpcclient.InferenceServerClient(grpc_url)
    try:
        stats = client.get_inference_statistics(model, as_json=True)["model_stats"]
    finally:
        client.close()
    return sum(int(entry["inference_stats"]["success"].get("count", 0)) for entry in stats)
