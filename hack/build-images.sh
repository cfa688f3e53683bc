#!/usr/bin/env bash
# Builds the operator and agent container images with buildah and writes them to OCI archives:
#   .images/storage-operator-<version>.oci.tar and .images/storage-agent-<version>.oci.tar
#
# No registry is reachable here, so by default the base image is a Debian bookworm minbase root
# filesystem made by debootstrap (cached under $SDO_CACHE_DIR, keyed by suite and packages) and
# imported with a FROM scratch build. With a registry, pass a normal base image instead:
#   BASE=docker.io/library/python:3.11-slim-bookworm hack/build-images.sh
# buildah keeps its own storage under $SDO_CACHE_DIR (vfs driver, chroot isolation), so the
# build needs no daemon, no overlay support and leaves the system's container storage alone.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE_ROOT=${SDO_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/storage-driver-operator}
SUITE=bookworm
BASE_PACKAGES=python3,ca-certificates
PIP_VERSION=24.3.1  # runs from its wheel during the build; never installed into an image
PYTHON=${PYTHON:-.venv/bin/python}
OUT=.images
VERSION=$("$PYTHON" -c 'import tomllib; print(tomllib.load(open("pyproject.toml","rb"))["project"]["version"])')
BASE_KEY=$(printf '%s %s minbase v1' "$SUITE" "$BASE_PACKAGES" | sha256sum | cut -c1-12)
ROOTFS_DIR="$CACHE_ROOT/image-base/debian-$SUITE-minbase-$BASE_KEY"
BASE_IMAGE=${BASE:-localhost/storage-driver-operator-base:$SUITE-$BASE_KEY}
BUILDAH=(buildah --root "$CACHE_ROOT/containers/storage" --runroot "$CACHE_ROOT/containers/run" --storage-driver vfs)

log() { printf '[images] %s\n' "$*"; }
fail() { log "FAILED at step '$1'. $2 Retry with: make images"; exit 1; }
step_started=0
start() { step_started=$(date +%s); log "$1"; }
done_in() { log "  done in $(($(date +%s) - step_started)) s"; }

[[ $(id -u) -eq 0 ]] || fail "check" "buildah with chroot isolation and debootstrap need root here."
command -v buildah >/dev/null || fail "check" "buildah is missing: run 'make deps'."

make_rootfs() {
  [[ -f $ROOTFS_DIR/rootfs.tar ]] && return 0
  command -v debootstrap >/dev/null || fail "rootfs" "debootstrap is missing: run 'make deps'."
  start "making the base root filesystem: debootstrap --variant=minbase --include=$BASE_PACKAGES $SUITE (about 40 s, once)"
  local tmp
  tmp=$(mktemp -d "$CACHE_ROOT/image-base/tmp.XXXXXX")
  # shellcheck disable=SC2064
  trap "rm -rf '$tmp'" EXIT
  debootstrap --variant=minbase --include="$BASE_PACKAGES" "$SUITE" "$tmp/rootfs" http://deb.debian.org/debian \
    >"$tmp/debootstrap.log" 2>&1 || fail "rootfs" "debootstrap failed: $(tail -n 3 "$tmp/debootstrap.log")"
  # No package lists, download caches or manuals in an image.
  rm -rf "$tmp"/rootfs/var/lib/apt/lists/* "$tmp"/rootfs/var/cache/apt/* "$tmp"/rootfs/var/cache/debconf/*-old \
    "$tmp"/rootfs/usr/share/man "$tmp"/rootfs/usr/share/info "$tmp"/rootfs/var/log/* "$tmp"/rootfs/root/.cache
  tar -C "$tmp/rootfs" --numeric-owner --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' \
    -cf "$tmp/rootfs.tar" . || fail "rootfs" "tar of the root filesystem failed."
  mkdir -p "$ROOTFS_DIR"
  mv "$tmp/rootfs.tar" "$ROOTFS_DIR/rootfs.tar"
  rm -rf "$tmp"
  trap - EXIT
  done_in
}

import_base() {
  "${BUILDAH[@]}" inspect --type image "$BASE_IMAGE" >/dev/null 2>&1 && return 0
  start "importing the root filesystem as $BASE_IMAGE (FROM scratch)"
  cp images/Containerfile.base "$ROOTFS_DIR/Containerfile"
  "${BUILDAH[@]}" bud --quiet --isolation chroot -f "$ROOTFS_DIR/Containerfile" -t "$BASE_IMAGE" "$ROOTFS_DIR" \
    >/dev/null || fail "base" "buildah could not import the root filesystem."
  done_in
}

wheelhouse() {
  start "building the wheelhouse (.images/wheels): the project, its dependencies, pip $PIP_VERSION"
  rm -rf "$OUT/wheels"
  mkdir -p "$OUT/wheels"
  # Reproducible wheel timestamps, so that an unchanged project reuses the cached image layers.
  SOURCE_DATE_EPOCH=$(git log -1 --format=%ct 2>/dev/null || echo 315532800) \
    "$PYTHON" -m pip wheel -q --no-cache-dir --wheel-dir "$OUT/wheels" '.[operator,agent]' >"$OUT/pip-wheel.log" 2>&1 \
    || fail "wheels" "pip wheel failed: $(tail -n 3 "$OUT/pip-wheel.log")"
  rm -rf build  # setuptools' in-tree build directory; nothing of ours lives there
  "$PYTHON" -m pip download -q --no-deps --only-binary=:all: -d "$OUT/wheels" "pip==$PIP_VERSION" >>"$OUT/pip-wheel.log" 2>&1 \
    || fail "wheels" "could not download pip $PIP_VERSION: $(tail -n 3 "$OUT/pip-wheel.log")"
  local built
  built=$(ls "$OUT"/wheels/*.whl | grep -vc -- '-none-any.whl' || true)
  ls "$OUT"/wheels/*.tar.gz >/dev/null 2>&1 && fail "wheels" "a dependency came as a source archive; images install wheels only."
  log "  $(ls "$OUT"/wheels/*.whl | wc -l) wheels ($built platform-specific)"
  done_in
}

build() {
  local target=$1 name=$2
  start "building $name:$VERSION (target $target, base $BASE_IMAGE)"
  "${BUILDAH[@]}" bud --quiet --isolation chroot --pull=missing \
    --build-arg BASE="$BASE_IMAGE" --target "$target" -f images/Containerfile \
    -t "localhost/storage-driver-operator/$name:$VERSION" . >"$OUT/build-$name.log" 2>&1 \
    || fail "build $name" "buildah bud failed (log: $OUT/build-$name.log): $(tail -n 5 "$OUT/build-$name.log")"
  rm -f "$OUT/$name-$VERSION.oci.tar"
  "${BUILDAH[@]}" push --quiet "localhost/storage-driver-operator/$name:$VERSION" \
    "oci-archive:$OUT/$name-$VERSION.oci.tar:localhost/storage-driver-operator/$name:$VERSION" >/dev/null \
    || fail "push $name" "buildah push to an OCI archive failed."
  log "  wrote $OUT/$name-$VERSION.oci.tar ($(du -m "$OUT/$name-$VERSION.oci.tar" | cut -f1) MB)"
  done_in
}

# The images of this tree are built already: the content of every file that goes into them is
# the same as when they were (FORCE=1 builds anyway).
tree_key() {
  { git ls-files -z --cached --others --exclude-standard -- pyproject.toml README.md operator node-agent images | sort -z | xargs -0 sha256sum
    printf '%s %s\n' "$BASE_IMAGE" "$PIP_VERSION"; } | sha256sum | cut -c1-16
}
KEY=$(tree_key)
if [[ ${FORCE:-0} != 1 && -f $OUT/tree-key && $(cat "$OUT/tree-key") == "$KEY" ]] \
  && [[ -f $OUT/storage-operator-$VERSION.oci.tar && -f $OUT/storage-agent-$VERSION.oci.tar ]]; then
  log "images of this tree are built already (key $KEY): $(ls "$OUT"/*.oci.tar | tr '\n' ' ')"
  exit 0
fi
rm -f "$OUT/tree-key"

total_start=$(date +%s)
mkdir -p "$OUT" "$CACHE_ROOT/image-base"
# Working containers an interrupted build left behind (this storage is the project's alone).
"${BUILDAH[@]}" rm --all >/dev/null 2>&1 || true
if [[ -z ${BASE:-} ]]; then
  make_rootfs
  import_base
fi
wheelhouse
build operator storage-operator
build agent storage-agent
# No layer cache is kept: with the vfs driver every cached layer is a full copy of the root
# filesystem, and the wheelhouse changes with every commit anyway. Drop the previous images.
"${BUILDAH[@]}" rmi --prune >/dev/null 2>&1 || true
log "images built in $(($(date +%s) - total_start)) s: $(ls "$OUT"/*.oci.tar | tr '\n' ' ')"
printf '%s\n' "$KEY" >"$OUT/tree-key"
