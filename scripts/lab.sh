#!/usr/bin/env bash
# Tapestry lab: a simulated Kubernetes cluster built from Linux network namespaces.
#
#   scripts/lab.sh up [--nodes N] [--manifests DIR]   build, start N nodes (default 2), apply lab/pods
#                                                     and lab/services (or DIR instead of both)
#   scripts/lab.sh down                               remove everything `up` made, and only that
#   scripts/lab.sh status                             agents (restarts), nodes and pods, with IPs and MACs
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
# /run/tapestry/LAB (namespaces in netns.list and each pod's netns file,
# processes in *.pid files as "PID STARTTIME"); `down` removes exactly what is
# recorded, and nothing outside the lab's namespaces is touched. Each node's
# tapestryd runs under scripts/supervise.sh, which starts it again when it
# dies (backoff 100 ms doubling to 5 s) once the old process is gone; its log,
# tapestryd.log, is capped at 8 MiB plus one rotated file, as are the pods'
# container logs (the kubelet's).
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
    (cd "$REPO" && cargo build --release --quiet --bin tapestryd --bin tapestry --bin tapestry-web --bin tapestry-probe --bin tapestry-pause --bin tapestry-dns --bin tapestry-cni --bin tapestry-logcap)
}

store() { echo "$(lab_dir)/store"; }
underlay_ns() { echo "$LAB-underlay"; }

agent_answers() { tapestry status --socket "$1" >/dev/null 2>&1; }
# Polls `tapestry status` until the agent answers, at most 10 s.
wait_agent() { POLL_SLEEP=0.1 poll_until 10000 agent_answers "$1"; }

# record_netns NS: NS is the lab's (down deletes it); recorded before it is made.
record_netns() {
    grep -qxF "$1" "$(lab_dir)/netns.list" 2>/dev/null || echo "$1" >>"$(lab_dir)/netns.list"
}

# stop_pidfile PIDFILE [MS]: SIGTERM to the process the file names (if it is
# still that process), SIGKILL after MS (default 3000) ms; returns once it is gone.
stop_pidfile() {
    pidfile_signal TERM "$1"
    POLL_SLEEP=0.05 poll_until "${2:-3000}" pid_gone "$1" && return 0
    pidfile_signal KILL "$1"
    POLL_SLEEP=0.05 poll_until 3000 pid_gone "$1"
}

# supervision NODE_DIR: one line on the node's supervisor and agent.
supervision() {
    local d=$1 line
    if pid_alive "$d/supervise.pid"; then
        line="supervisor pid $(pidfile_pid "$d/supervise.pid")"
    else
        line="supervisor not running"
    fi
    if pid_alive "$d/tapestryd.pid"; then
        line+=", tapestryd pid $(pidfile_pid "$d/tapestryd.pid")"
    else
        line+=", tapestryd not running"
    fi
    line+=", restarts $(cat "$d/tapestryd.restarts" 2>/dev/null || echo 0)"
    if [ -s "$d/tapestryd.exit" ]; then
        local kind code at
        read -r kind code at <"$d/tapestryd.exit"
        line+=" (last ended: $kind $code, $(($(date +%s) - at)) s ago)"
    fi
    echo "$line"
}

start_node() {
    local i=$1 node="node$1" ns dir
    ns=$(node_ns "$node")
    dir="$(lab_dir)/nodes/$node"
    mkdir -p "$dir"
    if [ ! -e "/run/netns/$ns" ]; then
        record_netns "$ns"
        underlay_node "$ns" "$(underlay_ns)" "u$i" "198.18.0.$i"
    fi
    if pid_alive "$dir/supervise.pid"; then
        say "$node: tapestryd supervised ($(supervision "$dir"))"
    else
        # An agent whose supervisor is gone (killed) still holds the state
        # directory: stop it, and start the new one only once it is gone.
        stop_pidfile "$dir/tapestryd.pid" || die "$node: the old tapestryd (pid $(pidfile_pid "$dir/tapestryd.pid")) does not exit"
        stop_pidfile "$dir/tapestryd.logcap.pid" 1000 || true
        say "$node: starting tapestryd in namespace $ns (underlay 198.18.0.$i, pod subnet 10.244.$i.0/24), supervised"
        # nsenter, not `ip netns exec`: the agent must share the host's mount
        # namespace, or the pod namespaces its kubelet creates would be invisible.
        setsid nsenter --net="/run/netns/$ns" bash "$REPO/scripts/supervise.sh" "$dir" tapestryd -- \
            "$BIN/tapestryd" --node "$node" --store "$(store)" \
            --underlay-ip "198.18.0.$i" --pod-cidr "10.244.$i.0/24" --netns-prefix "$LAB" \
            --cluster-dns 10.96.0.10 \
            --state-dir "$dir" </dev/null >/dev/null 2>&1 &
        echo "$! $(proc_starttime $!)" >"$dir/supervise.pid"
    fi
    # Right after a kill the supervisor is starting a new agent: this waits for it.
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
    record_netns "$(underlay_ns)"
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

# Stops every process whose pid file is under $1, those that are still the
# process recorded (PID and start time).
kill_pidfiles() {
    local pidf
    for pidf in "$1"/*.pid; do
        [ -f "$pidf" ] && pidfile_signal TERM "$pidf"
    done
    for pidf in "$1"/*.pid; do
        [ -f "$pidf" ] || continue
        POLL_SLEEP=0.1 poll_until 3000 pid_gone "$pidf" || pidfile_signal KILL "$pidf"
    done
}

# lab_netns: every namespace the lab recorded as its own: the underlay's and
# the nodes' (netns.list), and the pods' (each pod directory's netns file).
lab_netns() {
    local dir pd
    dir=$(lab_dir)
    cat "$dir/netns.list" 2>/dev/null || true
    for pd in "$dir"/nodes/*/pods/*; do
        [ -f "$pd/netns" ] && cat "$pd/netns" && echo
    done
}

cmd_down() {
    need_root lab.sh
    local dir nd pd ns
    dir=$(lab_dir)
    # Supervisors first (each stops its agent and waits for it), then any agent
    # left, so that no kubelet restarts what is being removed.
    for nd in "$dir"/nodes/*; do
        [ -d "$nd" ] || continue
        stop_pidfile "$nd/supervise.pid" 5000 || true
        stop_pidfile "$nd/tapestryd.pid" || true
        stop_pidfile "$nd/tapestryd.logcap.pid" 1000 || true
    done
    for pd in "$dir"/nodes/*/pods/*; do
        [ -d "$pd" ] && kill_pidfiles "$pd"
    done
    # Exactly the namespaces the lab made, and the pods' resolv.conf files the
    # kubelets wrote under /etc/netns/NS.
    for ns in $(lab_netns | sort -u); do
        # Only names of this lab (a corrupt record must not reach further).
        case "$ns" in "$LAB"-*) ;; *) continue ;; esac
        if [ -e "/run/netns/$ns" ]; then ip netns del "$ns"; fi
        if [ -d "/etc/netns/$ns" ]; then rm -rf "/etc/netns/$ns"; fi
    done
    rm -rf "$dir"
    say "lab $LAB is down"
}

cmd_status() {
    local dir nd
    dir=$(lab_dir)
    [ -d "$dir/nodes" ] || die "lab $LAB is not up (no $dir)"
    for nd in "$dir"/nodes/*; do
        [ -d "$nd" ] || continue
        echo
        echo "${nd##*/}: $(supervision "$nd")"
        [ -S "$nd/tapestryd.sock" ] || continue
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
