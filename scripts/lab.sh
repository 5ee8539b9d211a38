#!/usr/bin/env bash
# Tapestry lab: a simulated Kubernetes cluster built from Linux network namespaces.
#
#   scripts/lab.sh up [--nodes N] [--manifests DIR] [--store dir|etcd]
#                                                     build, start N nodes (default 2), apply lab/pods
#                                                     and lab/services (or DIR instead of both); the
#                                                     store is a directory (dir, the default) or three
#                                                     etcd members on the underlay (etcd)
#   scripts/lab.sh down                               remove everything `up` made, and only that
#   scripts/lab.sh status                             agents (restarts), nodes and pods, with IPs and MACs
#   scripts/lab.sh exec POD [--] CMD...               run CMD inside POD's network namespace
#                                                     (POD is NAME, or NAMESPACE/NAME)
#   scripts/lab.sh demo                               the Kubernetes networking facts and NetworkPolicy, PASS or FAIL each
#   scripts/lab.sh bench [ARGS...]                    Tapestry beside the kernel's data plane
#                                                     (scripts/bench.sh ARGS; see bench.sh --help)
#   scripts/lab.sh tapestry ARGS...                   the tapestry CLI on the lab's store (in etcd mode
#                                                     run from the underlay's namespace)
#   scripts/lab.sh etcdctl ARGS...                    etcdctl on the lab's members (etcd mode), e.g.
#                                                     `lab.sh etcdctl get --prefix /tapestry/ --keys-only`
#
# Every command takes --name LAB (default: tapestry, or $TAPESTRY_LAB). Options go
# before or after the command (`lab.sh up --nodes 3` is `lab.sh --nodes 3 up`),
# as `--opt VALUE` or `--opt=VALUE`; an unknown option prints this and exits 2.
# In exec, the command starts after `--` (or at the first word after POD that is
# not an option) and is passed through whole; after bench, tapestry and etcdctl,
# every word is theirs. Every command but up works on the store the running lab
# was started with; up with another --store than the running lab's refuses.
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
# subnet 10.244.i.0/24. Pods reach addresses outside the cluster through their
# node (tapestryd --egress-via-host; the node forwards and masquerades them).
# The cluster store is the directory /run/tapestry/LAB/store (`tapestry --store`
# or TAPESTRY_STORE to reach it), or with --store etcd three etcd members, each
# in its own namespace LAB-etcdK on the underlay at 198.18.0.10K (K = 1..3), one
# cluster, data in /run/tapestry/LAB/etcd/etcdK, PID in etcd.pid, log etcd.log
# capped like the agents'; the agents, the DNS pods and the CLI get
# etcd://198.18.0.101:2379,198.18.0.102:2379,198.18.0.103:2379. The host has no
# address on the underlay: the bridge has 198.18.0.254 in LAB-underlay, where
# `lab.sh tapestry` and `lab.sh etcdctl` run (docs/deploy.md).
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
# dir (the default) or etcd; the running lab's is recorded in store.kind.
STORE_KIND=dir
ETCD_MEMBERS=3

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

underlay_ns() { echo "$LAB-underlay"; }

# --- the cluster store: a directory, or three etcd members on the underlay ---------

# etcd_ip K: member K's underlay address (198.18.0.101 upward).
etcd_ip() { echo "198.18.0.$((100 + $1))"; }
# etcd_endpoints [SCHEME]: every member's client address, comma-separated,
# HOST:PORT (or SCHEME://HOST:PORT).
etcd_endpoints() {
    local k out=""
    for k in $(seq 1 "$ETCD_MEMBERS"); do out+="${out:+,}${1:+$1://}$(etcd_ip "$k"):2379"; done
    echo "$out"
}
# store: what --store and TAPESTRY_STORE get.
store() {
    if [ "$STORE_KIND" = etcd ]; then echo "etcd://$(etcd_endpoints)"; else echo "$(lab_dir)/store"; fi
}
# The operator's seat in etcd mode: the underlay's bridge has 198.18.0.254, and
# the lab's own CLI and etcdctl calls run in the underlay namespace, where the
# members are reachable (the host itself gets no route into the lab).
OPERATOR_IP=198.18.0.254
etcdctl_lab() { ip netns exec "$(underlay_ns)" etcdctl --dial-timeout 2s --endpoints "$(etcd_endpoints http)" "$@"; }
all_members_healthy() { etcdctl_lab --command-timeout 3s endpoint health >/dev/null 2>&1; }

# start_etcd K: member K (etcdK) in namespace LAB-etcdK on the underlay, data in
# /run/tapestry/LAB/etcd/etcdK/data; a member already running is left alone, a
# dead one is started again on its data (it rejoins). Its PID is recorded in
# etcd.pid, its log capped by tapestry-logcap (etcd.log, 8 MiB plus one rotated).
start_etcd() {
    local k=$1 name="etcd$1" ns ip dir cluster="" j
    ns="$LAB-$name"
    ip=$(etcd_ip "$k")
    dir="$(lab_dir)/etcd/$name"
    mkdir -p "$dir"
    if [ ! -e "/run/netns/$ns" ]; then
        record_netns "$ns"
        underlay_node "$ns" "$(underlay_ns)" "e$k" "$ip"
    fi
    if pid_alive "$dir/etcd.pid"; then
        say "$name: running (pid $(pidfile_pid "$dir/etcd.pid"), $ip)"
        return 0
    fi
    stop_pidfile "$dir/etcd.logcap.pid" 1000 || true
    for j in $(seq 1 "$ETCD_MEMBERS"); do cluster+="${cluster:+,}etcd$j=http://$(etcd_ip "$j"):2380"; done
    say "$name: starting etcd in namespace $ns ($ip:2379)"
    # The log writer's PID is recorded by the shell that starts it; etcd then
    # replaces that shell (nsenter execs it), so etcd.pid names etcd itself.
    # shellcheck disable=SC2016 # expanded by the inner shell
    setsid bash -c 'source "$1"; exec > >(exec "$2" --max-bytes 8388608 "$3/etcd.log") 2>&1
        echo "$! $(proc_starttime $!)" >"$3/etcd.logcap.pid"; shift 3; exec "$@"' etcd-member \
        "$REPO/scripts/lib.sh" "$BIN/tapestry-logcap" "$dir" \
        nsenter --net="/run/netns/$ns" /usr/bin/etcd --name "$name" --data-dir "$dir/data" \
        --listen-client-urls "http://$ip:2379,http://127.0.0.1:2379" --advertise-client-urls "http://$ip:2379" \
        --listen-peer-urls "http://$ip:2380" --initial-advertise-peer-urls "http://$ip:2380" \
        --initial-cluster "$cluster" --initial-cluster-token "$LAB-etcd" --initial-cluster-state new \
        --auto-compaction-mode periodic --auto-compaction-retention 1h \
        --logger zap --log-outputs stderr </dev/null >/dev/null 2>&1 &
    echo "$! $(proc_starttime $!)" >"$dir/etcd.pid"
}

# etcd_up: the operator's address on the underlay, every member, and a bounded
# wait until all of them answer healthy.
etcd_up() {
    local k
    ip -n "$(underlay_ns)" -4 addr show dev br0 | grep -qF " $OPERATOR_IP/" ||
        ip -n "$(underlay_ns)" addr add "$OPERATOR_IP/24" dev br0
    for k in $(seq 1 "$ETCD_MEMBERS"); do start_etcd "$k"; done
    POLL_SLEEP=0.1 poll_until 30000 all_members_healthy || {
        etcdctl_lab endpoint health >&2 || true
        for k in $(seq 1 "$ETCD_MEMBERS"); do tail -n 5 "$(lab_dir)/etcd/etcd$k/etcd.log" >&2 || true; done
        die "the etcd members are not all healthy after 30 s"
    }
    say "etcd: $ETCD_MEMBERS members healthy after $POLL_MS ms ($(etcd_endpoints))"
}

# etcd_down: every member the lab recorded, stopped (its namespace and data go
# with the rest of the lab).
etcd_down() {
    local md
    for md in "$(lab_dir)"/etcd/*; do
        [ -d "$md" ] || continue
        stop_pidfile "$md/etcd.pid" 5000 || true
        stop_pidfile "$md/etcd.logcap.pid" 1000 || true
    done
}

# etcd_status: each member's process, then etcd's own view (status and health).
etcd_status() {
    local md
    echo
    for md in "$(lab_dir)"/etcd/*; do
        [ -d "$md" ] || continue
        if pid_alive "$md/etcd.pid"; then
            echo "${md##*/}: etcd pid $(pidfile_pid "$md/etcd.pid")"
        else
            echo "${md##*/}: etcd not running"
        fi
    done
    etcdctl_lab --command-timeout 3s endpoint status -w table 2>&1 || true
    etcdctl_lab --command-timeout 3s endpoint health 2>&1 || true
}

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
        # Pod egress the way flannel's nodes do it: tapestryd hands pods' packets
        # for outside addresses to the host port (--egress-via-host), and the
        # node forwards them with the pod source masqueraded to its own address.
        # The node's only link is the underlay: nothing leaves the lab.
        ip netns exec "$ns" sysctl -qw net.ipv4.ip_forward=1
        ip netns exec "$ns" iptables -t nat -A POSTROUTING -s 10.244.0.0/16 ! -d 10.244.0.0/16 -o eth0 -j MASQUERADE
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
            --cluster-dns 10.96.0.10 --egress-via-host \
            --state-dir "$dir" </dev/null >/dev/null 2>&1 &
        echo "$! $(proc_starttime $!)" >"$dir/supervise.pid"
    fi
    # Right after a kill the supervisor is starting a new agent: this waits for it.
    wait_agent "$dir/tapestryd.sock" || { tail -n 20 "$dir/tapestryd.log" >&2; die "$node: tapestryd did not answer on $dir/tapestryd.sock"; }
}

cmd_up() {
    need_root lab.sh
    ensure_commands "${LAB_COMMANDS[@]}"
    if [ "$STORE_KIND" = etcd ]; then ensure_commands "${ETCD_COMMANDS[@]}"; fi
    build
    local have
    if [ -f "$(lab_dir)/nodes.count" ]; then
        have=$(cat "$(lab_dir)/nodes.count")
        [ "$have" = "$NODES" ] || die "lab $LAB is up with $have node(s); run 'scripts/lab.sh down' before changing --nodes"
        have=$(recorded_store_kind)
        [ "$have" = "$STORE_KIND" ] || die "lab $LAB is up with --store $have; run 'scripts/lab.sh down' before changing --store"
    fi
    mkdir -p "$(lab_dir)"
    echo "$NODES" >"$(lab_dir)/nodes.count"
    echo "$STORE_KIND" >"$(lab_dir)/store.kind"
    record_netns "$(underlay_ns)"
    underlay_bridge "$(underlay_ns)"
    if [ "$STORE_KIND" = etcd ]; then etcd_up; else mkdir -p "$(lab_dir)/store"; fi
    for i in $(seq 1 "$NODES"); do
        start_node "$i"
    done
    say "applying ${MANIFESTS#"$REPO"/} ${SERVICES#"$REPO"/}"
    tapestry apply --store "$(store)" -f "$MANIFESTS"
    if [ -n "$SERVICES" ]; then tapestry apply --store "$(store)" -f "$SERVICES"; fi
    say "waiting for every pod to answer"
    tapestry wait --store "$(store)" --timeout 60
    cmd_status
    if [ "$STORE_KIND" = etcd ]; then
        echo
        say "the store is etcd at $(etcd_endpoints), reachable from the lab's underlay:"
        echo "    scripts/lab.sh --name $LAB tapestry get pods -A"
        echo "    scripts/lab.sh --name $LAB etcdctl get --prefix /tapestry/ --keys-only"
    fi
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
    etcd_down
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
    if [ "$STORE_KIND" = etcd ]; then etcd_status; fi
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

# cmd_tapestry ARGS…, cmd_etcdctl ARGS…: the CLI, or etcdctl, pointed at the
# running lab's store (in etcd mode, run from the underlay namespace).
cmd_tapestry() {
    [ -d "$(lab_dir)/nodes" ] || die "lab $LAB is not up: run 'scripts/lab.sh up' first"
    [ "$STORE_KIND" = dir ] || need_root lab.sh
    TAPESTRY_STORE=$(store) tapestry "$@"
}
cmd_etcdctl() {
    need_root lab.sh
    [ "$STORE_KIND" = etcd ] || die "lab $LAB does not keep its state in etcd (it was not started with --store etcd)"
    etcdctl_lab "$@"
}

# recorded_store_kind: the running lab's store kind (a lab from before store.kind: dir).
recorded_store_kind() { cat "$(lab_dir)/store.kind" 2>/dev/null || echo dir; }

# set_option NAME VALUE: one of lab.sh's options.
set_option() {
    case "$1" in
        --name) LAB=$2 ;;
        --nodes) NODES=$2 ;;
        --store)
            case "$2" in dir | etcd) STORE_KIND=$2 ;; *) usage_error "--store must be dir or etcd, not '$2'" ;; esac
            ;;
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
            --name | --nodes | --manifests | --store)
                [ $# -ge 2 ] || usage_error "$1 needs a value"
                set_option "$1" "$2"
                shift 2
                ;;
            --name=* | --nodes=* | --manifests=* | --store=*) set_option "${1%%=*}" "${1#*=}"; shift ;;
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
                    # bench's words are bench.sh's, tapestry's and etcdctl's theirs.
                    case "$CMD" in bench | tapestry | etcdctl) shift; ARGS=("$@"); return ;; esac
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
    # Every command but up works on the store the running lab was started with.
    if [ "$CMD" != up ] && [ -f "$(lab_dir)/store.kind" ]; then STORE_KIND=$(recorded_store_kind); fi
    # In etcd mode the lab's own CLI calls run where the members are reachable.
    if [ "$STORE_KIND" = etcd ]; then export TAPESTRY_NETNS=$LAB-underlay; fi
    case "$CMD" in
        up) cmd_up ;;
        down) cmd_down ;;
        status) cmd_status ;;
        exec) cmd_exec "${ARGS[@]}" ;;
        demo) cmd_demo ;;
        tapestry) cmd_tapestry "${ARGS[@]}" ;;
        etcdctl) cmd_etcdctl "${ARGS[@]}" ;;
        bench) exec bash "$REPO/scripts/bench.sh" "${ARGS[@]}" ;;
        help) usage ;;
        "") usage_error "no command given" ;;
        *) usage_error "unknown command '$CMD'" ;;
    esac
}

main "$@"
