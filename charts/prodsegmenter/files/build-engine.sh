#!/bin/sh
# Build the TensorRT plan of one model version for THIS node's GPU (runs in the Triton image, on a
# node of the pool the engine-build Job targets). Writes $PLAN_DIR/model.sm<CC>.plan (the name
# clients/config_text.py's plan_filename gives and `prodseg build-engine` writes too), which the
# Job's next container uploads next to model.onnx; nothing when the store already has that plan.
set -eu

version_dir="$MODEL_DIR/$MODEL_NAME/$MODEL_VERSION"
capability="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -n 1 | tr -d ' .')"
case "$capability" in '' | *[!0-9]*) echo "build-engine: no GPU compute capability from nvidia-smi" >&2; exit 1 ;; esac
plan="model.sm$capability.plan"

if [ -f "$version_dir/$plan" ]; then
  echo "build-engine: $MODEL_NAME version $MODEL_VERSION already has $plan"
  exit 0
fi

# Shapes (batch 1 .. max_batch_size) and precision come from the config Triton will serve
# (configs/$CONFIG_NAME.pbtxt; config.pbtxt when CONFIG_NAME is empty), read by clients/config_text.py.
config="$MODEL_DIR/$MODEL_NAME/config.pbtxt"
[ -z "${CONFIG_NAME:-}" ] || config="$MODEL_DIR/$MODEL_NAME/configs/$CONFIG_NAME.pbtxt"
flags="$(python3 "$(dirname "$0")/prepare_model.py" trtexec-flags --config "$config")"
echo "build-engine: building $plan with $TRTEXEC $flags"
# shellcheck disable=SC2086  # $flags is a list of flags
"$TRTEXEC" --onnx="$version_dir/model.onnx" --saveEngine="$PLAN_DIR/$plan" $flags
