"""A values file that changes one model's version in a release's `models` list; standard library only.

    helm get values RELEASE -n NS --all -o json \\
      | python3 infra/model_values.py --model crack_segmenter --version 5 > models.json
    helm upgrade RELEASE charts/prodsegmenter -n NS --reuse-values -f models.json --wait --atomic

`helm upgrade --set models[1].version=5` does not do this: Helm replaces a list given on the command
line whole, so every other entry would be lost (the schema then refuses the release). This reads
the release's whole list and writes it back with one entry changed: ``--version`` rolls the model
out (and drops its engineVersion, which then follows the version); ``--engine-version`` only builds
TensorRT plans for a version ahead of its rollout. The output is JSON, which Helm reads as YAML.
"""

from __future__ import annotations

import argparse
import json
import sys


def change(values: dict, model: str, version: int | None, engine_version: int | None) -> dict:
    """``{"models": [...]}`` with ``model``'s entry changed; raises ValueError naming the problem."""
    models = values.get("models")
    if not isinstance(models, list) or not all(isinstance(m, dict) and "name" in m for m in models):
        raise ValueError("the values have no models list (was this from `helm get values --all -o json`?)")
    names = [m["name"] for m in models]
    if model not in names:
        raise ValueError(
            f"unknown model {model!r}; the release serves {', '.join(names)} "
            "(add a new model to the models list of your values file instead)"
        )
    changed = []
    for entry in models:
        entry = dict(entry)
        if entry["name"] == model:
            if version is not None:
                entry["version"] = version
                entry.pop("engineVersion", None)
            if engine_version is not None:
                entry["engineVersion"] = engine_version
        changed.append(entry)
    return {"models": changed}


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"a model version is an integer >= 1, got {text}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="the model's name (an entry of models)")
    parser.add_argument("--version", type=positive, help="the version to serve")
    parser.add_argument("--engine-version", type=positive, help="the version to build TensorRT plans for")
    args = parser.parse_args(argv)
    if args.version is None and args.engine_version is None:
        parser.error("give --version, --engine-version or both")
    try:
        values = json.load(sys.stdin)
        result = change(values, args.model, args.version, args.engine_version)
    except (ValueError, AttributeError) as error:  # JSONDecodeError is a ValueError
        print(f"model_values: {error}", file=sys.stderr)
        return 2
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
