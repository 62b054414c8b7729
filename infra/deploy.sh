#!/usr/bin/env bash
# Deploy ProdSegmenter to Azure: infrastructure first (Bicep), then the cluster add-ons, then the chart.
#
#   infra/deploy.sh ENV [--dry-run] [--image-tag TAG] [--models-file FILE] [--api-keys FILE] [--location LOCATION]
#
# ENV picks infra/aks/environments/ENV.parameters.json and infra/helm/values-ENV.yaml.
# --models-file: a values file with the `models` list to serve (default: the chart's and ENV's).
# --api-keys: the gateway's key store (`prodseg keys create` writes it; salted hashes only), put in
# the Secret the chart mounts; without it that Secret must already exist (the gateway needs keys).
# --dry-run prints every command instead of running it (deployment outputs show as <output:name>);
# `make deploy-plan ENV=dev` is the same. Needs: az (logged in), helm 3, kubectl, kubelogin.
#
# Steps:
#   1. az group create + az deployment group create: AKS (system, cpu, gpu pools), ACR, model store,
#      workload identities, Log Analytics (infra/aks/main.bicep).
#   2. az acr build: the gateway image (infra/images/gateway.Dockerfile) into the new registry.
#   3. az aks get-credentials (Entra ID; local accounts are disabled) + kubelogin.
#   4. helm upgrade --install the add-ons, versions pinned below: NVIDIA device plugin (GPU pool),
#      kube-prometheus-stack (Prometheus Operator, Grafana, kube-state-metrics).
#   5. The namespace and the API key Secret, then helm upgrade --install charts/prodsegmenter with
#      the Bicep outputs (client IDs, storage, ACR).
#   6. helm upgrade --install prometheus-adapter with the rules ConfigMap step 5 created: it serves
#      the Triton HPA's queue-time metric.
# The model store starts empty: publish a version first (infra/rollout.sh prints how).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=infra/defaults.sh
source "$ROOT/infra/defaults.sh"

# Add-on charts (pinned).
NVIDIA_DEVICE_PLUGIN_VERSION=0.17.0
KUBE_PROMETHEUS_STACK_VERSION=65.1.1
PROMETHEUS_ADAPTER_VERSION=4.11.0

usage() { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

ENV_NAME="${1:-}"
[[ -n "$ENV_NAME" && "$ENV_NAME" != -* ]] || usage
shift
DRY_RUN=0
IMAGE_TAG="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo latest)"
MODELS_FILE=""
API_KEYS=""
LOCATION="westeurope"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --image-tag) IMAGE_TAG="$2"; shift ;;
    --models-file) MODELS_FILE="$2"; shift ;;
    --api-keys) API_KEYS="$2"; shift ;;
    --location) LOCATION="$2"; shift ;;
    *) usage ;;
  esac
  shift
done

PARAMS="infra/aks/environments/$ENV_NAME.parameters.json"
VALUES="infra/helm/values-$ENV_NAME.yaml"
[[ -f "$ROOT/$PARAMS" ]] || { echo "deploy: no $PARAMS" >&2; exit 2; }
[[ -f "$ROOT/$VALUES" ]] || { echo "deploy: no $VALUES" >&2; exit 2; }
[[ -z "$MODELS_FILE" || -f "$MODELS_FILE" ]] || { echo "deploy: no models file $MODELS_FILE" >&2; exit 2; }
[[ -z "$API_KEYS" || -f "$API_KEYS" ]] || { echo "deploy: no key store $API_KEYS" >&2; exit 2; }
RG="$(resource_group "$ENV_NAME")"
DEPLOYMENT="$(deployment_name "$ENV_NAME")"

step() { printf '\n# %s\n' "$*"; }
run() {  # print the command (shell-quoted where needed); run it unless --dry-run
  local arg line=""
  for arg in "$@"; do
    if [[ "$arg" =~ ^[][A-Za-z0-9_@%+=:,./\<\>{}\\-]+$ ]]; then line+="$arg "; else line+="$(printf '%q' "$arg") "; fi
  done
  printf '%s\n' "${line% }"
  if [[ $DRY_RUN == 0 ]]; then (cd "$ROOT" && "$@"); fi
}
run_sh() {  # a pipeline, printed as one line; run with bash unless --dry-run
  printf '%s\n' "$1"
  if [[ $DRY_RUN == 0 ]]; then (cd "$ROOT" && bash -o pipefail -c "$1"); fi
}
output() {  # a Bicep output of this environment's deployment
  if [[ $DRY_RUN == 1 ]]; then echo "<output:$1>"; return; fi
  az deployment group show -g "$RG" -n "$DEPLOYMENT" --query "properties.outputs.$1.value" -o tsv
}

step "1. Infrastructure ($ENV_NAME): resource group $RG, Bicep deployment $DEPLOYMENT"
# Encryption at host (main.bicep sets it on every pool) needs this feature once per subscription.
run az feature register --namespace Microsoft.Compute --name EncryptionAtHost --output none
run az group create --name "$RG" --location "$LOCATION" --output none
run az deployment group create --resource-group "$RG" --name "$DEPLOYMENT" \
  --template-file infra/aks/main.bicep --parameters "@$PARAMS" --output none
CLUSTER="$(output clusterName)"
ACR="$(output acrLoginServer)"

step "2. Gateway image $ACR/prodseg-gateway:$IMAGE_TAG (built in ACR: no local Docker needed)"
run az acr build --registry "${ACR%%.*}" --image "prodseg-gateway:$IMAGE_TAG" \
  --file infra/images/gateway.Dockerfile .

step "3. Cluster credentials (Entra ID)"
run az aks get-credentials --resource-group "$RG" --name "$CLUSTER" --overwrite-existing
run kubelogin convert-kubeconfig -l azurecli

step "4. Add-ons: NVIDIA device plugin $NVIDIA_DEVICE_PLUGIN_VERSION, kube-prometheus-stack $KUBE_PROMETHEUS_STACK_VERSION"
run helm repo add nvdp https://nvidia.github.io/k8s-device-plugin --force-update
run helm repo add prometheus-community https://prometheus-community.github.io/helm-charts --force-update
run helm upgrade --install nvidia-device-plugin nvdp/nvidia-device-plugin \
  --version "$NVIDIA_DEVICE_PLUGIN_VERSION" --namespace kube-system \
  --set-string 'nodeSelector.prodseg\.io/pool=gpu' \
  --set 'tolerations[0].key=nvidia.com/gpu' --set 'tolerations[0].operator=Exists' \
  --set 'tolerations[0].effect=NoSchedule' --wait
run helm upgrade --install kube-prometheus-stack prometheus-community/kube-prometheus-stack \
  --version "$KUBE_PROMETHEUS_STACK_VERSION" --namespace "$MONITORING_NAMESPACE" --create-namespace --wait

step "5. ProdSegmenter (release $RELEASE in namespace $NAMESPACE)"
run_sh "kubectl create namespace $NAMESPACE --dry-run=client -o yaml | kubectl apply -f -"
if [[ -n "$API_KEYS" ]]; then
  # Created or replaced from the file; running gateways re-read it (no restart, no key in Helm values).
  run_sh "kubectl -n $NAMESPACE create secret generic $API_KEYS_SECRET --from-file=api-keys.json=$(printf '%q' "$API_KEYS") --dry-run=client -o yaml | kubectl apply -f -"
else
  echo "# No --api-keys: the gateway mounts Secret $API_KEYS_SECRET (or gateway.auth.existingSecret), which must exist."
  run kubectl -n "$NAMESPACE" get secret "$API_KEYS_SECRET" --output name || {
    echo "deploy: no Secret $API_KEYS_SECRET: create keys (prodseg keys create NAME --file keys.json), then rerun with --api-keys keys.json" >&2
    exit 1
  }
fi
CHART_ARGS=(
  --namespace "$NAMESPACE" --create-namespace
  --values "$VALUES"
  --set "azure.tenantId=$(output tenantId)"
  --set "azure.workloadIdentity.tritonClientId=$(output tritonIdentityClientId)"
  --set "azure.workloadIdentity.engineBuilderClientId=$(output engineBuilderIdentityClientId)"
  --set "modelStore.source.blob.accountUrl=$(output modelStoreBlobEndpoint)"
  --set "modelStore.source.blob.container=$(output modelStoreContainer)"
  --set "gateway.image.repository=$ACR/prodseg-gateway"
  --set "gateway.image.tag=$IMAGE_TAG"
  --set "networkPolicy.monitoringNamespace=$MONITORING_NAMESPACE"
  --set "monitoring.prometheusAdapter.namespace=$MONITORING_NAMESPACE"
)
[[ -z "$MODELS_FILE" ]] || CHART_ARGS+=(--values "$MODELS_FILE")
# --wait: Helm returns once every Triton pod reports every model ready; --atomic rolls back if not.
run helm upgrade --install "$RELEASE" charts/prodsegmenter "${CHART_ARGS[@]}" --wait --atomic --timeout 30m

step "6. prometheus-adapter $PROMETHEUS_ADAPTER_VERSION with ProdSegmenter's rules"
run helm upgrade --install prometheus-adapter prometheus-community/prometheus-adapter \
  --version "$PROMETHEUS_ADAPTER_VERSION" --namespace "$MONITORING_NAMESPACE" \
  --set "prometheus.url=http://kube-prometheus-stack-prometheus.$MONITORING_NAMESPACE.svc" \
  --set prometheus.port=9090 --set "rules.existing=$ADAPTER_CONFIGMAP" --wait

step "Done. Next: publish a model version and roll it out: make rollout MODEL=NAME VERSION=N ENV=$ENV_NAME"
