#!/usr/bin/env bash
# Tapestry lab: a simulated Kubernetes cluster built from Linux network namespaces.
#
#   scripts/lab.sh up [--nodes N] [--manifests DIR]   build, start N nodes (default 2), apply lab/pods
#                                                     and lab/services (or DIR instead of both)
#   scripts/lab.sh down                               remove everything `up` made
#   scripts/lab.sh status                             nodes and pods, with IPs and MACs
#   scripts/lab.sh exec POD [--] CMD...               run CMD inside POD's network namespace
#                                                     (POD is NAME, or NAMESPACE/NAME)
#   scripts/lab.sh demo                               the Kubernetes networking facts and NetworkPolicy, PASS or FAIL each
#   scripts/lab.sh bench [ARGS...]                    Tapestry beside the kernel's data plane
#                                                     (scripts/bench.sh ARGS; see bench.sh --help)
#
# Every command takes --name LAB (default: tapestry, or $TAPESTRY_LAB). Options go
# before or after the command (`lab.sh up --nodes 3` is `lab.sh --nodes 3 up`),
# as `--opt VALUE` or `--opt=VALUE`; an unknown option prints this and exits 2.
# In exec, the command starts after `--` (or at the first word after POD that is
# not an option) and is passed through whole.
#
# Needs root. Everything it makes is named after LAB and recorded under
# /run/tapestry/LAB; nothing outside the lab's namespaces is touched.
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

usage() { usage_of "${BASH_SOURCE[0]}"; }

die() { echo "lab.sh: $*" >&2; exit 1; }
# usage_error MESSAGE: the usage and MESSAGE on stderr, exit 2.
usage_error() { usage >&2; echo "lab.sh: $*" >&2; exit 2; }
say() { echo "==> $*"; }

lab_dir() { echo "/run/tapestry/$LAB"; }
node_ns() { echo "$LAB-$1"; }

build() {
    say "building release binaries"
    (cd "$REPO" && cargo build --release --quiet --bin tapestryd --bin tapestry --bin tapestry-web --bin tapestry-probe --bin tapestry-pause --bin tapestry-dns --bin tapestry-cni)
}

store() { echo "$(lab_dir)/store"; }
underlay_ns() { echo "$LAB-underlay"; }

agent_answers() { tapestry status --socket "$1" >/dev/null 2>&1; }
# Polls `tapestry status` until the agent answers, at most 10 s.
wait_agent() { POLL_SLEEP=0.1 poll_until 10000 agent_answers "$1"; }

start_node() {
    local i=$1 node="node$1" ns dir
    ns=$(node_ns "$node")
    dir="$(lab_dir)/nodes/$node"
    mkdir -p "$dir"
    if [ ! -e "/run/netns/$ns" ]; then
        underlay_node "$ns" "$(underlay_ns)" "u$i" "198.18.0.$i"
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
    need_root lab.sh
    ensure_commands "${LAB_COMMANDS[@]}"
    build
    local have
    mkdir -p "$(lab_dir)/store"
    if [ -f "$(lab_dir)/nodes.count" ]; then
        have=$(cat "$(lab_dir)/nodes.count")
        [ "$have" = "$NODES" ] || die "lab $LAB is up with $have node(s); run 'scripts/lab.sh down' before changing --nodes"
    fi
    echo "$NODES" >"$(lab_dir)/nodes.count"
    underlay_bridge "$(underlay_ns)"
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

pid_gone() { ! pid_alive "$1"; }

# Stops every process whose pid file is under $1.
kill_pidfiles() {
    local pidf
    for pidf in "$1"/*.pid; do
        [ -f "$pidf" ] || continue
        if pid_alive "$pidf"; then kill -TERM "$(cat "$pidf")" 2>/dev/null || true; fi
    done
    for pidf in "$1"/*.pid; do
        [ -f "$pidf" ] || continue
        POLL_SLEEP=0.1 poll_until 3000 pid_gone "$pidf" ||
            kill -KILL "$(cat "$pidf")" 2>/dev/null || true
    done
}

cmd_down() {
    need_root lab.sh
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
    for ns in $(netns_with_prefix "$LAB"); do
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

cmd_exec() { # cmd_exec POD CMD...
    [ $# -ge 2 ] || usage_error "exec needs a pod and a command: lab.sh exec POD -- CMD..."
    need_root lab.sh
    local pod=$1 ns
    shift
    ns=$(pod_ns "$pod")
    [ -e "/run/netns/$ns" ] || die "no pod $pod in lab $LAB (no namespace $ns)"
    exec ip netns exec "$ns" "$@"
}

cmd_demo() {
    need_root lab.sh
    [ -d "$(lab_dir)/nodes" ] || die "lab $LAB is not up: run 'scripts/lab.sh up' first"
    LAB_DIR=$(lab_dir) TAPESTRY_STORE=$(store) bash "$REPO/scripts/demo.sh"
}

# set_option NAME VALUE: one of lab.sh's options.
set_option() {
    case "$1" in
        --name) LAB=$2 ;;
        --nodes) NODES=$2 ;;
        --manifests)
            MANIFESTS=$(cd "$2" 2>/dev/null && pwd) || die "--manifests: no directory '$2'"
            SERVICES=""
            ;;
    esac
}

# Options anywhere (before or after the command); the command's own words in
# ARGS. Sets CMD and ARGS.
parse_args() {
    CMD=""
    ARGS=()
    while [ $# -gt 0 ]; do
        case "$1" in
            --name | --nodes | --manifests)
                [ $# -ge 2 ] || usage_error "$1 needs a value"
                set_option "$1" "$2"
                shift 2
                ;;
            --name=* | --nodes=* | --manifests=*) set_option "${1%%=*}" "${1#*=}"; shift ;;
            -h | --help) usage; exit 0 ;;
            --)
                if [ "$CMD" != exec ] || [ ${#ARGS[@]} -ne 1 ]; then usage_error "'--' belongs after 'exec POD'"; fi
                shift
                ARGS+=("$@")
                return
                ;;
            -*) usage_error "unknown option '$1'" ;;
            *)
                if [ -z "$CMD" ]; then
                    CMD=$1
                    # bench's words are bench.sh's.
                    if [ "$CMD" = bench ]; then shift; ARGS=("$@"); return; fi
                elif [ "$CMD" = exec ]; then
                    ARGS+=("$1")
                    # After POD, the first word that is not an option starts the command.
                    if [ ${#ARGS[@]} -eq 2 ]; then shift; ARGS+=("$@"); return; fi
                else
                    usage_error "'$CMD' takes no argument '$1'"
                fi
                shift
                ;;
        esac
    done
}

main() {
    parse_args "$@"
    [[ "$LAB" =~ ^[a-z][a-z0-9]{0,11}$ ]] || die "lab name '$LAB' must be 1-12 lowercase letters or digits, starting with a letter"
    if ! [[ "$NODES" =~ ^[0-9]+$ ]] || [ "$NODES" -lt 1 ] || [ "$NODES" -gt 200 ]; then
        usage_error "--nodes must be 1 to 200"
    fi
    case "$CMD" in
        up) cmd_up ;;
        down) cmd_down ;;
        status) cmd_status ;;
        exec) cmd_exec "${ARGS[@]}" ;;
        demo) cmd_demo ;;
        bench) exec bash "$REPO/scripts/bench.sh" "${ARGS[@]}" ;;
        help) usage ;;
        "") usage_error "no command given" ;;
        *) usage_error "unknown command '$CMD'" ;;
    esac
}

main "$@"
