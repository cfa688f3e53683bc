#!/usr/bin/env bash
# Builds the control plane (kube-apiserver, kube-controller-manager, kube-scheduler), the node
# (kubelet, kube-proxy) and kubectl 1.20.2 from Debian's source package and caches them outside
# the checkout, keyed by version. Reruns reuse the cache and build only what is missing.
set -euo pipefail

KUBE_VERSION=${KUBE_VERSION:-1.20.2}
# Bumped whenever the build itself changes (a patch below), so that cached binaries are rebuilt.
BUILD_REVISION=2
CACHE_ROOT=${SDO_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/storage-driver-operator}
BIN_DIR="$CACHE_ROOT/kubernetes-$KUBE_VERSION-r$BUILD_REVISION/bin"
WORK_DIR="$CACHE_ROOT/kubernetes-$KUBE_VERSION/src"
TARGETS=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)
GO_BIN=/usr/lib/go-1.19/bin
REFLECT2=/usr/share/gocode/src/github.com/modern-go/reflect2

log() { printf '[build-kubernetes] %s\n' "$*"; }
fail() { log "FAILED at step '$1'. $2"; log "retry with: make kube-binaries (the step restarts; cached downloads are kept)"; exit 1; }

have_all=1
for t in "${TARGETS[@]}"; do [[ -x $BIN_DIR/$t ]] || have_all=0; done
if ((have_all)); then
  log "cached binaries for $KUBE_VERSION in $BIN_DIR"
  exit 0
fi

[[ -x $GO_BIN/go ]] || fail "check toolchain" "Go 1.19 is missing; run 'make deps' first."
[[ -d $REFLECT2 ]] || fail "check toolchain" "Debian's reflect2 sources are missing; run 'make deps' first."
mkdir -p "$WORK_DIR" "$BIN_DIR"
cd "$WORK_DIR"

# Debian versions it as 1.20.5+really1.20.2 (a version bump that restored 1.20.2).
find_src() { find . -maxdepth 1 -type d -name "kubernetes-*" | head -n1; }
src_dir=$(find_src)
if [[ -z $src_dir ]]; then
  log "step 1/4: downloading Debian source package kubernetes ($KUBE_VERSION) with apt-get source"
  apt-get source --download-only kubernetes >download.log 2>&1 \
    || fail "download source" "See $WORK_DIR/download.log; the deb-src entry for bookworm must exist ('make deps')."
  log "step 2/4: unpacking"
  dsc=$(ls kubernetes_*.dsc | head -n1)
  dpkg-source --no-check -x "$dsc" >unpack.log 2>&1 || fail "unpack source" "See $WORK_DIR/unpack.log."
  src_dir=$(find_src)
  grep -q "really$KUBE_VERSION\|^Version: $KUBE_VERSION" "$dsc" \
    || fail "check version" "$dsc is not Kubernetes $KUBE_VERSION; bookworm's deb-src must be the source."
else
  log "steps 1-2/4: source already unpacked in $WORK_DIR/$src_dir"
fi
cd "$src_dir"

log "step 3/4: replacing vendored reflect2 1.0.1 with Debian's 1.0.2 (1.0.1 crashes under Go 1.18+)"
rm -rf vendor/github.com/modern-go/reflect2
mkdir -p vendor/github.com/modern-go/reflect2
rsync -a --exclude go.mod --exclude go.sum "$REFLECT2/" vendor/github.com/modern-go/reflect2/

# Go 1.18+ hands reflect.Zero and a zero value converted to an interface the same pointer, so
# the vendored OpenAPI validators' "zero value means null" test (reflect.DeepEqual on two
# reflect.Values) turns every empty string in a custom resource into null and rejects it
# ("must be of type string: null"). Only nil is null, as in later releases of the validators.
log "step 3/4: patching the OpenAPI type validators for Go 1.18+ (empty strings are not null)"
for f in vendor/k8s.io/kube-openapi/pkg/validation/validate/type.go vendor/github.com/go-openapi/validate/type.go; do
  sed -i 's/\tif data == nil || reflect.DeepEqual(reflect.Zero(reflect.TypeOf(data)), reflect.ValueOf(data)) {/\tif data == nil {/' "$f"
  grep -q $'^\tif data == nil {$' "$f" || fail "patch validators" "$f does not have the expected code; the patch no longer applies."
done

missing=()
for t in "${TARGETS[@]}"; do [[ -x $BIN_DIR/$t ]] || missing+=("$t"); done
# One make for all of them: the packages they share compile once (about 15 minutes on 2 cores).
log "step 4/4: building ${missing[*]} (log: $WORK_DIR/build.log)"
PATH=$GO_BIN:$PATH make WHAT="${missing[*]/#/cmd/}" >"$WORK_DIR/build.log" 2>&1 \
  || fail "build ${missing[*]}" "See $WORK_DIR/build.log."
for t in "${missing[@]}"; do
  built=$(find _output -type f -name "$t" -perm -u+x | head -n1)
  [[ -n $built ]] || fail "build $t" "make finished but no $t binary was found under _output."
  install -m 0755 "$built" "$BIN_DIR/$t.tmp" && mv "$BIN_DIR/$t.tmp" "$BIN_DIR/$t"
done
log "built ${TARGETS[*]} into $BIN_DIR"
# The unpacked tree is 2.4 GB; the downloaded source package stays for a rebuild.
cd "$WORK_DIR" && rm -rf "$src_dir"
