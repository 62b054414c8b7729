"""``python -m gateway``: run the gateway with uvicorn (settings from PRODSEG_* variables)."""

from __future__ import annotations

import argparse

import uvicorn
from prometheus_client import start_http_server

from gateway.app import create_app
from gateway.settings import GatewaySettings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args()
    app = create_app()
    settings = GatewaySettings()
    if settings.metrics_port:  # Prometheus scrapes this port; the public one has no /metrics
        start_http_server(settings.metrics_port, addr=args.host, registry=app.state.metrics.registry)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
