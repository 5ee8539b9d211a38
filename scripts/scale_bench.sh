#!/usr/bin/env bash
# Scale benchmark: per object, how long from its write to the cluster store
# until every agent's route table and service table and every cluster DNS
# server reflect it, for the directory store and etcd side by side.
#
#   scripts/scale_bench.sh [--pods N] [--services M] [--nodes K] [--stores "dir etcd"]
#                          [--poll-ms MS] [--out DIR]
#
# Defaults: 1000 pods, 100 services, 5 nodes (a node's /24 holds 252 pods),
# both stores, 10 ms polls, results in target/scale-bench. For each store in
# turn it builds a lab of its own (lab.sh --name sc<PID><d|e>, with only the
# cluster DNS pods and Service: lab/scale-bench), runs tapestry-scale in
# node1's namespace (it reaches the agents' sockets, the DNS pods and, in etcd
# mode, the members on the underlay), then tears the lab down, also on
# failure. tapestry-scale writes the Services, then the pods (one idle
# container each, `sleep infinity`, nodeName round-robin) as fast as the store
# takes them, and polls every consumer for the store revision it reflects
# (`tapestry status`'s routes/services revision, DNS TXT
# tapestry-revision.cluster.local); see benches/src/bin/tapestry-scale.
# Prints a table per store and both side by side; writes DIR/STORE.json and
# DIR/summary.txt. Needs root. Not part of scripts/test.sh.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$REPO/scripts/lib.sh"

PODS=1000
SERVICES=100
NODES=5
STORES="dir etcd"
POLL_MS=10
OUT="$REPO/target/scale-bench"
BIN="$REPO/target/release"

usage() { usage_of "${BASH_SOURCE[0]}"; }
die() { echo "scale_bench.sh: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
    case "$1" in
        --pods) PODS=$2; shift 2 ;;
        --services) SERVICES=$2; shift 2 ;;
        --nodes) NODES=$2; shift 2 ;;
        --stores) STORES=$2; shift 2 ;;
        --poll-ms) POLL_MS=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument '$1'" ;;
    esac
done
for n in "$PODS" "$SERVICES" "$NODES" "$POLL_MS"; do
    [[ "$n" =~ ^[0-9]+$ ]] || die "not a number: '$n'"
done
[ "$NODES" -ge 1 ] || die "--nodes must be at least 1"
[ $((PODS / NODES)) -le 250 ] || die "$PODS pods on $NODES nodes is over 250 a node (a /24 each, beside the DNS pods): give more --nodes"
need_root scale_bench.sh
mkdir -p "$OUT"

echo "==> building (release)"
(cd "$REPO" && cargo build --release --quiet --bin tapestry-scale)

LABS=()
cleanup() {
    local lab
    for lab in "${LABS[@]}"; do
        bash "$REPO/scripts/lab.sh" --name "$lab" down >/dev/null 2>&1 || echo "scale_bench.sh: lab $lab: down failed" >&2
    done
}
trap cleanup EXIT

run_store() {
    local kind=$1 lab store args=() i
    lab="sc$$${kind:0:1}"
    LABS+=("$lab")
    echo "==> $kind: lab $lab, $NODES nodes (load: $(cut -d' ' -f1-3 /proc/loadavg))"
    bash "$REPO/scripts/lab.sh" --name "$lab" --nodes "$NODES" --store "$kind" \
        --manifests "$REPO/lab/scale-bench" up >"$OUT/$kind.lab.log" 2>&1 ||
        { tail -n 30 "$OUT/$kind.lab.log" >&2; die "$kind: lab up failed"; }
    if [ "$kind" = etcd ]; then
        store="etcd://198.18.0.101:2379,198.18.0.102:2379,198.18.0.103:2379"
    else
        store="/run/tapestry/$lab/store"
    fi
    for i in $(seq 1 "$NODES"); do
        args+=(--agent "/run/tapestry/$lab/nodes/node$i/tapestryd.sock" --node "node$i")
    done
    echo "==> $kind: writing $SERVICES services and $PODS pods (load: $(cut -d' ' -f1-3 /proc/loadavg))"
    ip netns exec "$lab-node1" "$BIN/tapestry-scale" --store "$store" "${args[@]}" \
        --dns-pod kube-system/tapestry-dns-1 --dns-pod kube-system/tapestry-dns-2 \
        --pods "$PODS" --services "$SERVICES" --poll-ms "$POLL_MS" \
        --label "$kind" --json "$OUT/$kind.json" | tee "$OUT/$kind.txt"
    echo "==> $kind: done (load: $(cut -d' ' -f1-3 /proc/loadavg)); tearing $lab down"
    bash "$REPO/scripts/lab.sh" --name "$lab" down >/dev/null 2>&1 || echo "scale_bench.sh: lab $lab: down failed" >&2
}

for kind in $STORES; do
    case "$kind" in dir | etcd) run_store "$kind" ;; *) die "--stores: dir or etcd, not '$kind'" ;; esac
done

# Side by side: one row per object and consumer kind, p50/p99 per store.
files=()
for kind in $STORES; do files+=("$OUT/$kind.json"); done
{
    echo "$PODS pods, $SERVICES services, $NODES nodes, polls every $POLL_MS ms; $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
    jq -rs '
        . as $runs
        | ["object", "consumer"] + ($runs | map(.label + "_p50_ms", .label + "_p99_ms")),
          ( $runs[0].rows[] as $r
            | [$r.object, $r.consumer]
              + ($runs | map( (.rows[] | select(.object == $r.object and .consumer == $r.consumer))
                              | (.p50_ms, .p99_ms | if . == null then "-" else (. * 10 | round / 10 | tostring) end) )) )
        | @tsv' "${files[@]}" | column -t
} | tee "$OUT/summary.txt"
