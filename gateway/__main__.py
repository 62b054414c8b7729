"""``python -m gateway``: run the gateway with uvicorn (settings from PRODSEG_* variables)."""

from __future__ import annotations

import argparse

import uvicorn

from gateway.app import create_app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args()
    uvicorn.run(create_app(), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
