#!/usr/bin/env bash
# Install NVIDIA perf_analyzer 2.51 (matches the embedded server) into .tools/perf_analyzer/.
# tritonclient 2.61+ wheels dropped the binary; the manylinux1 wheel of 2.51.0 carries it. It needs
# libb64 (Debian libb64-0d) and libcudart.so.12 (PyPI nvidia-cuda-runtime-cu12), then runs on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=.tools/perf_analyzer
PIP=.venv/bin/pip
if [ -x "$DEST/perf_analyzer" ] && "$DEST/perf_analyzer" --version >/dev/null 2>&1; then
  exit 0
fi
if ! dpkg -s libb64-0d >/dev/null 2>&1; then
  apt-get update -qq && apt-get install -y -qq libb64-0d >/dev/null
fi
rm -rf "$DEST.partial" && mkdir -p "$DEST.partial"
"$PIP" download --quiet --no-deps --only-binary=:all: --platform manylinux1_x86_64 \
  -d "$DEST.partial/wheel" tritonclient==2.51.0
unzip -q -o "$DEST.partial"/wheel/tritonclient-2.51.0-*.whl 'tritonclient-2.51.0.data/data/bin/perf_analyzer' \
  -d "$DEST.partial/wheel"
mkdir -p "$DEST.partial/bin"
mv "$DEST.partial/wheel/tritonclient-2.51.0.data/data/bin/perf_analyzer" "$DEST.partial/bin/"
"$PIP" install --quiet --no-deps --target "$DEST.partial/cuda" nvidia-cuda-runtime-cu12==12.9.79
rm -rf "$DEST.partial/wheel"
cat > "$DEST.partial/perf_analyzer" <<'WRAPPER'
#!/usr/bin/env bash
here="$(cd "$(dirname "$0")" && pwd)"
export LD_LIBRARY_PATH="$here/cuda/nvidia/cuda_runtime/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
exec "$here/bin/perf_analyzer" "$@"
WRAPPER
chmod +x "$DEST.partial/perf_analyzer" "$DEST.partial/bin/perf_analyzer"
rm -rf "$DEST" && mv "$DEST.partial" "$DEST"
"$DEST/perf_analyzer" --version
