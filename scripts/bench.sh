#!/usr/bin/env bash
# Tapestry beside the Linux kernel's own data plane, measured in one run.
#
#   scripts/bench.sh [--reps N] [--seconds S] [--out DIR]     (also: scripts/lab.sh bench)
#
# Builds two clusters of the same shape, as root:
#   - Tapestry: a two-node lab (lab/bench: client bench-a and server bench-b on
#     node1, server bench-c on node2, Service `bench` in front of bench-c);
#   - the kernel reference: pods on veth into a Linux bridge per node, kernel
#     VXLAN between the nodes (flannel's layout), an iptables DNAT rule standing
#     in for the ClusterIP.
# Then measures both with iperf3 and ping, interleaved rep by rep so drift hits
# both: TCP throughput (same node, across nodes, through the ClusterIP), 64-byte
# UDP packet rate under a flood and at most 1% loss (same node, across nodes),
# round-trip latency (median, p99) and the CPU spent per gigabyte. Tapestry
# alone also measures TCP (same node, across nodes) between pods that 1,000
# NetworkPolicies select (namespace bench-policy), beside the same rows without
# policies, after a probe from a pod they do not allow has been turned away
# (the row is skipped, and the run fails, if it got through). Writes the
# raw samples, the table (stdout), JSON, Markdown and an SVG chart (through
# `tapestry-bench report`); docs/benchmarks.md gets the table. Cleans up on exit.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN="$REPO/target/release"
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$REPO/scripts/lib.sh"
REPS=3
SECONDS_PER_TEST=3
OUT="$REPO/target/bench"
LAB=tpbench
K=kbench # prefix of the kernel reference's namespaces

while [ $# -gt 0 ]; do
    case "$1" in
        --reps) REPS=${2:?}; shift 2 ;;
        --seconds) SECONDS_PER_TEST=${2:?}; shift 2 ;;
        --out) OUT=${2:?}; shift 2 ;;
        -h|--help) usage_of "${BASH_SOURCE[0]}"; exit 0 ;;
        *) usage_of "${BASH_SOURCE[0]}" >&2; echo "bench.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
need_root bench.sh

RAW="$OUT/raw.jsonl"
STEP=0
# The policy rows: 1,000 NetworkPolicies select the servers of POLICY_NS (see
# `tapestry-bench policies` and lab/bench/bench.yaml). The count is in the
# metrics' names, which the report knows, so it is fixed.
POLICIES=1000
POLICY_NS=bench-policy
PROBES_DENIED=0
PROBES_PASSED=0
TOTAL=$((REPS * (2 * 9 + 2)))
LOSSFREE_STEPS=6
LOSSFREE_SECONDS=2
progress() { STEP=$((STEP + 1)); printf '==> [%3d/%d] %s\n' "$STEP" "$TOTAL" "$*"; }

ensure_packages() {
    ensure_commands iperf3:iperf3 jq:jq ping:iputils-ping iptables:iptables protoc:protobuf-compiler
}

cleanup() {
    "$REPO/scripts/lab.sh" --name "$LAB" down >/dev/null 2>&1 || true
    kernel_down
}
trap cleanup EXIT INT TERM

# --- the kernel reference ----------------------------------------------------
# Built from lib.sh's flannel_* functions, the same that e2e.sh uses for the
# kernel VXLAN node it checks Tapestry against.
kernel_down() {
    local pidf ns
    for pidf in "$OUT"/kref-*.pid; do
        if [ -f "$pidf" ]; then kill "$(cat "$pidf")" 2>/dev/null || true; fi
        rm -f "$pidf"
    done
    for ns in $(netns_with_prefix "$K"); do
        ip netns del "$ns"
    done
}

# Two flannel nodes on their own underlay (198.19.0.0/24, pod subnets
# 10.245.i.0/24), pods a and b on node1, c on node2, and the ClusterIP 10.97.0.1
# in front of c.
kernel_up() {
    underlay_bridge "$K-underlay"
    flannel_node "$K-node1" "$K-underlay" u1 198.19.0.1 10.245.1 0e:00:00:00:00:01
    flannel_node "$K-node2" "$K-underlay" u2 198.19.0.2 10.245.2 0e:00:00:00:00:02
    flannel_peer "$K-node1" 10.245.2 0e:00:00:00:00:02 198.19.0.2
    flannel_peer "$K-node2" 10.245.1 0e:00:00:00:00:01 198.19.0.1
    flannel_pod "$K-a" "$K-node1" 10.245.1 2
    flannel_pod "$K-b" "$K-node1" 10.245.1 3
    flannel_pod "$K-c" "$K-node2" 10.245.2 2
    kube_proxy_dnat "$K-node1" 10.97.0.1 5201 10.245.2.2
    ip netns exec "$K-b" iperf3 -s -D -p 5201 --pidfile "$OUT/kref-b.pid"
    ip netns exec "$K-c" iperf3 -s -D -p 5201 --pidfile "$OUT/kref-c.pid"
}

# --- measurements --------------------------------------------------------------
record() { # record SYSTEM METRIC UNIT VALUE REP
    printf '{"system":"%s","metric":"%s","unit":"%s","value":%s,"rep":%s}\n' "$1" "$2" "$3" "$4" "$5" >>"$RAW"
}

busy_jiffies() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat; }

server_answers() { ip netns exec "$1" bash -c "exec 3<>/dev/tcp/$2/5201" 2>/dev/null; }
# Polls (bounded: 5 s, or $3 ms) until an iperf3 server answers at $2:5201 from namespace $1.
wait_server() {
    POLL_SLEEP=0.1 poll_until "${3:-5000}" server_answers "$1" "$2" && return 0
    echo "bench.sh: no iperf3 server at $2:5201 from $1" >&2
    return 1
}

# probe_denied NS IP: whether a TCP connection from namespace NS to IP:5201 gets
# no answer within 1 s, as a connection a policy denies does (the SYN is
# dropped, not reset). Sets PROBE to what happened, for the log.
probe_denied() {
    local rc=0
    timeout 1 ip netns exec "$1" bash -c "exec 3<>/dev/tcp/$2/5201" 2>/dev/null || rc=$?
    case $rc in
        0) PROBE="connected"; return 1 ;;
        124) PROBE="no answer in 1 s"; return 0 ;;
        *) PROBE="failed at once (exit $rc: refused or unreachable, not a policy drop)"; return 1 ;;
    esac
}

# tcp SYSTEM CLIENT_NS DST METRIC REP [CPU_METRIC]
tcp() {
    local sys=$1 ns=$2 dst=$3 metric=$4 rep=$5 cpu_metric=${6:-} before after json gbps bytes dp_cpu
    progress "rep $rep/$REPS $sys: $metric"
    before=$(busy_jiffies)
    json=$(ip netns exec "$ns" iperf3 -c "$dst" -p 5201 -t "$SECONDS_PER_TEST" -J)
    after=$(busy_jiffies)
    gbps=$(jq '.end.sum_received.bits_per_second / 1e9' <<<"$json")
    record "$sys" "$metric" "Gbit/s" "$gbps" "$rep"
    if [ -n "$cpu_metric" ]; then
        # CPU time of the whole machine (both cores: iperf3 at both ends, the
        # kernel's work, tapestryd) per gigabyte received. iperf3's share is the
        # same for both systems, so the difference is the data plane's; the
        # kernel's forwarding runs inside iperf3's system calls and softirqs, so
        # it cannot be separated from iperf3's own time any more precisely.
        bytes=$(jq '.end.sum_received.bytes' <<<"$json")
        dp_cpu=$(awk -v a="$after" -v b="$before" -v g="$bytes" 'BEGIN { printf "%.4f", (a - b) / 100 / (g / 1e9) }')
        record "$sys" "$cpu_metric" "CPU s/GB" "$dp_cpu" "$rep"
    fi
}

# udp SYSTEM CLIENT_NS DST METRIC REP: 64-byte datagrams as fast as iperf3 sends
# (a flood); sets FLOOD_SENT_PPS (the rate the sender reached), FLOOD_GOT_PPS and
# FLOOD_LOSS (percent) for udp_lossfree.
udp() {
    local sys=$1 ns=$2 dst=$3 metric=$4 rep=$5 json pps
    progress "rep $rep/$REPS $sys: $metric"
    json=$(ip netns exec "$ns" iperf3 -c "$dst" -p 5201 -u -l 64 -b 0 -t "$SECONDS_PER_TEST" -J)
    pps=$(jq '(.end.sum.packets - .end.sum.lost_packets) / .end.sum.seconds' <<<"$json")
    FLOOD_SENT_PPS=$(jq '.end.sum.packets / .end.sum.seconds | floor' <<<"$json")
    FLOOD_GOT_PPS=$pps
    FLOOD_LOSS=$(jq '.end.sum.lost_percent' <<<"$json")
    record "$sys" "$metric" "packets/s" "$pps" "$rep"
}

# udp_lossfree SYSTEM CLIENT_NS DST METRIC REP: the highest rate of 64-byte
# datagrams that arrives with at most 1% loss (RFC 2544's "throughput", with
# iperf3 as the tester). The flood just before is the first trial: if it lost
# at most 1%, the sender itself is the limit and its rate is the answer.
# Otherwise bisects the offered rate between 0 and what the sender reached,
# LOSSFREE_STEPS trials of LOSSFREE_SECONDS each, and records the received
# rate of the best passing trial. `tapestry-bench lossfree` decides each step
# from the trials so far; this runs them.
udp_lossfree() {
    local sys=$1 ns=$2 dst=$3 metric=$4 rep=$5 trials step rate json loss got i=0
    progress "rep $rep/$REPS $sys: $metric"
    trials="$FLOOD_SENT_PPS $FLOOD_LOSS $FLOOD_GOT_PPS"
    while step=$("$BIN/tapestry-bench" lossfree --steps "$LOSSFREE_STEPS" --max-loss 1 <<<"$trials") &&
        [ "${step%% *}" = "next" ]; do
        rate=${step#next }
        i=$((i + 1))
        # iperf3's -b counts payload bits: 64 bytes = 512 bits a datagram.
        json=$(ip netns exec "$ns" iperf3 -c "$dst" -p 5201 -u -l 64 -b $((rate * 512)) -t "$LOSSFREE_SECONDS" -J)
        loss=$(jq '.end.sum.lost_percent' <<<"$json")
        got=$(jq '(.end.sum.packets - .end.sum.lost_packets) / .end.sum.seconds' <<<"$json")
        trials+=$'\n'"$rate $loss $got"
        printf '      trial %d: offered %d pps, %s%% lost\n' "$i" "$rate" "$loss"
    done
    [ "${step%% *}" = "done" ] || { echo "bench.sh: tapestry-bench lossfree failed" >&2; return 1; }
    if [ "$i" -eq 0 ]; then printf '      the flood lost %s%%: its rate stands\n' "$FLOOD_LOSS"; fi
    record "$sys" "$metric" "packets/s" "${step#done }" "$rep"
}

# latency SYSTEM CLIENT_NS DST WHERE REP: 300 pings 2 ms apart; median and p99 RTT
latency() {
    local sys=$1 ns=$2 dst=$3 where=$4 rep=$5 rtts pcts p50 p99
    progress "rep $rep/$REPS $sys: latency_$where"
    rtts=$(ip netns exec "$ns" ping -c 300 -i 0.002 -W 1 "$dst" | sed -n 's/.*time=\([0-9.]*\) ms.*/\1/p' | sort -n)
    # Nearest-rank percentiles, milliseconds to microseconds.
    pcts=$("$BIN/tapestry-bench" percentile --scale 1000 --decimals 1 50 99 <<<"$rtts")
    read -r p50 p99 <<<"$pcts"
    record "$sys" "latency_p50_$where" "us" "$p50" "$rep"
    record "$sys" "latency_p99_$where" "us" "$p99" "$rep"
}

# --- the policy rows ----------------------------------------------------------
node_status() { tapestry status --socket "/run/tapestry/$LAB/nodes/$1/tapestryd.sock" "${@:2}"; }
# policy_denied NODE: NODE's count of packets dropped by policy.
policy_denied() { node_status "$1" --counter policy_denied; }

# Applies the policies and waits (bounded) until the client reaches both servers
# through them and the intruder is turned away. Sets PC_NS, PI_NS (client and
# intruder namespaces), PS_SAME_NODE and PS_CROSS_NODE (the servers' addresses).
policies_up() {
    PC_NS="$LAB-$POLICY_NS-client"
    PI_NS="$LAB-$POLICY_NS-intruder"
    PS_SAME_NODE=$(pod_ip server "$POLICY_NS")
    PS_CROSS_NODE=$(pod_ip server-remote "$POLICY_NS")
    echo "==> applying $POLICIES NetworkPolicies that select the servers of $POLICY_NS"
    "$BIN/tapestry-bench" policies --count "$POLICIES" --namespace "$POLICY_NS" --port 5201 >"$OUT/policies.yaml"
    local t0
    t0=$(now_ms)
    tapestry apply -f "$OUT/policies.yaml" >"$OUT/policies-apply.log"
    echo "    applied in $(($(now_ms) - t0)) ms"
    # The agents compile them as they arrive, the client's allow last: the client
    # may be turned away for a while before it.
    wait_server "$PC_NS" "$PS_SAME_NODE" 60000
    wait_server "$PC_NS" "$PS_CROSS_NODE" 60000
    echo "    the client reaches both servers $(($(now_ms) - t0)) ms after the apply began"
    if POLL_SLEEP=0.1 poll_until 10000 probe_denied "$PI_NS" "$PS_SAME_NODE"; then
        echo "    the intruder is turned away: $PROBE"
    else
        echo "    WARNING: the intruder still reaches $PS_SAME_NODE:5201 after 10 s ($PROBE): policy is not enforced" >&2
    fi
    local node
    for node in node1 node2; do
        echo "    $node: $(node_status "$node" -o json | jq '.policy_denials | length') policies select its pods"
    done
}

# policy_row WHERE REP: the probe, then TCP from the client to the server
# WHERE (same_node, cross_node) through the policies, if the probe was denied:
# no answer, and the server node's count of packets dropped by policy rose.
policy_row() {
    local where=$1 rep=$2 dst metric node before after
    metric="tcp_${where}_policy$POLICIES"
    if [ "$where" = same_node ]; then dst=$PS_SAME_NODE node=node1; else dst=$PS_CROSS_NODE node=node2; fi
    before=$(policy_denied "$node")
    if probe_denied "$PI_NS" "$dst" && after=$(policy_denied "$node") && [ "$after" -gt "$before" ]; then
        PROBES_DENIED=$((PROBES_DENIED + 1))
        echo "      probe intruder -> $dst:5201: $PROBE, $node's policy drops $before -> $after (denied)"
        tcp tapestry "$PC_NS" "$dst" "$metric" "$rep"
    else
        PROBES_PASSED=$((PROBES_PASSED + 1))
        progress "rep $rep/$REPS tapestry: $metric SKIPPED: probe intruder -> $dst:5201: $PROBE, $node's policy drops $before -> ${after:-?}: the path is not policed"
    fi
}

# tcp_beside_policy A DST WHERE REP: Tapestry's row WHERE without policies
# (pod A to DST) and its policy row, in an order that alternates by rep.
tcp_beside_policy() {
    local a=$1 dst=$2 where=$3 rep=$4
    if [ $((rep % 2)) -eq 0 ]; then policy_row "$where" "$rep"; fi
    tcp tapestry "$a" "$dst" "tcp_$where" "$rep" "cpu_s_per_gb_tcp_$where"
    if [ $((rep % 2)) -eq 1 ]; then policy_row "$where" "$rep"; fi
}

run_system() { # run_system SYSTEM REP
    local sys=$1 rep=$2 a b c vip
    if [ "$sys" = tapestry ]; then
        a="$LAB-default-bench-a"; b=$(pod_ip bench-b); c=$(pod_ip bench-c)
        vip=$(svc_ip bench)
    else
        a="$K-a"; b=10.245.1.3; c=10.245.2.2; vip=10.97.0.1
    fi
    if [ "$sys" = tapestry ]; then
        tcp_beside_policy "$a" "$b" same_node "$rep"
        tcp_beside_policy "$a" "$c" cross_node "$rep"
    else
        tcp "$sys" "$a" "$b" tcp_same_node "$rep" cpu_s_per_gb_tcp_same_node
        tcp "$sys" "$a" "$c" tcp_cross_node "$rep" cpu_s_per_gb_tcp_cross_node
    fi
    tcp "$sys" "$a" "$vip" tcp_cluster_ip "$rep"
    udp "$sys" "$a" "$b" udp64_pps_same_node "$rep"
    udp_lossfree "$sys" "$a" "$b" udp64_lossfree_same_node "$rep"
    udp "$sys" "$a" "$c" udp64_pps_cross_node "$rep"
    udp_lossfree "$sys" "$a" "$c" udp64_lossfree_cross_node "$rep"
    latency "$sys" "$a" "$b" same_node "$rep"
    latency "$sys" "$a" "$c" cross_node "$rep"
}

machine() {
    local cpu
    cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
    echo "$(nproc) cores (${cpu:-unknown CPU}), $(free -g | awk '/^Mem:/ { print $2 }') GiB, Linux $(uname -r)"
}

main() {
    local started rep sys
    started=$(date +%s)
    ensure_packages
    mkdir -p "$OUT"
    : >"$RAW"
    kernel_down
    (cd "$REPO" && cargo build --release --quiet --bin tapestry-bench)
    echo "==> building Tapestry's lab ($LAB, 2 nodes) and the kernel reference ($K-*)"
    export TAPESTRY_STORE="/run/tapestry/$LAB/store"
    "$REPO/scripts/lab.sh" --name "$LAB" down >/dev/null 2>&1 || true
    "$REPO/scripts/lab.sh" --name "$LAB" --nodes 2 --manifests "$REPO/lab/bench" up >"$OUT/lab-up.log" 2>&1 ||
        { tail -n 30 "$OUT/lab-up.log" >&2; exit 1; }
    kernel_up
    wait_server "$K-a" 10.245.1.3
    wait_server "$K-a" 10.245.2.2
    wait_server "$LAB-default-bench-a" "$(pod_ip bench-b)"
    wait_server "$LAB-default-bench-a" "$(pod_ip bench-c)"
    policies_up
    for rep in $(seq 1 "$REPS"); do
        # Alternate which system goes first, so neither always runs on a warmer machine.
        if [ $((rep % 2)) -eq 1 ]; then sys="tapestry kernel"; else sys="kernel tapestry"; fi
        for s in $sys; do run_system "$s" "$rep"; done
    done
    echo "==> report ($(($(date +%s) - started)) s so far)"
    "$BIN/tapestry-bench" report --raw "$RAW" --out-dir "$OUT" \
        --title "Tapestry vs the Linux kernel data plane" --machine "$(machine)"
    echo "==> policy probes (intruder -> servers): $PROBES_DENIED denied, $PROBES_PASSED got through"
    if [ "$PROBES_PASSED" -gt 0 ]; then
        echo "bench.sh: policy was not enforced for $PROBES_PASSED probe(s); those policy rows were skipped, and docs/ is left as it was" >&2
        exit 1
    fi
    cp "$OUT/benchmarks.json" "$OUT/benchmarks.svg" "$REPO/docs/"
    update_doc
    echo "==> done in $(($(date +%s) - started)) s: $OUT/{raw.jsonl,benchmarks.json,benchmarks-table.md,benchmarks.svg}, docs/benchmarks.md"
}

# Replaces the table between the markers in docs/benchmarks.md.
update_doc() {
    local doc="$REPO/docs/benchmarks.md"
    [ -f "$doc" ] || return 0
    awk -v table="$OUT/benchmarks-table.md" '
        /<!-- table:start -->/ { print; while ((getline line < table) > 0) print line; skip = 1; next }
        /<!-- table:end -->/ { skip = 0 }
        !skip { print }' "$doc" >"$doc.new"
    mv "$doc.new" "$doc"
}

main
