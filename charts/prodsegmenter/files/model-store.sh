#!/bin/sh
# The model store, seen from a pod. POSIX sh: runs in the azure-cli image (or any image with sh and
# cp for the pvc source).
#
#   model-store.sh sync          copy model $MODEL_NAME version $MODEL_VERSION into $MODEL_DIR
#   model-store.sh upload-plans  upload $PLAN_DIR/*.plan next to that version's model.onnx
#
# sync copies the model folder's own files (config.pbtxt, configs/, labels.txt, model.py,
# aliases.json) and the ONE version folder the release asks for, so a pod can only ever serve the
# version its Deployment names. Sources: MODEL_SOURCE=blob (Azure Blob Storage, signed in with the
# pod's workload identity: no keys) or MODEL_SOURCE=pvc (a mounted volume at $STORE_DIR).
set -eu

fail() { echo "model-store: $*" >&2; exit 1; }

: "${MODEL_NAME:?}" "${MODEL_VERSION:?}" "${MODEL_DIR:?}"
case "$MODEL_VERSION" in '' | *[!0-9]*) fail "MODEL_VERSION must be an integer, got '$MODEL_VERSION'" ;; esac

blob_login() {
  # The AKS workload identity webhook puts these into every container of a pod labelled
  # azure.workload.identity/use=true whose service account names a client ID.
  : "${AZURE_CLIENT_ID:?workload identity not injected: is the pod labelled azure.workload.identity/use=true?}"
  : "${AZURE_TENANT_ID:?}" "${AZURE_FEDERATED_TOKEN_FILE:?}"
  az login --service-principal --username "$AZURE_CLIENT_ID" --tenant "$AZURE_TENANT_ID" \
    --federated-token "$(cat "$AZURE_FEDERATED_TOKEN_FILE")" --allow-no-subscriptions --output none
  # https://<account>.blob.core.windows.net -> <account>
  ACCOUNT="$(echo "$BLOB_ACCOUNT_URL" | sed -e 's#^https://##' -e 's#\..*##')"
  BLOB_MODEL_PATH="${BLOB_PREFIX:+$BLOB_PREFIX/}$MODEL_NAME"
}

sync_blob() {
  blob_login
  staging="$MODEL_DIR/.download"
  rm -rf "$staging"
  # The model folder's own files: every blob whose name after <model>/ does not start with a digit.
  az storage blob download-batch --auth-mode login --account-name "$ACCOUNT" --source "$BLOB_CONTAINER" \
    --destination "$staging" --pattern "$BLOB_MODEL_PATH/[!0-9]*" --no-progress --output none
  az storage blob download-batch --auth-mode login --account-name "$ACCOUNT" --source "$BLOB_CONTAINER" \
    --destination "$staging" --pattern "$BLOB_MODEL_PATH/$MODEL_VERSION/*" --no-progress --output none
  [ -d "$staging/$BLOB_MODEL_PATH/$MODEL_VERSION" ] ||
    fail "version $MODEL_VERSION not found at $BLOB_ACCOUNT_URL/$BLOB_CONTAINER/$BLOB_MODEL_PATH/ (published?)"
  rm -rf "${MODEL_DIR:?}/$MODEL_NAME"
  mv "$staging/$BLOB_MODEL_PATH" "$MODEL_DIR/$MODEL_NAME"
  rm -rf "$staging"
}

sync_pvc() {
  : "${STORE_DIR:?}"
  src="$STORE_DIR/$MODEL_NAME"
  [ -d "$src/$MODEL_VERSION" ] || fail "version $MODEL_VERSION not found in $src (published?)"
  rm -rf "${MODEL_DIR:?}/$MODEL_NAME"
  mkdir -p "$MODEL_DIR/$MODEL_NAME"
  for entry in "$src"/*; do
    case "$(basename "$entry")" in
      [0-9]*) ;;  # other versions stay behind
      __pycache__) ;;
      *) cp -RL "$entry" "$MODEL_DIR/$MODEL_NAME/" ;;  # -L: version folders link ../model.py
    esac
  done
  cp -RL "$src/$MODEL_VERSION" "$MODEL_DIR/$MODEL_NAME/"
}

upload_plans() {
  : "${PLAN_DIR:?}"
  set -- "$PLAN_DIR"/*.plan
  if [ ! -e "$1" ]; then
    echo "model-store: no new plan to upload (it was already in the store)"
    return
  fi
  blob_login
  for plan in "$@"; do
    # --overwrite false: two pools of the same GPU type must not replace each other's plan mid-load.
    az storage blob upload --auth-mode login --account-name "$ACCOUNT" --container-name "$BLOB_CONTAINER" \
      --name "$BLOB_MODEL_PATH/$MODEL_VERSION/$(basename "$plan")" --file "$plan" --overwrite false \
      --no-progress --output none
    echo "model-store: uploaded $(basename "$plan") for $MODEL_NAME version $MODEL_VERSION"
  done
}

case "${1:-}" in
  sync)
    case "${MODEL_SOURCE:-}" in
      blob) sync_blob ;;
      pvc) sync_pvc ;;
      *) fail "MODEL_SOURCE must be blob or pvc, got '${MODEL_SOURCE:-}'" ;;
    esac
    echo "model-store: $MODEL_NAME version $MODEL_VERSION synced from $MODEL_SOURCE:"
    ls -R "$MODEL_DIR/$MODEL_NAME"
    ;;
  upload-plans) upload_plans ;;
  *) fail "usage: model-store.sh sync|upload-plans" ;;
esac
