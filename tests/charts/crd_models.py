"""Validate Prometheus Operator objects against their CRD models (cloudcoil's pydantic models).

Run with the tools venv's Python (``.tools/venv/bin/python tests/charts/crd_models.py FILE...``);
the project's venv does not carry these models. Reads every YAML document in the files, validates
ServiceMonitor and PrometheusRule documents, prints one JSON line per document and exits 1 if any
failed. pydantic ignores unknown fields, so a document must also survive a round trip unchanged:
a misspelt field is an error here, as it is for the API server's structural schema.
"""

from __future__ import annotations

import json
import sys

import yaml
from cloudcoil.models.prometheus_operator import v1

MODELS = {"ServiceMonitor": v1.ServiceMonitor, "PrometheusRule": v1.PrometheusRule}


def differences(given, dumped, path: str = "") -> list[str]:
    """Paths present in ``given`` that the model dropped or changed."""
    if isinstance(given, dict) and isinstance(dumped, dict):
        found = []
        for key, value in given.items():
            if key not in dumped:
                found.append(f"{path}.{key}: unknown field")
            else:
                found.extend(differences(value, dumped[key], f"{path}.{key}"))
        return found
    if isinstance(given, list) and isinstance(dumped, list) and len(given) == len(dumped):
        return [
            d
            for i, (g, o) in enumerate(zip(given, dumped, strict=True))
            for d in differences(g, o, f"{path}[{i}]")
        ]
    return [] if given == dumped or str(given) == str(dumped) else [f"{path}: {given!r} became {dumped!r}"]


def main(paths: list[str]) -> int:
    failed = 0
    for path in paths:
        with open(path) as file:
            documents = [d for d in yaml.safe_load_all(file) if d]
        for document in documents:
            kind = document.get("kind")
            if kind not in MODELS:
                continue
            name = document.get("metadata", {}).get("name")
            try:
                model = MODELS[kind].model_validate(document)
                errors = differences(
                    document, model.model_dump(mode="json", by_alias=True, exclude_unset=True)
                )
            except Exception as error:  # noqa: BLE001 - report any validation error for this document
                errors = [str(error)]
            failed += bool(errors)
            print(json.dumps({"kind": kind, "name": name, "errors": errors}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
