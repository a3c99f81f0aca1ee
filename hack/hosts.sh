# Hosts: the nodes of `hack/cluster start-node` (and of the tests' fleets) as separate
# machines on one LAN. Sourced by hack/cluster, after its settings; not run.
#
# A host is a network namespace HOST_PREFIX<node> standing for a machine. Its eth0 sits
# on the underlay bridge UNDERLAY_BRIDGE (UNDERLAY_CIDR: the LAN between the machines,
# which the machine itself joins at UNDERLAY_GW). On each host, as on a real node:
#   - its own pod bridge, krustlet0, from the same CNI configuration list as any node
#     (write_cni_conf): bridge per node, host-local addresses from the node's podCIDR;
#   - its own kube-proxy (iptables), so that a pod's packet to a ClusterIP is translated
#     on the sending node, as kube-proxy on every node does;
#   - routes "host-gw" style: each other host's podCIDR via that host's LAN address, so
#     cross-node pod traffic leaves over eth0 and is routed by the destination node's
#     podCIDR; and the API server's and CoreDNS's namespaces (API_NETS) via the machine.
#     No default route: nothing a host or its pods send can go out of the machine's own
#     interface;
#   - the service guard (Service endpoints are pod addresses, the API server and
#     CoreDNS only) and the localnet guard, as on the machine (host_guards);
#   - the API server and the registry on its own 127.0.0.1, by socat relays through Unix
#     sockets to the machine's (nothing of the machine listens on the LAN): nodes keep
#     the same kubeconfig and registry address as anywhere.
# The machine routes each host's podCIDR via the host too (the API server's and
# CoreDNS's answers, and the tests' requests to pod addresses). `hack/cluster down`
# removes every host; `stop-node` one.

UNDERLAY_BRIDGE=kr-underlay
UNDERLAY_CIDR=10.247.0.0/24
UNDERLAY_PREFIX=10.247.0
UNDERLAY_GW=10.247.0.1
HOST_PREFIX=krh-
HOSTS_DIR="$RUN_DIR/hosts"
# The namespaces of the API server's address for pods and of CoreDNS (API_NETNS and
# DNS_NETNS: 10.245.255.0/30 and 10.245.255.4/30).
API_NETS=10.245.255.0/24
# Our filter chains on the machine: what the LAN sends is forwarded to the LAN and to
# API_NETS only (UNDERLAY_CHAIN, from FORWARD), and opens no connection to the machine
# itself (UNDERLAY_IN_CHAIN, from INPUT: whatever listens on the machine's wildcard
# address stays out of the hosts' and pods' reach).
UNDERLAY_CHAIN=KRUSTLET-UNDERLAY
UNDERLAY_IN_CHAIN=KRUSTLET-UNDERLAY-IN
REGISTRY_SOCKET_NAME=registry.sock

host_ns() { echo "$HOST_PREFIX$1"; }
host_dir() { echo "$HOSTS_DIR/$1"; }
in_host() { local ns; ns=$(host_ns "$1"); shift; ip netns exec "$ns" "$@"; }
host_exists() { ip netns list | grep -qx "$(host_ns "$1")\( .*\)\?"; }

# The LAN, once: the bridge with the machine's address, forwarding on the machine (put
# back by `down`, see host_routes), UNDERLAY_CHAIN and UNDERLAY_IN_CHAIN, and the
# registry's relay on the machine's side.
underlay() {
  if ! ip link show "$UNDERLAY_BRIDGE" >/dev/null 2>&1; then
    local others
    others=$({ ip route show root "$UNDERLAY_CIDR"; ip route show match "$UNDERLAY_CIDR"; } |
      grep -v -e '^default' -e "dev $UNDERLAY_BRIDGE " || true)
    [ -z "$others" ] || die "$UNDERLAY_CIDR overlaps this machine's route(s) $others"
    ip link add "$UNDERLAY_BRIDGE" type bridge
    ip link set "$UNDERLAY_BRIDGE" addrgenmode none
    ip addr add "$UNDERLAY_GW/24" dev "$UNDERLAY_BRIDGE"
    ip link set "$UNDERLAY_BRIDGE" up
  fi
  echo 1 >/proc/sys/net/ipv4/ip_forward
  local t="iptables -w -t filter"
  if ! $t -S "$UNDERLAY_CHAIN" >/dev/null 2>&1; then
    $t -N "$UNDERLAY_CHAIN"
    $t -A "$UNDERLAY_CHAIN" -i "$UNDERLAY_BRIDGE" -o "$UNDERLAY_BRIDGE" -j RETURN
    $t -A "$UNDERLAY_CHAIN" -i "$UNDERLAY_BRIDGE" -d "$API_NETS" -j RETURN
    $t -A "$UNDERLAY_CHAIN" -i "$UNDERLAY_BRIDGE" \
      -m comment --comment "krustlet: the hosts' LAN leads nowhere else" -j DROP
  fi
  $t -C FORWARD -j "$UNDERLAY_CHAIN" 2>/dev/null || $t -I FORWARD -j "$UNDERLAY_CHAIN"
  if ! $t -S "$UNDERLAY_IN_CHAIN" >/dev/null 2>&1; then
    $t -N "$UNDERLAY_IN_CHAIN"
    $t -A "$UNDERLAY_IN_CHAIN" -i "$UNDERLAY_BRIDGE" -m conntrack ! --ctstate ESTABLISHED,RELATED \
      -m comment --comment "krustlet: the hosts open no connection to the machine" -j DROP
  fi
  $t -C INPUT -j "$UNDERLAY_IN_CHAIN" 2>/dev/null || $t -I INPUT -j "$UNDERLAY_IN_CHAIN"
  local sock="$RUN_DIR/$REGISTRY_SOCKET_NAME"
  start registry-host-side socat "UNIX-LISTEN:$sock,fork,unlink-early,mode=600,max-children=64" \
    "TCP:127.0.0.1:$REGISTRY_PORT,connect-timeout=10"
}

# host_up NODE: the host of node NODE (made once; again: the same one). Prints its
# lines (host_lines).
host_up() {
  local node=${1:?node name} ns dir index ip
  ns=$(host_ns "$node")
  dir=$(host_dir "$node")
  mkdir -p "$HOSTS_DIR"
  (
    flock 9
    underlay
    if [ ! -s "$dir/index" ]; then
      # The lowest free number of 2..254 is the host's LAN address and its link's name.
      local taken n
      taken=" $(cat "$HOSTS_DIR"/*/index 2>/dev/null | tr "\n" " " || true) "
      for n in $(seq 2 254); do [[ "$taken" == *" $n "* ]] || break; done
      [[ "$taken" == *" $n "* ]] && die "no free host address in $UNDERLAY_CIDR"
      mkdir -p "$dir/netns" "$dir/net.d"
      echo "$n" >"$dir/index"
    fi
    index=$(cat "$dir/index")
    ip="$UNDERLAY_PREFIX.$index"
    if ! host_exists "$node"; then
      ip netns add "$ns"
      ip link delete "$HOST_PREFIX$index" 2>/dev/null || true
      ip link add "$HOST_PREFIX$index" type veth peer name eth0 netns "$ns"
      ip link set "$HOST_PREFIX$index" master "$UNDERLAY_BRIDGE" up
      ip -n "$ns" addr add "$ip/24" dev eth0
      ip -n "$ns" link set lo up
      ip -n "$ns" link set eth0 up
      ip -n "$ns" route add "$API_NETS" via "$UNDERLAY_GW"
      in_host "$node" sysctl -qw net.ipv4.ip_forward=1
      host_guards "$node"
    fi
    write_cni_conf "$dir/net.d" "$dir/ipam" "$UNDERLAY_CIDR"
  ) 9>"$HOSTS_DIR/.lock"
  start "apiserver-relay-$node" ip netns exec "$ns" socat \
    "TCP-LISTEN:$APISERVER_PORT,bind=127.0.0.1,fork,reuseaddr,max-children=64" \
    "UNIX-CONNECT:$RUN_DIR/$API_SOCKET_NAME"
  start "registry-relay-$node" ip netns exec "$ns" socat \
    "TCP-LISTEN:$REGISTRY_PORT,bind=127.0.0.1,fork,reuseaddr,max-children=64" \
    "UNIX-CONNECT:$RUN_DIR/$REGISTRY_SOCKET_NAME"
  wait_for "apiserver-relay-$node" 30 in_host "$node" curl -sk "https://127.0.0.1:$APISERVER_PORT/livez"
  host_lines "$node"
}

# KEY=VALUE lines of host NODE: its namespace (NETNS, for nsenter --net), LAN address
# (HOST_IP: the node's --node-ip and --address) and pod network (--cni-conf-dir,
# --cni-bin-dir, --netns-dir).
host_lines() {
  local node=$1 dir
  dir=$(host_dir "$node")
  [ -s "$dir/index" ] || die "no host $node"
  echo "NETNS=/run/netns/$(host_ns "$node")"
  echo "HOST_IP=$UNDERLAY_PREFIX.$(cat "$dir/index")"
  echo "CNI_CONF_DIR=$dir/net.d"
  echo "CNI_BIN_DIR=$CNI_BIN"
  echo "NETNS_DIR=$dir/netns"
}

# The machine's two guards (host_routes, localnet_guard) inside host NODE.
host_guards() {
  local ns
  ns=$(host_ns "$1")
  IPTABLES_NETNS=$ns service_guard
  IPTABLES_NETNS=$ns localnet_guard
}

# host_wire NODE: once node NODE has its podCIDR (up to 120 s), route it to the host
# from the machine and from every other host (and theirs to it), then run the host's
# kube-proxy and wait until it has written its rules.
host_wire() {
  local node=${1:?node name} dir cidr="" ip
  dir=$(host_dir "$node")
  [ -s "$dir/index" ] || die "no host $node (hack/cluster host-up $node)"
  ip="$UNDERLAY_PREFIX.$(cat "$dir/index")"
  local deadline=$((SECONDS + 120))
  until [ -n "$cidr" ]; do
    cidr=$(kubectl_admin get node "$node" -o jsonpath='{.spec.podCIDR}' 2>/dev/null || true)
    [ -n "$cidr" ] && break
    [ $SECONDS -lt $deadline ] || die "node $node has no podCIDR after 120 s"
    sleep 0.5
  done
  (
    flock 9
    echo "$cidr" >"$dir/podcidr"
    ip route replace "$cidr" via "$ip" metric "$GUARD_METRIC"
    local other odir
    for odir in "$HOSTS_DIR"/*/; do
      other=$(basename "$odir")
      [ "$other" != "$node" ] && [ -s "$odir/podcidr" ] && host_exists "$other" || continue
      ip -n "$(host_ns "$node")" route replace "$(cat "$odir/podcidr")" via "$UNDERLAY_PREFIX.$(cat "$odir/index")"
      ip -n "$(host_ns "$other")" route replace "$cidr" via "$ip"
    done
  ) 9>"$HOSTS_DIR/.lock"
  start "kube-proxy-$node" ip netns exec "$(host_ns "$node")" "$K8S_BIN/kube-proxy" \
    --kubeconfig "$RUN_DIR/kube-proxy.kubeconfig" \
    --proxy-mode "$KUBE_PROXY_MODE" --hostname-override "$node" \
    --bind-address 127.0.0.1 \
    --metrics-bind-address "127.0.0.1:$KUBE_PROXY_METRICS_PORT" \
    --healthz-bind-address "127.0.0.1:$KUBE_PROXY_HEALTHZ_PORT" \
    --cluster-cidr "$CLUSTER_CIDR" \
    --nodeport-addresses 127.0.0.1/32,::1/128 --iptables-localhost-nodeports=false \
    --conntrack-max-per-core 0 --conntrack-tcp-timeout-established 0 \
    --conntrack-tcp-timeout-close-wait 0 \
    --oom-score-adj 0 --profiling=false
  wait_for "kube-proxy-$node" 90 in_host "$node" bash -c \
    "curl -sf http://127.0.0.1:$KUBE_PROXY_HEALTHZ_PORT/livez | grep -q '\"IPv4\":{\"lastUpdated\":\"'"
  echo "POD_CIDR=$cidr"
}

# host_cut NODE: the host's link to the LAN goes down, as a machine that dies or is
# unplugged: its packets and those sent to it are lost, not refused.
host_cut() {
  local dir
  dir=$(host_dir "${1:?node name}")
  [ -s "$dir/index" ] || die "no host $1"
  ip link set "$HOST_PREFIX$(cat "$dir/index")" down
}

# host_down NODE: stop the host's processes (its relays, kube-proxy and a node that
# start-node ran there), remove the routes to it, unpin what its pods left and delete
# its namespace (which takes its links, pod bridge and rules along).
host_down() {
  local node=${1:?node name} dir name
  dir=$(host_dir "$node")
  for name in "krustlet-$node" "kube-proxy-$node" "apiserver-relay-$node" "registry-relay-$node"; do
    if [ -s "$RUN_DIR/pids/$name" ]; then
      stop_pid "$(cat "$RUN_DIR/pids/$name")" 5
      rm -f "$RUN_DIR/pids/$name"
    fi
  done
  [ -d "$dir" ] || return 0
  (
    flock 9
    remove_host "$node"
  ) 9>"$HOSTS_DIR/.lock"
}

remove_host() {
  local node=$1 dir cidr other odir
  dir=$(host_dir "$node")
  if [ -s "$dir/podcidr" ]; then
    cidr=$(cat "$dir/podcidr")
    ip route del "$cidr" metric "$GUARD_METRIC" 2>/dev/null || true
    for odir in "$HOSTS_DIR"/*/; do
      other=$(basename "$odir")
      [ "$other" != "$node" ] || continue
      ip -n "$(host_ns "$other")" route del "$cidr" 2>/dev/null || true
    done
  fi
  [ -d "$dir/netns" ] && unmount_under "$dir/netns"
  # The link first: the kernel frees a deleted namespace's links later, and the next host
  # may get this number at once.
  [ -s "$dir/index" ] && ip link delete "$HOST_PREFIX$(cat "$dir/index")" 2>/dev/null || true
  ip netns delete "$(host_ns "$node")" 2>/dev/null || true
  rm -rf "$dir"
}

# Every host, the LAN and its chain (hack/cluster down; the processes are stopped
# already, by PID).
remove_hosts() {
  local odir ns
  for odir in "$HOSTS_DIR"/*/; do
    [ -d "$odir" ] || continue
    remove_host "$(basename "$odir")"
  done
  # Hosts whose state is gone (a run directory removed by hand).
  for ns in $(ip netns list | awk '{print $1}' | grep "^$HOST_PREFIX" || true); do
    ip netns delete "$ns" 2>/dev/null || true
  done
  if ip link show "$UNDERLAY_BRIDGE" >/dev/null 2>&1; then
    ip link delete "$UNDERLAY_BRIDGE" type bridge || warn "could not delete bridge $UNDERLAY_BRIDGE"
  fi
  if command -v iptables >/dev/null; then
    local t="iptables -w -t filter"
    while $t -D FORWARD -j "$UNDERLAY_CHAIN" 2>/dev/null; do :; done
    while $t -D INPUT -j "$UNDERLAY_IN_CHAIN" 2>/dev/null; do :; done
    local chain
    for chain in "$UNDERLAY_CHAIN" "$UNDERLAY_IN_CHAIN"; do
      { $t -F "$chain" && $t -X "$chain"; } 2>/dev/null || true
    done
  fi
}
