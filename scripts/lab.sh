#!/usr/bin/env bash
# Tapestry lab: a simulated Kubernetes cluster built from Linux network namespaces.
#
#   scripts/lab.sh [--name LAB] [--nodes N] up       build, start N nodes (default 2), apply lab/pods and lab/services
#   scripts/lab.sh [--name LAB] down                 remove everything `up` made
#   scripts/lab.sh [--name LAB] status               nodes and pods, with IPs and MACs
#   scripts/lab.sh [--name LAB] exec POD -- CMD...   run CMD inside POD's network namespace
#   scripts/lab.sh [--name LAB] demo                 show the Kubernetes networking facts, PASS or FAIL each
#   scripts/lab.sh bench                             Tapestry beside the kernel's data plane (scripts/bench.sh)
#   up --manifests DIR applies DIR instead of lab/pods and lab/services.
#
# Needs root. Everything it makes is named after LAB (default: tapestry) and
# recorded under /run/tapestry/LAB; nothing outside the lab's namespaces is touched.
# The underlay ("physical" network) is a kernel bridge in namespace LAB-underlay,
# 198.18.0.0/24 (RFC 2544's benchmark range); node i is 198.18.0.i and owns pod
# subnet 10.244.i.0/24. The cluster store is the directory /run/tapestry/LAB/store
# (`tapestry --store` or TAPESTRY_STORE to reach it).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export REPO
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$REPO/scripts/lib.sh"
LAB=${TAPESTRY_LAB:-tapestry}
NODES=2
BIN="$REPO/target/release"
export LAB BIN
MANIFESTS="$REPO/lab/pods"
SERVICES="$REPO/lab/services"

usage() {
    sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

die() { echo "lab.sh: $*" >&2; exit 1; }
say() { echo "==> $*"; }

lab_dir() { echo "/run/tapestry/$LAB"; }
node_ns() { echo "$LAB-$1"; }

need_root() {
    [ "$(id -u)" -eq 0 ] || die "must run as root (network namespaces and TAP devices need it)"
}

# Debian packages the lab uses, by the command that needs them.
ensure_packages() {
    ensure_commands ip:iproute2 ping:iputils-ping curl:curl kill:procps pkill:procps \
        traceroute:traceroute nsenter:util-linux dig:dnsutils
}

build() {
    say "building release binaries"
    (cd "$REPO" && cargo build --release --quiet --bin tapestryd --bin tapestry --bin tapestry-web --bin tapestry-pause --bin tapestry-dns --bin tapestry-cni)
}

tapestry() { "$BIN/tapestry" "$@"; }
store() { echo "$(lab_dir)/store"; }
underlay_ns() { echo "$LAB-underlay"; }

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# Polls `tapestry status` until the agent answers, at most 10 s.
wait_agent() {
    local sock=$1 i
    for i in $(seq 1 100); do
        tapestry status --socket "$sock" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    return 1
}

# The underlay: a kernel bridge in its own namespace, the lab's "physical" network.
make_underlay() {
    local ns
    ns=$(underlay_ns)
    if [ ! -e "/run/netns/$ns" ]; then
        ip netns add "$ns"
        ip -n "$ns" link set lo up
        ip -n "$ns" link add br0 type bridge
        ip -n "$ns" link set br0 up
    fi
}

start_node() {
    local i=$1 node="node$1" ns dir
    ns=$(node_ns "$node")
    dir="$(lab_dir)/nodes/$node"
    mkdir -p "$dir"
    if [ ! -e "/run/netns/$ns" ]; then
        ip netns add "$ns"
        ip -n "$ns" link set lo up
        # A veth cable from the node to the underlay bridge, both ends made in place.
        ip link add name "u$i" netns "$(underlay_ns)" type veth peer name eth0 netns "$ns"
        ip -n "$(underlay_ns)" link set "u$i" master br0 up
        ip -n "$ns" addr add "198.18.0.$i/24" dev eth0
        ip -n "$ns" link set eth0 up
    fi
    if pid_alive "$dir/tapestryd.pid"; then
        say "$node: tapestryd already running (pid $(cat "$dir/tapestryd.pid"))"
    else
        say "$node: starting tapestryd in namespace $ns (underlay 198.18.0.$i, pod subnet 10.244.$i.0/24)"
        # nsenter, not `ip netns exec`: the agent must share the host's mount
        # namespace, or the pod namespaces its kubelet creates would be invisible.
        setsid nsenter --net="/run/netns/$ns" "$BIN/tapestryd" --node "$node" --store "$(store)" \
            --underlay-ip "198.18.0.$i" --pod-cidr "10.244.$i.0/24" --netns-prefix "$LAB" \
            --cluster-dns 10.96.0.10 \
            --state-dir "$dir" </dev/null >>"$dir/tapestryd.log" 2>&1 &
        echo $! >"$dir/tapestryd.pid"
    fi
    wait_agent "$dir/tapestryd.sock" || { tail -n 20 "$dir/tapestryd.log" >&2; die "$node: tapestryd did not answer on $dir/tapestryd.sock"; }
}

cmd_up() {
    need_root
    ensure_packages
    build
    local have
    mkdir -p "$(lab_dir)/store"
    if [ -f "$(lab_dir)/nodes.count" ]; then
        have=$(cat "$(lab_dir)/nodes.count")
        [ "$have" = "$NODES" ] || die "lab $LAB is up with $have node(s); run 'scripts/lab.sh down' before changing --nodes"
    fi
    echo "$NODES" >"$(lab_dir)/nodes.count"
    make_underlay
    for i in $(seq 1 "$NODES"); do
        start_node "$i"
    done
    say "applying ${MANIFESTS#"$REPO"/} ${SERVICES#"$REPO"/}"
    tapestry apply --store "$(store)" -f "$MANIFESTS"
    if [ -n "$SERVICES" ]; then tapestry apply --store "$(store)" -f "$SERVICES"; fi
    say "waiting for every pod to answer"
    tapestry wait --store "$(store)" --timeout 60
    cmd_status
}

# Stops every process whose pid file is under $1.
kill_pidfiles() {
    local pidf
    for pidf in "$1"/*.pid; do
        [ -f "$pidf" ] || continue
        if pid_alive "$pidf"; then kill -TERM "$(cat "$pidf")" 2>/dev/null || true; fi
    done
    for pidf in "$1"/*.pid; do
        [ -f "$pidf" ] || continue
        for _ in $(seq 1 30); do pid_alive "$pidf" || break; sleep 0.1; done
        if pid_alive "$pidf"; then kill -KILL "$(cat "$pidf")" 2>/dev/null || true; fi
    done
}

cmd_down() {
    need_root
    local dir nd pd ns
    dir=$(lab_dir)
    # Agents first, so that no kubelet restarts what is being removed.
    for nd in "$dir"/nodes/*; do
        [ -d "$nd" ] && kill_pidfiles "$nd"
    done
    for pd in "$dir"/nodes/*/pods/*; do
        [ -d "$pd" ] || continue
        kill_pidfiles "$pd"
        ns=$(cat "$pd/netns" 2>/dev/null || true)
        if [ -n "$ns" ] && [ -e "/run/netns/$ns" ]; then ip netns del "$ns"; fi
    done
    # Every namespace of this lab: nodes, pods, the underlay (all named LAB-…).
    for ns in $(ip netns list | awk '{print $1}' | grep -E "^$LAB-" || true); do
        ip netns del "$ns"
    done
    # Pods' resolv.conf files, which the kubelets wrote under /etc/netns/LAB-….
    for ns in /etc/netns/"$LAB"-*; do
        if [ -d "$ns" ]; then rm -rf "$ns"; fi
    done
    rm -rf "$dir"
    say "lab $LAB is down"
}

cmd_status() {
    local dir nd
    dir=$(lab_dir)
    [ -d "$dir/nodes" ] || die "lab $LAB is not up (no $dir)"
    for nd in "$dir"/nodes/*; do
        [ -S "$nd/tapestryd.sock" ] || continue
        echo
        tapestry status --socket "$nd/tapestryd.sock" || true
    done
    echo
    tapestry get nodes --store "$(store)"
    echo
    tapestry get pods --store "$(store)" -o wide -A
    echo
    tapestry get services --store "$(store)" -A
    echo
    tapestry get endpoints --store "$(store)" -A
}

pod_ns() {
    local pod=$1
    case "$pod" in
        */*) echo "$LAB-${pod%%/*}-${pod#*/}" ;;
        *) echo "$LAB-default-$pod" ;;
    esac
}

cmd_exec() {
    need_root
    [ $# -ge 1 ] || die "usage: lab.sh exec POD -- CMD..."
    local pod=$1 ns; shift
    [ "${1:-}" = "--" ] && shift
    [ $# -ge 1 ] || die "usage: lab.sh exec POD -- CMD..."
    ns=$(pod_ns "$pod")
    [ -e "/run/netns/$ns" ] || die "no pod $pod in lab $LAB (no namespace $ns)"
    exec ip netns exec "$ns" "$@"
}

cmd_demo() {
    need_root
    [ -d "$(lab_dir)/nodes" ] || die "lab $LAB is not up: run 'scripts/lab.sh up' first"
    LAB_DIR=$(lab_dir) TAPESTRY_STORE=$(store) bash "$REPO/scripts/demo.sh"
}

main() {
    while [ $# -gt 0 ]; do
        case "$1" in
            --name) LAB=${2:?--name needs a value}; shift 2 ;;
            --nodes) NODES=${2:?--nodes needs a value}; shift 2 ;;
            --manifests) MANIFESTS=$(cd "${2:?--manifests needs a directory}" && pwd); SERVICES=""; shift 2 ;;
            -h|--help|help) usage; exit 0 ;;
            *) break ;;
        esac
    done
    [[ "$LAB" =~ ^[a-z][a-z0-9]{0,11}$ ]] || die "lab name '$LAB' must be 1-12 lowercase letters or digits, starting with a letter"
    if ! [[ "$NODES" =~ ^[0-9]+$ ]] || [ "$NODES" -lt 1 ] || [ "$NODES" -gt 200 ]; then
        die "--nodes must be 1 to 200"
    fi
    local cmd=${1:-}
    [ -n "$cmd" ] || { usage; exit 2; }
    shift
    case "$cmd" in
        up) cmd_up "$@" ;;
        down) cmd_down "$@" ;;
        status) cmd_status "$@" ;;
        exec) cmd_exec "$@" ;;
        demo) cmd_demo "$@" ;;
        bench) exec bash "$REPO/scripts/bench.sh" "$@" ;;
        *) usage >&2; die "unknown command '$cmd'" ;;
    esac
}

main "$@"
