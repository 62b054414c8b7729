#!/usr/bin/env bash
# Print the commands that roll model version N out to an environment, and back. Runs nothing.
#
#   infra/rollout.sh [--env ENV] N          (make rollout VERSION=N ENV=dev)
#
# The path: publish version N to the model store -> (optionally) build its TensorRT plans ->
# helm upgrade --set model.version=N. The new Deployment template (annotation, label, env) rolls
# every Triton pod: one extra pod at a time (maxSurge 1, maxUnavailable 0), each taking traffic only
# when /v2/health/ready passes, old pods draining (preStop) before they stop. If a new pod never
# becomes ready (version missing, load failure), the rollout stalls with the old pods serving and
# `helm upgrade --atomic` rolls back by itself.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=infra/defaults.sh
source "$ROOT/infra/defaults.sh"

ENV_NAME=dev
while [[ $# -gt 1 ]]; do
  case "$1" in
    --env) ENV_NAME="$2"; shift 2 ;;
    *) break ;;
  esac
done
VERSION="${1:-}"
[[ "$VERSION" =~ ^[1-9][0-9]*$ ]] || { sed -n '2,4p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
RG="$(resource_group "$ENV_NAME")"
OUT="az deployment group show -g $RG -n $(deployment_name "$ENV_NAME") --query properties.outputs"
NS="-n $NAMESPACE"

cat <<STEPS
# Roll model $MODEL_NAME version $VERSION out to $ENV_NAME (release $RELEASE, namespace $NAMESPACE)

# 1. Publish: version $VERSION must exist in model_repository/$MODEL_NAME/$VERSION (prodseg publish
#    writes it), then upload the model folder (configs, labels, aliases.json, new version) to the store.
ACCOUNT=\$($OUT.modelStoreBlobEndpoint.value -o tsv | sed -e 's#https://##' -e 's#\\..*##')
az storage blob upload-batch --auth-mode login --account-name "\$ACCOUNT" --destination models \\
  --destination-path $MODEL_PREFIX/$MODEL_NAME --source model_repository/$MODEL_NAME --overwrite

# 2. Optional: build the TensorRT plans of version $VERSION on every GPU pool before any pod needs them
#    (otherwise the new pods serve through ONNX Runtime + TensorRT EP until their next restart).
helm upgrade $RELEASE charts/prodsegmenter $NS --reuse-values --set tensorrt.modelVersion=$VERSION --wait
kubectl $NS wait job -l app.kubernetes.io/component=engine-builder,prodseg.io/model-version=$VERSION \\
  --for=condition=complete --timeout=30m

# 3. Roll out: every Triton pod is replaced, surge first, gated on readiness.
helm upgrade $RELEASE charts/prodsegmenter $NS --reuse-values --set model.version=$VERSION \\
  --set tensorrt.modelVersion=null --wait --atomic --timeout 30m
kubectl $NS rollout status deployment/$TRITON_DEPLOYMENT --timeout=30m

# 4. Check: every pod serves version $VERSION, and Triton agrees.
kubectl $NS get pods -l app.kubernetes.io/component=triton -L prodseg.io/model-version
kubectl $NS exec deploy/$TRITON_DEPLOYMENT -c triton -- curl -fsS localhost:8000/v2/models/$MODEL_NAME/versions/$VERSION/ready -o /dev/null -w '%{http_code}\\n'

# Roll back (to the previous Helm revision, i.e. the previous model.version):
helm history $RELEASE $NS
helm rollback $RELEASE $NS --wait
# or, at the Deployment level only (the next helm upgrade re-applies Helm's values):
kubectl $NS rollout undo deployment/$TRITON_DEPLOYMENT
STEPS
