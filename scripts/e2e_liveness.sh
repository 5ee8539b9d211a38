#!/usr/bin/env bash
# Sourced by e2e.sh: node liveness (issue 12, item 3). node3's supervisor and
# agent are killed with -9, so nothing renews its lease (nodeleases/node3): within
# 10 s of the kill `tapestry get nodes` must show it NotReady, node1's agent must
# have withdrawn its route, the `web` Service's endpoints must have lost its pod
# (and 12 requests to the ClusterIP all be answered), and cluster DNS must no
# longer answer the headless `web-pods` with it. Each prints the time from the
# kill. `lab.sh up` then starts node3 again: Ready, the same subnet, its pod back
# in endpoints and DNS. Last, `delete node`: refused while node3 is Ready; once it
# is dead, it removes the Node, its subnet lease, pod IPs and liveness lease, and
# node3 can join again. LIVENESS_STEPS lists the steps in order.

LV_NODE=node3
lv_dir() { echo "/run/tapestry/$LAB/nodes/$LV_NODE"; }
# node_status NODE: NODE's STATUS column in `tapestry get nodes`.
node_status() { tapestry get nodes | awk -v n="$1" '$1 == n { print $2 }'; }
node_subnet() { objects nodes | jq -r --arg n "$1" 'select(.metadata.name == $n) | .spec.podCIDR // empty'; }
# n1_routes_to SUBNET: node1's agent has a route to SUBNET (`tapestry status`).
n1_routes_to() { tapestry status --socket "$N1SOCK" | grep -q "^$1 "; }
lv_since_kill() { echo $(($(now_ms) - LV_KILLED)); }
# in_10s MS: MS is a measured time (not "never") of at most 10 s.
in_10s() { [ "$1" != never ] && [ "$1" -le 10000 ]; }
# lv_kill: kill -9 node3's supervisor and agent; LV_KILLED is when.
lv_kill() {
    local d
    d=$(lv_dir)
    LV_KILLED=$(now_ms)
    kill -KILL "$(pidfile_pid "$d/supervise.pid")" "$(pidfile_pid "$d/tapestryd.pid")" 2>/dev/null
}
lv_is() { [ "$(node_status "$LV_NODE")" = "$1" ]; }

setup_node_loss() {
    VIP=$(svc_ip web)
    LV_WEB=$(web_on "$LV_NODE")
    LV_IP=$(pod_ip "$LV_WEB")
    LV_SUBNET=$(node_subnet "$LV_NODE")
    echo "      $LV_NODE ($LV_SUBNET) runs $LV_WEB ($LV_IP); web's endpoints: $(ready_ips web)" >&2
    lv_kill
}
check_node_not_ready() {
    local ms=never
    if POLL_SLEEP=0.1 poll_until 15000 lv_is NotReady; then ms=$(lv_since_kill); fi
    echo "      kill -9 of $LV_NODE's supervisor and agent to NotReady in tapestry get nodes: $ms ms"
    tapestry get nodes | sed 's/^/      /'
    verdict "a node whose agent dies is NotReady within 10 s ($ms ms)" in_10s "$ms"
}
lv_route_gone() { ! n1_routes_to "$LV_SUBNET"; }
check_node_route_withdrawn() {
    local ms=never
    if POLL_SLEEP=0.1 poll_until 15000 lv_route_gone; then ms=$(lv_since_kill); fi
    tapestry status --socket "$N1SOCK" | grep "nodes/$LV_NODE" | sed 's/^/      node1 PROBLEMS: /'
    verdict "node1's agent withdraws the dead node's route to $LV_SUBNET within 10 s of the kill ($ms ms)" in_10s "$ms"
}
# All of 12 requests to web's ClusterIP from the client are answered.
vip_all_answer() {
    local _
    for _ in $(seq 1 12); do
        in_pod client curl -s --max-time 2 "http://$VIP/" 2>/dev/null | grep -q '^pod=web-' || return 1
    done
}
lv_shrunk() { in_10s "$1" && vip_all_answer; }
lv_not_endpoint() { ! grep -qw -- "$LV_IP" <<<"$(ready_ips web)"; }
check_node_endpoints_shrink() {
    local ms=never
    if POLL_SLEEP=0.1 poll_until 15000 lv_not_endpoint; then ms=$(lv_since_kill); fi
    echo "      web's endpoints without $LV_WEB after $ms ms: $(ready_ips web)"
    verdict "the dead node's pod leaves web's endpoints within 10 s ($ms ms), and 12 requests to the ClusterIP all answer" \
        lv_shrunk "$ms"
}
headless_answer() { in_pod client dig +short +tries=1 +time=1 web-pods.default.svc.cluster.local 2>/dev/null | one_line; }
lv_not_in_dns() {
    local a
    a=$(headless_answer)
    [ -n "$a" ] && [[ "$a" != *";"* ]] && ! grep -qw -- "$LV_IP" <<<"$a"
}
check_node_dns_drops_pods() {
    local ms=never
    if POLL_SLEEP=0.2 poll_until 15000 lv_not_in_dns; then ms=$(lv_since_kill); fi
    echo "      dig web-pods after $ms ms: $(headless_answer)"
    verdict "DNS stops answering the headless web-pods with the dead node's pod within 10 s ($ms ms)" in_10s "$ms"
}
lv_back() {
    lv_is Ready && n1_routes_to "$LV_SUBNET" && grep -qw -- "$LV_IP" <<<"$(ready_ips web)" &&
        grep -qw -- "$LV_IP" <<<"$(headless_answer)"
}
check_node_back() {
    local t0 up_ok=yes subnet
    t0=$(now_ms)
    quiet lab --nodes 3 up || up_ok=no
    POLL_SLEEP=0.1 poll_until 20000 lv_back
    subnet=$(node_subnet "$LV_NODE")
    echo "      lab.sh up (ok: $up_ok) to $LV_NODE Ready, routed, $LV_WEB back in endpoints and DNS: $(($(now_ms) - t0)) ms; subnet $subnet"
    verdict "the node comes back Ready with the same subnet ($subnet), routed again, its pod back in endpoints and DNS and answering" \
        lv_back_judged "$POLL_MS" "$subnet"
}
lv_back_judged() { [ -n "$1" ] && [ "$2" = "$LV_SUBNET" ] && quiet lab exec client -- curl -s --max-time 2 "http://$LV_IP/"; }
delete_refused() {
    local rc=0
    tapestry delete node "$LV_NODE" >/dev/null 2>"$TMP/del-live.err" || rc=$?
    sed 's/^/      /' "$TMP/del-live.err"
    [ "$rc" -ne 0 ] && grep -q "is Ready" "$TMP/del-live.err" && lv_is Ready
}
check_delete_live_node_refused() {
    verdict "delete node of a Ready node is refused (its agent would register it again), and the node stays" delete_refused
}
key_file() { echo "$STORE_DIR/keys/k-${1//\//%2F}"; }
delete_dead_node() {
    local out
    lv_kill
    POLL_SLEEP=0.1 poll_until 15000 lv_is NotReady || return 1
    out=$(tapestry delete node "$LV_NODE") || return 1
    echo "      ${out//$'\n'/$'\n'      }"
    grep -q "subnet lease released: $LV_SUBNET" <<<"$out" &&
        [ -z "$(node_status "$LV_NODE")" ] &&
        [ ! -e "$(key_file "leases/${LV_SUBNET/\//-}")" ] &&
        [ ! -e "$(key_file "nodeleases/$LV_NODE")" ] &&
        ! compgen -G "$(key_file "ips/$LV_NODE/")*" >/dev/null &&
        lv_route_gone
}
check_delete_dead_node() {
    verdict "delete node of a dead node removes it, its subnet lease, pod IPs and liveness lease; node1 has no route to it" delete_dead_node
}
lv_rejoined() { lv_is Ready && n1_routes_to "$LV_SUBNET"; }
check_deleted_node_rejoins() {
    quiet lab --nodes 3 up
    POLL_SLEEP=0.1 poll_until 20000 lv_rejoined
    echo "      after lab.sh up: $(tapestry get nodes | awk -v n="$LV_NODE" '$1 == n')"
    verdict "a deleted node's agent, started again, registers it anew and is routed ($(node_subnet "$LV_NODE")); its reattached pod's address is claimed again" \
        lv_rejoin_judged "$POLL_MS"
}
lv_rejoin_judged() {
    [ -n "$1" ] && [ -e "$(key_file "leases/${LV_SUBNET/\//-}")" ] && [ -e "$(key_file "ips/$LV_NODE/$LV_IP")" ]
}

# shellcheck disable=SC2034 # read by e2e.sh
LIVENESS_STEPS=(
    setup_node_loss check_node_not_ready check_node_route_withdrawn check_node_endpoints_shrink
    check_node_dns_drops_pods check_node_back
    check_delete_live_node_refused check_delete_dead_node check_deleted_node_rejoins
)
