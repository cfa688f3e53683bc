#!/usr/bin/env bash
# Installs the Debian packages the project needs to build and test, idempotently.
# Adds a deb-src entry for bookworm (the Kubernetes 1.20.2 source comes from there).
set -euo pipefail

PACKAGES=(
  golang-1.19-go rsync etcd-server golang-github-modern-go-reflect2-dev  # control plane build
  dpkg-dev openssl util-linux udev kmod procps iproute2 psmisc curl         # tools the harness and the docs call
  buildah debootstrap                                                       # container images
  containerd runc containernetworking-plugins iptables conntrack ebtables   # the local node (kubelet's runtime, pod network, kube-proxy)
  gcc libc6-dev                                                             # the static pause binary of the pod sandbox image
  lua5.1 lua5.4                                                             # docs/argocd-health.lua (Argo CD runs Lua 5.1)
)
SRC_LIST=/etc/apt/sources.list.d/storage-driver-operator-src.sources

log() { printf '[system-packages] %s\n' "$*"; }

if [[ $(id -u) -ne 0 ]]; then
  log "not root: cannot install system packages; run 'sudo make deps' or install: ${PACKAGES[*]}"
  exit 1
fi

need_update=0
if [[ ! -f $SRC_LIST ]]; then
  log "adding deb-src entry for bookworm ($SRC_LIST)"
  cat >"$SRC_LIST" <<'SRC'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  need_update=1
fi

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done

if ((${#missing[@]} == 0)) && ((need_update == 0)); then
  log "all system packages present"
  exit 0
fi

log "apt-get update"
apt-get update -qq || { log "FAILED: apt-get update (check network access to deb.debian.org, then rerun 'make deps')"; exit 1; }
if ((${#missing[@]})); then
  log "installing: ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || { log "FAILED: apt-get install ${missing[*]} (rerun 'make deps')"; exit 1; }
fi
# The etcd-server package starts a system etcd on :2379; the harness runs its own on other ports.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet etcd 2>/dev/null; then
  systemctl disable --now etcd >/dev/null 2>&1 || true
fi
log "done"
