#!/usr/bin/env bash
# Print the commands that roll one model's version N out to an environment, and back. Runs nothing.
#
#   infra/rollout.sh [--env ENV] --model NAME N          (make rollout MODEL=NAME VERSION=N ENV=dev)
#
# The path: publish version N of the model to the model store -> (optionally) build its TensorRT
# plans -> helm upgrade with the release's models list, that one version changed (infra/model_values.py:
# `--set models[i].version` would replace the whole list). The new Deployment template (annotation,
# the model's label, init container arguments) rolls every Triton pod: one extra pod at a time
# (maxSurge 1, maxUnavailable 0), each taking traffic only when /v2/health/ready passes (every model
# loaded), old pods draining (preStop) before they stop. If a new pod never becomes ready (version
# missing, load failure), the rollout stalls with the old pods serving and `helm upgrade --atomic`
# rolls back by itself.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=infra/defaults.sh
source "$ROOT/infra/defaults.sh"

usage() { sed -n '2,4p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

ENV_NAME=dev
MODEL=""
while [[ $# -gt 1 ]]; do
  case "$1" in
    --env) ENV_NAME="$2"; shift 2 ;;
    --model) MODEL="$2"; shift 2 ;;
    *) break ;;
  esac
done
VERSION="${1:-}"
[[ "$VERSION" =~ ^[1-9][0-9]*$ && $# -eq 1 ]] || usage
[[ "$MODEL" =~ ^[a-z][a-z0-9_-]*[a-z0-9]$ ]] || { echo "rollout: --model NAME is required (a model of the release's models list)" >&2; usage; }
RG="$(resource_group "$ENV_NAME")"
OUT="az deployment group show -g $RG -n $(deployment_name "$ENV_NAME") --query properties.outputs"
NS="-n $NAMESPACE"
CHANGE="helm get values $RELEASE $NS --all -o json | python3 infra/model_values.py --model $MODEL"

cat <<STEPS
# Roll model $MODEL version $VERSION out to $ENV_NAME (release $RELEASE, namespace $NAMESPACE)

# 1. Publish: version $VERSION must exist in model_repository/$MODEL/$VERSION (prodseg publish
#    writes it and registers it in MLflow; prodseg deploy --alias production materialises it), then
#    upload the model folder (configs, labels, the new version) to the store.
ACCOUNT=\$($OUT.modelStoreBlobEndpoint.value -o tsv | sed -e 's#https://##' -e 's#\\..*##')
az storage blob upload-batch --auth-mode login --account-name "\$ACCOUNT" --destination models \\
  --destination-path $MODEL_PREFIX/$MODEL --source model_repository/$MODEL --overwrite

# 2. Optional: build the TensorRT plans of $MODEL version $VERSION on every GPU pool before any pod
#    needs them (otherwise the new pods serve it through ONNX Runtime + TensorRT EP until their next restart).
$CHANGE --engine-version $VERSION > $MODEL-engines.json
helm upgrade $RELEASE charts/prodsegmenter $NS --reuse-values -f $MODEL-engines.json --wait
kubectl $NS wait job -l app.kubernetes.io/component=engine-builder,prodseg.io/model=$MODEL,prodseg.io/model-version=$VERSION \\
  --for=condition=complete --timeout=30m

# 3. Roll out: every Triton pod is replaced, surge first, gated on readiness of every model.
$CHANGE --version $VERSION > $MODEL-v$VERSION.json
helm upgrade $RELEASE charts/prodsegmenter $NS --reuse-values -f $MODEL-v$VERSION.json \\
  --wait --atomic --timeout 30m
kubectl $NS rollout status deployment/$TRITON_DEPLOYMENT --timeout=30m

# 4. Check: every pod serves $MODEL version $VERSION, and Triton agrees.
kubectl $NS get pods -l app.kubernetes.io/component=triton -L model.prodseg.io/$MODEL
kubectl $NS exec deploy/$TRITON_DEPLOYMENT -c triton -- curl -fsS localhost:8000/v2/models/$MODEL/versions/$VERSION/ready -o /dev/null -w '%{http_code}\\n'

# Roll back (to the previous Helm revision, i.e. the previous models list):
helm history $RELEASE $NS
helm rollback $RELEASE $NS --wait
# or, at the Deployment level only (the next helm upgrade re-applies Helm's values):
kubectl $NS rollout undo deployment/$TRITON_DEPLOYMENT
STEPS
