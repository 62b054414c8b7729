# Names shared by infra/deploy.sh and infra/rollout.sh (sourced, not run). They must agree with
# infra/aks/main.bicep's appNamespace/helmRelease parameters and the chart's defaults.
RELEASE="${PRODSEG_RELEASE:-prodsegmenter}"
NAMESPACE="${PRODSEG_NAMESPACE:-prodseg}"
MONITORING_NAMESPACE="${PRODSEG_MONITORING_NAMESPACE:-monitoring}"
ADAPTER_CONFIGMAP="prodseg-prometheus-adapter"   # monitoring.prometheusAdapter.configMapName
MODEL_PREFIX="model_repository"                  # modelStore.source.blob.prefix
API_KEYS_SECRET="$RELEASE-api-keys"              # the gateway's key store: <fullname>-api-keys
TRITON_DEPLOYMENT="$RELEASE-triton"              # <fullname>-triton; fullname = release (contains the chart name)

resource_group() { echo "rg-prodseg-$1"; }
deployment_name() { echo "prodseg-$1"; }
