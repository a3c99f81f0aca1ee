# Shared settings for hack/* scripts. Sourced, not run.
# The pinned versions live here and nowhere else (docs/local-cluster.md quotes them).
K8S_VERSION=v1.36.3
K8S_VERSION_MAJOR=1
K8S_VERSION_MINOR=36
ETCD_VERSION=v3.6.8
# The CNI reference plugins (bridge, host-local, loopback, portmap) of the pod network.
CNI_VERSION=v1.10.0
# metrics-server (kubectl top, the HorizontalPodAutoscaler's resource metrics).
METRICS_SERVER_VERSION=v0.8.0
# CoreDNS (the local cluster's DNS, `kube-dns`), built with the plugins of hack/go/coredns.
COREDNS_VERSION=v1.15.0
# The peer node of `hack/bench peers` only (never the tests): the upstream kubelet of
# K8S_VERSION with containerd and runc, built from the Go module proxy.
CONTAINERD_VERSION=v2.2.9
RUNC_VERSION=v1.5.3

KRUSTLET_CACHE="${KRUSTLET_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/krustlet}"
K8S_BIN="$KRUSTLET_CACHE/bin/$K8S_VERSION"
CNI_BIN="$KRUSTLET_CACHE/bin/cni-$CNI_VERSION"
METRICS_SERVER_BIN="$KRUSTLET_CACHE/bin/metrics-server-$METRICS_SERVER_VERSION/metrics-server"
COREDNS_BIN="$KRUSTLET_CACHE/bin/coredns-$COREDNS_VERSION/coredns"
PEERS_BIN="$KRUSTLET_CACHE/bin/peers-containerd-$CONTAINERD_VERSION-runc-$RUNC_VERSION"
# The peer node's wasm shim, built from hack/peer-shim.
PEER_SHIM="$KRUSTLET_CACHE/bin/peer-shim/containerd-shim-peerwasm-v1"

# The version stamp of the upstream Kubernetes binaries built here, as upstream's release
# builds set it.
k8s_ldflags() {
  local pkg ldflags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=${K8S_VERSION_MAJOR}"
    ldflags+=" -X $pkg.gitMinor=${K8S_VERSION_MINOR} -X $pkg.gitTreeState=clean"
    ldflags+=" -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  echo "$ldflags"
}

# stop_pid PID [SECONDS]: SIGTERM, then SIGKILL if it still runs after SECONDS (5).
stop_pid() {
  local pid=$1 tenths=$((${2:-5} * 10))
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq "$tenths"); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
}

# unmount_under DIR: detach every mount at or below DIR, deepest first. A node that is
# stopped leaves its pods' memory volumes (tmpfs) mounted, as the kubelet does, so that a
# restarted node finds them; `down` is the end of them.
unmount_under() {
  local dir mnt
  dir=$(realpath -m "$1")
  # /proc/self/mounts escapes blanks as \040; our paths have none, so a path with one is
  # left alone rather than guessed at.
  awk -v d="$dir" '$2 == d || index($2, d "/") == 1 {print $2}' /proc/self/mounts | sort -r |
    while read -r mnt; do
      umount -l "$mnt" || warn "could not unmount $mnt"
    done
}

# write_private FILE: stdin into FILE, mode 0600 whatever the caller's umask (mktemp
# makes its file so), then renamed into place: no reader sees half of it, and an older
# file that others could read is replaced, not rewritten with its mode kept.
write_private() {
  local file=$1 tmp
  tmp=$(mktemp "$file.XXXXXX")
  if cat >"$tmp" && mv -f "$tmp" "$file"; then
    return 0
  fi
  rm -f "$tmp"
  return 1
}

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
warn() { log "warning: $*"; }

# Where the local cluster keeps its state (certificates, etcd data, logs, pid files).
RUN_DIR="${KRUSTLET_RUN_DIR:-$KRUSTLET_CACHE/cluster}"
ETCD_PORT="${ETCD_PORT:-23790}"
APISERVER_PORT="${APISERVER_PORT:-16443}"
REGISTRY_PORT="${REGISTRY_PORT:-15000}"
KCM_PORT="${KCM_PORT:-16257}"
SCHEDULER_PORT="${SCHEDULER_PORT:-16259}"
KUBE_PROXY_METRICS_PORT="${KUBE_PROXY_METRICS_PORT:-16249}"
KUBE_PROXY_HEALTHZ_PORT="${KUBE_PROXY_HEALTHZ_PORT:-16256}"
METRICS_SERVER_PORT="${METRICS_SERVER_PORT:-16263}"
# CoreDNS's health and readiness, on the loopback of its own namespace (kr-dns).
COREDNS_HEALTH_PORT="${COREDNS_HEALTH_PORT:-16281}"
COREDNS_READY_PORT="${COREDNS_READY_PORT:-16282}"
REGISTRY="127.0.0.1:$REGISTRY_PORT"
