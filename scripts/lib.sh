#!/usr/bin/env bash
# Shared by the scripts (sourced, not run): packages, bounded polling, PASS/FAIL
# accounting, the cluster's objects read as JSON, and the network plumbing both
# the lab and the kernel's flannel-style reference are built from.

# --- packages and processes ------------------------------------------------------

# ensure_commands CMD:PACKAGE…: installs, with apt-get, the Debian package of every
# command that is missing.
ensure_commands() {
    local missing=() pair
    for pair in "$@"; do
        command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "==> installing ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

# LAB_COMMANDS: what the lab runs, as ensure_commands wants it (lab.sh up installs
# them; test.sh adds its own). protoc is for the build: the etcd store's client
# (etcd-client) compiles etcd's gRPC protocol with it.
# shellcheck disable=SC2034 # used by the scripts that source this
LAB_COMMANDS=(ip:iproute2 ping:iputils-ping curl:curl kill:procps pkill:procps
    traceroute:traceroute nsenter:util-linux dig:dnsutils jq:jq nc:netcat-openbsd
    protoc:protobuf-compiler iptables:iptables)

# ETCD_COMMANDS: etcd itself (Debian's etcd-server gives /usr/bin/etcd) and
# etcdctl, for the etcd store's tests, which start their own etcd, and for an
# etcd-backed lab.
# shellcheck disable=SC2034 # used by the scripts that source this
ETCD_COMMANDS=(etcd:etcd-server etcdctl:etcd-client)

# need_root SCRIPT: exits unless running as root.
need_root() {
    [ "$(id -u)" -eq 0 ] || { echo "$1: must run as root (network namespaces and TAP devices need it)" >&2; exit 1; }
}

# usage_of FILE: FILE's header comment (after the #! line), without the marks.
usage_of() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$1"; }

now_ms() { echo $(($(date +%s%N) / 1000000)); }

# poll_until MS CMD…: runs CMD until it succeeds, for at most MS milliseconds,
# sleeping POLL_SLEEP seconds (default 0.05) between tries. Returns 0 once CMD
# succeeds (POLL_MS is then the milliseconds it took), 1 when time ran out
# (POLL_MS empty). CMD runs at least once.
poll_until() {
    local limit=$1 t0
    shift
    t0=$(now_ms)
    POLL_MS=""
    while :; do
        if "$@"; then
            # shellcheck disable=SC2034 # read by the callers
            POLL_MS=$(($(now_ms) - t0))
            return 0
        fi
        [ $(($(now_ms) - t0)) -lt "$limit" ] || return 1
        sleep "${POLL_SLEEP:-0.05}"
    done
}

# proc_starttime PID: when PID started (field 22 of /proc/PID/stat, clock ticks
# since boot); empty if there is no such process. With the PID it names one
# process for good: a PID reused by another process has another start time.
proc_starttime() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
    # The fields after "PID (COMM) ": the third field of the line is the first here.
    awk '{ print $20 }' <<<"${stat##*) }"
}

# pidfile_pid PIDFILE: the PID a pid file names ("PID" or "PID STARTTIME").
pidfile_pid() { local pid _; read -r pid _ <"$1" 2>/dev/null && echo "$pid"; }

# pid_alive PIDFILE: the process the file names is running (not a zombie) and,
# when the file records a start time ("PID STARTTIME"), is that very process.
pid_alive() {
    local pid start stat
    [ -f "$1" ] && read -r pid start <"$1" 2>/dev/null || return 1
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [ "${stat:0:1}" != Z ] || return 1
    [ -z "$start" ] || [ "$(awk '{ print $20 }' <<<"$stat")" = "$start" ]
}

# pidfile_signal SIGNAL PIDFILE: sends SIGNAL to the process the file names if
# pid_alive says it is that process.
pidfile_signal() { if pid_alive "$2"; then kill "-$1" "$(pidfile_pid "$2")" 2>/dev/null || true; fi; }

# --- PASS / FAIL -------------------------------------------------------------------

PASSED=0
FAILED=0
pass() { echo "PASS  $*"; PASSED=$((PASSED + 1)); }
fail() { echo "FAIL  $*"; FAILED=$((FAILED + 1)); }
# verdict WHAT CMD…: PASS WHAT if CMD succeeds, else FAIL it.
verdict() {
    local what=$1
    shift
    if "$@"; then pass "$what"; else fail "$what"; fi
}

# --- the cluster, read as JSON (needs BIN; the store is TAPESTRY_STORE) ------------

# With TAPESTRY_NETNS set (lab.sh does in etcd mode), the CLI runs in that
# network namespace, from where the lab's etcd members are reachable.
tapestry() {
    if [ -n "${TAPESTRY_NETNS:-}" ]; then
        ip netns exec "$TAPESTRY_NETNS" "$BIN/tapestry" "$@"
    else
        "$BIN/tapestry" "$@"
    fi
}

# objects KIND [NAMESPACE]: one compact JSON object a line, every KIND (nodes,
# pods, services, endpoints) of NAMESPACE, or of all namespaces without one.
# `tapestry get -o json` prints one object alone and several as a List.
objects() {
    local scope=(-A)
    [ -n "${2:-}" ] && scope=(-n "$2")
    tapestry get "$1" "${scope[@]}" -o json | jq -c 'if .kind == "List" then .items[] else . end'
}

# pod_ip POD [NAMESPACE], pod_node POD [NAMESPACE]: empty while unknown.
pod_ip() { objects pods "${2:-default}" | jq -r --arg n "$1" 'select(.metadata.name == $n) | .status.podIP // empty'; }
pod_node() { objects pods "${2:-default}" | jq -r --arg n "$1" 'select(.metadata.name == $n) | .spec.nodeName // empty'; }

# pods_tsv [NAMESPACE]: "NAME<TAB>IP<TAB>NODE" per pod of NAMESPACE (default
# `default`), in the store's order; "-" for what is not known yet.
pods_tsv() {
    objects pods "${1:-default}" | jq -r '[.metadata.name, (.status.podIP // "-"), (.spec.nodeName // "-")] | @tsv'
}

# web_on NODE: the first web-* pod of the default namespace on NODE.
web_on() { pods_tsv default | awk -F'\t' -v n="$1" '$3 == n && $1 ~ /^web-/ { print $1; exit }'; }

# svc_ip SERVICE [NAMESPACE]: the Service's ClusterIP.
svc_ip() { objects services "${2:-default}" | jq -r --arg n "$1" 'select(.metadata.name == $n) | .spec.clusterIP // empty'; }

# endpoints_of SERVICE [NAMESPACE]: SERVICE's ready endpoints, one IP:PORT (or
# IP:PORT/UDP) a line. `tapestry get endpoints` has no JSON form, so this is the
# one place a table is read: the wide table's third column, comma-separated.
endpoints_of() {
    tapestry get endpoints -n "${2:-default}" -o wide |
        awk -v s="$1" 'NR > 1 && $2 == s && $3 != "<none>" { gsub(",", "\n", $3); print $3 }'
}

# ready_ips SERVICE [NAMESPACE]: the addresses behind SERVICE, sorted, on one
# line, space-separated.
ready_ips() { endpoints_of "$@" | cut -d: -f1 | sort -u -V | tr '\n' ' ' | sed 's/ $//'; }

# node_vtep_mac NODE: the VXLAN MAC the node registered.
node_vtep_mac() { objects nodes | jq -r --arg n "$1" 'select(.metadata.name == $n) | .status.vtepMAC // empty'; }

# --- namespaces of a lab -------------------------------------------------------------

# netns_with_prefix PREFIX: every network namespace named PREFIX-….
netns_with_prefix() { ip netns list | awk -v p="$1-" 'index($1, p) == 1 { print $1 }'; }

# pod_ns POD: the namespace of pod POD ("NAMESPACE/NAME" or NAME in `default`)
# in lab LAB.
pod_ns() {
    case "$1" in
        */*) echo "$LAB-${1%%/*}-${1#*/}" ;;
        *) echo "$LAB-default-$1" ;;
    esac
}

# in_pod POD CMD…: runs CMD inside POD's network namespace.
in_pod() {
    local ns
    ns=$(pod_ns "$1")
    shift
    ip netns exec "$ns" "$@"
}

# --- underlay and the flannel-style kernel reference --------------------------------
# The lab's nodes and the kernel reference share one shape of "physical" network:
# a kernel bridge in its own namespace, each node cabled to it with a veth. A
# kernel node is built the way flannel's vxlan backend builds one, so Tapestry
# can be measured against it (bench.sh) and must exchange traffic with it (e2e.sh).

# underlay_bridge NS: namespace NS holding br0, the underlay (kept if it exists).
underlay_bridge() {
    [ -e "/run/netns/$1" ] && return 0
    ip netns add "$1"
    ip -n "$1" link set lo up
    ip -n "$1" link add br0 type bridge
    ip -n "$1" link set br0 up
}

# underlay_node NS UNDERLAY_NS PORT ADDR: a new namespace NS whose eth0 (ADDR/24)
# is cabled to port PORT of the underlay's br0.
underlay_node() {
    local ns=$1 under=$2 port=$3 addr=$4
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    ip link add name "$port" netns "$under" type veth peer name eth0 netns "$ns"
    ip -n "$under" link set "$port" master br0 up
    ip -n "$ns" addr add "$addr/24" dev eth0
    ip -n "$ns" link set eth0 up
}

# flannel_node NS UNDERLAY_NS PORT UNDERLAY_IP SUBNET VTEP_MAC: a Linux node the way
# flannel's vxlan backend sets one up, on the underlay at UNDERLAY_IP. SUBNET is
# the first three octets of its pod /24: bridge cni0 is SUBNET.1 (the pods'
# gateway), VXLAN device flannel.1 (VNI 1, UDP 4789, no learning, MTU 1450) has
# MAC VTEP_MAC and SUBNET.0/32. It forwards.
flannel_node() {
    local ns=$1 under=$2 port=$3 uip=$4 subnet=$5 mac=$6
    underlay_node "$ns" "$under" "$port" "$uip"
    ip netns exec "$ns" sysctl -qw net.ipv4.ip_forward=1
    ip -n "$ns" link add cni0 type bridge
    ip -n "$ns" addr add "$subnet.1/24" dev cni0
    ip -n "$ns" link set cni0 mtu 1450 up
    ip -n "$ns" link add flannel.1 type vxlan id 1 local "$uip" dstport 4789 nolearning dev eth0
    ip -n "$ns" link set flannel.1 address "$mac" mtu 1450 up
    ip -n "$ns" addr add "$subnet.0/32" dev flannel.1
}

# flannel_peer NS SUBNET VTEP_MAC UNDERLAY_IP: what flanneld writes on node NS for
# one other node (a kernel one or Tapestry's) owning SUBNET.0/24: the route via
# SUBNET.0 on flannel.1, that address's permanent neighbour entry (VTEP_MAC), and
# the forwarding entry sending VTEP_MAC to UNDERLAY_IP.
flannel_peer() {
    local ns=$1 subnet=$2 mac=$3 uip=$4
    ip -n "$ns" route add "$subnet.0/24" via "$subnet.0" dev flannel.1 onlink
    ip -n "$ns" neigh add "$subnet.0" lladdr "$mac" dev flannel.1 nud permanent
    ip netns exec "$ns" bridge fdb append "$mac" dev flannel.1 dst "$uip"
}

# flannel_pod NS NODE_NS SUBNET HOST: pod namespace NS on a veth into NODE_NS's
# cni0, address SUBNET.HOST/24, default route via SUBNET.1, MTU 1450.
flannel_pod() {
    local ns=$1 node=$2 subnet=$3 host=$4
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    ip link add name eth0 netns "$ns" type veth peer name "v$host" netns "$node"
    ip -n "$node" link set "v$host" master cni0 mtu 1450 up
    ip -n "$ns" link set eth0 mtu 1450 up
    ip -n "$ns" addr add "$subnet.$host/24" dev eth0
    ip -n "$ns" route add default via "$subnet.1"
}

# kube_proxy_dnat NODE_NS VIP PORT BACKEND: a ClusterIP the way kube-proxy's
# iptables mode makes one with a single backend: TCP to VIP:PORT arriving at the
# node is DNATed to BACKEND:PORT.
kube_proxy_dnat() {
    ip netns exec "$1" iptables -t nat -A PREROUTING -d "$2/32" -p tcp --dport "$3" \
        -j DNAT --to-destination "$4:$3"
}
