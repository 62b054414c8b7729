#!/bin/sh
# The model store, seen from a pod. POSIX sh: runs in the azure-cli image (or any image with sh and
# cp for the pvc source).
#
#   model-store.sh sync          copy each model of $MODELS ("name=version name=v1,v2 ...") into $MODEL_DIR
#   model-store.sh upload-plans  upload $PLAN_DIR/*.plan next to $MODEL_NAME version $MODEL_VERSION's model.onnx
#
# sync copies each model folder's own files (config.pbtxt, configs/, labels.txt, model.py; aliases
# live in the MLflow Model Registry, not in the store) and the version folders the release names
# for it (one, or both sides of an A/B test: name=1,2), so a pod can only ever serve the versions its Deployment names. Sources: MODEL_SOURCE=blob (Azure Blob Storage, signed in with
# the pod's workload identity: no keys) or MODEL_SOURCE=pvc (a mounted volume at $STORE_DIR).
set -eu

fail() { echo "model-store: $*" >&2; exit 1; }

: "${MODEL_DIR:?}"

check_model() {  # name versions (one integer, or several separated by commas)
  case "$1" in '' | *[!a-z0-9_-]*) fail "model name must be lowercase letters, digits, _ or -, got '$1'" ;; esac
  case "$2" in '' | ,* | *, | *,,* | *[!0-9,]*) fail "$1: versions must be integers separated by commas, got '$2'" ;; esac
}

blob_login() {
  # The AKS workload identity webhook puts these into every container of a pod labelled
  # azure.workload.identity/use=true whose service account names a client ID.
  : "${AZURE_CLIENT_ID:?workload identity not injected: is the pod labelled azure.workload.identity/use=true?}"
  : "${AZURE_TENANT_ID:?}" "${AZURE_FEDERATED_TOKEN_FILE:?}"
  az login --service-principal --username "$AZURE_CLIENT_ID" --tenant "$AZURE_TENANT_ID" \
    --federated-token "$(cat "$AZURE_FEDERATED_TOKEN_FILE")" --allow-no-subscriptions --output none
  # https://<account>.blob.core.windows.net -> <account>
  ACCOUNT="$(echo "$BLOB_ACCOUNT_URL" | sed -e 's#^https://##' -e 's#\..*##')"
}

blob_model_path() { echo "${BLOB_PREFIX:+$BLOB_PREFIX/}$1"; }

sync_blob() {  # name versions (after blob_login)
  path="$(blob_model_path "$1")"
  staging="$MODEL_DIR/.download"
  rm -rf "$staging"
  # The model folder's own files: every blob whose name after <model>/ does not start with a digit.
  az storage blob download-batch --auth-mode login --account-name "$ACCOUNT" --source "$BLOB_CONTAINER" \
    --destination "$staging" --pattern "$path/[!0-9]*" --no-progress --output none
  for version in $(echo "$2" | tr ',' ' '); do
    az storage blob download-batch --auth-mode login --account-name "$ACCOUNT" --source "$BLOB_CONTAINER" \
      --destination "$staging" --pattern "$path/$version/*" --no-progress --output none
    [ -d "$staging/$path/$version" ] ||
      fail "$1 version $version not found at $BLOB_ACCOUNT_URL/$BLOB_CONTAINER/$path/ (published?)"
  done
  rm -rf "${MODEL_DIR:?}/$1"
  mv "$staging/$path" "$MODEL_DIR/$1"
  rm -rf "$staging"
}

sync_pvc() {  # name versions
  : "${STORE_DIR:?}"
  src="$STORE_DIR/$1"
  for version in $(echo "$2" | tr ',' ' '); do
    [ -d "$src/$version" ] || fail "$1 version $version not found in $src (published?)"
  done
  rm -rf "${MODEL_DIR:?}/$1"
  mkdir -p "$MODEL_DIR/$1"
  for entry in "$src"/*; do
    case "$(basename "$entry")" in
      [0-9]*) ;;  # other versions stay behind
      __pycache__) ;;
      *) cp -RL "$entry" "$MODEL_DIR/$1/" ;;  # -L: model.py links to the shared runner
    esac
  done
  for version in $(echo "$2" | tr ',' ' '); do cp -RL "$src/$version" "$MODEL_DIR/$1/"; done
}

sync_all() {
  : "${MODELS:?MODELS lists the models to sync, e.g. MODELS='shelf_segmenter=1 crack_segmenter=2'}"
  # Check every entry before fetching anything: a typo fails in a second, not after a download.
  for entry in $MODELS; do check_model "${entry%%=*}" "${entry#*=}"; done
  case "${MODEL_SOURCE:-}" in
    blob) blob_login ;;
    pvc) ;;
    *) fail "MODEL_SOURCE must be blob or pvc, got '${MODEL_SOURCE:-}'" ;;
  esac
  for entry in $MODELS; do
    name="${entry%%=*}"
    version="${entry#*=}"
    "sync_$MODEL_SOURCE" "$name" "$version"
    echo "model-store: $name version(s) $version synced from $MODEL_SOURCE:"
    ls -R "$MODEL_DIR/$name"
  done
}

upload_plans() {
  : "${PLAN_DIR:?}" "${MODEL_NAME:?}" "${MODEL_VERSION:?}"
  check_model "$MODEL_NAME" "$MODEL_VERSION"
  case "$MODEL_VERSION" in *,*) fail "upload-plans takes one version, got '$MODEL_VERSION'" ;; esac
  set -- "$PLAN_DIR"/*.plan
  if [ ! -e "$1" ]; then
    echo "model-store: no new plan to upload (it was already in the store)"
    return
  fi
  blob_login
  for plan in "$@"; do
    # --overwrite false: two pools of the same GPU type must not replace each other's plan mid-load.
    az storage blob upload --auth-mode login --account-name "$ACCOUNT" --container-name "$BLOB_CONTAINER" \
      --name "$(blob_model_path "$MODEL_NAME")/$MODEL_VERSION/$(basename "$plan")" --file "$plan" --overwrite false \
      --no-progress --output none
    echo "model-store: uploaded $(basename "$plan") for $MODEL_NAME version $MODEL_VERSION"
  done
}

case "${1:-}" in
  sync) sync_all ;;
  upload-plans) upload_plans ;;
  *) fail "usage: model-store.sh sync|upload-plans" ;;
esac
