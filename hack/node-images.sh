#!/usr/bin/env bash
# Puts images into the local node's containerd (the one `make cluster-up` runs), as a registry
# mirror would: no registry is reachable here, so nothing can be pulled.
#   hack/node-images.sh pause    the pod sandbox image (built from images/pause, cached)
#   hack/node-images.sh import   the pause image and the project's images from `make images`
# Importing an image that containerd already has with the same digest does nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE_ROOT=${SDO_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/storage-driver-operator}
CLUSTER_DIR=${SDO_CLUSTER_DIR:-.local-cluster}
SOCKET="$CLUSTER_DIR/containerd/containerd.sock"
PAUSE_IMAGE=localhost/storage-driver-operator/pause:3.5
PYTHON=${PYTHON:-.venv/bin/python}
BUILDAH=(buildah --root "$CACHE_ROOT/containers/storage" --runroot "$CACHE_ROOT/containers/run" --storage-driver vfs)
CTR=(ctr --address "$SOCKET" --namespace k8s.io)

log() { printf '[node-images] %s\n' "$*" >&2; }
fail() { log "FAILED: $*"; exit 1; }

[[ -S $SOCKET ]] || fail "no containerd socket at $SOCKET: run 'make cluster-up' first."

# The archive's digest against the one containerd has under that name: skip what is there.
import_archive() {
  local archive=$1 name=$2 have want
  want=$(tar -xOf "$archive" index.json | "$PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["manifests"][0]["digest"])')
  have=$("${CTR[@]}" images list "name==$name" 2>/dev/null | awk 'NR==2 {print $3}')
  if [[ $have == "$want" ]]; then
    log "$name is in containerd ($want)"
    return 0
  fi
  local started
  started=$(date +%s%N)
  # The native snapshotter, as the kubelet's containerd uses (it works on any filesystem).
  "${CTR[@]}" images import --snapshotter native "$archive" >/dev/null \
    || fail "ctr images import $archive"
  "${CTR[@]}" images list "name==$name" | grep -q "$want" \
    || fail "$archive was imported but containerd has no image $name with $want"
  log "imported $name ($(( ($(date +%s%N) - started) / 1000000 )) ms)"
}

pause_archive() {
  local key dir
  key=$(cat images/pause/pause.c images/pause/Containerfile | sha256sum | cut -c1-12)
  dir="$CACHE_ROOT/pause-$key"
  if [[ ! -f $dir/pause.oci.tar ]]; then
    command -v gcc >/dev/null || fail "gcc is missing: run 'make deps'."
    log "building the pause image (static C, FROM scratch) into $dir"
    rm -rf "$dir.tmp" && mkdir -p "$dir.tmp"
    gcc -static -Os -s -o "$dir.tmp/pause" images/pause/pause.c || fail "gcc -static images/pause/pause.c (is libc6-dev installed? 'make deps')"
    cp images/pause/Containerfile "$dir.tmp/Containerfile"
    "${BUILDAH[@]}" bud --quiet --isolation chroot -f "$dir.tmp/Containerfile" -t "$PAUSE_IMAGE" "$dir.tmp" >/dev/null \
      || fail "buildah bud of the pause image"
    "${BUILDAH[@]}" push --quiet "$PAUSE_IMAGE" "oci-archive:$dir.tmp/pause.oci.tar:$PAUSE_IMAGE" >/dev/null \
      || fail "buildah push of the pause image"
    rm -rf "$dir" && mv "$dir.tmp" "$dir"
  fi
  printf '%s\n' "$dir/pause.oci.tar"
}

case ${1:-} in
  pause)
    import_archive "$(pause_archive)" "$PAUSE_IMAGE"
    ;;
  import)
    import_archive "$(pause_archive)" "$PAUSE_IMAGE"
    VERSION=$("$PYTHON" -c 'import tomllib; print(tomllib.load(open("pyproject.toml","rb"))["project"]["version"])')
    for name in storage-operator storage-agent; do
      archive=.images/$name-$VERSION.oci.tar
      [[ -f $archive ]] || fail "$archive is missing: run 'make images' first."
      import_archive "$archive" "localhost/storage-driver-operator/$name:$VERSION"
    done
    ;;
  *)
    echo "usage: $0 pause|import" >&2
    exit 2
    ;;
esac
