#!/usr/bin/env bash
# The lab's demo: each Kubernetes networking fact, shown with real tools and
# judged PASS or FAIL. Called by `scripts/lab.sh demo` (which sets LAB, LAB_DIR,
# BIN and REPO); exits non-zero if any check fails.
set -uo pipefail

: "${LAB:?}" "${LAB_DIR:?}" "${BIN:?}" "${REPO:?}"
PASSED=0
FAILED=0

pass() { echo "PASS  $*"; PASSED=$((PASSED + 1)); }
fail() { echo "FAIL  $*"; FAILED=$((FAILED + 1)); }
show() { echo "  \$ $*"; }
indent() { sed 's/^/    /'; }

# Column of `tapestry get pods` for pod $1: 5 = IP, 6 = node.
pod_field() { "$BIN/tapestry" get pods | awk -v p="$1" -v c="$2" '$2 == p { print $c }'; }
pod_ip() { pod_field "$1" 5; }
pod_node() { pod_field "$1" 6; }
pod_dir() { echo "$LAB_DIR/nodes/$(pod_node "$1")/pods/default_$1"; }
in_pod() { local pod=$1; shift; ip netns exec "$LAB-default-$pod" "$@"; }
node_sock() { echo "$LAB_DIR/nodes/$1/tapestryd.sock"; }
counter() { # counter NODE NAME: one counter of the node's bridge
    "$BIN/tapestry" status --socket "$(node_sock "$1")" --counter "$2"
}

fact1() {
    echo
    echo "Fact 1: containers of one pod talk over localhost"
    echo "  Pod web-a is one network namespace ($LAB-default-web-a) held by a pause process;"
    echo "  its containers 'web' and 'sidecar' are processes started inside it."
    local d c pid
    d=$(pod_dir web-a)
    for c in pause web sidecar; do
        pid=$(cat "$d/$c.pid" 2>/dev/null || echo "?")
        echo "    $c: pid $pid, network namespace $(readlink "/proc/$pid/ns/net" 2>/dev/null || echo '?')"
    done
    echo "  The sidecar curls http://localhost:80/from-sidecar every 2 s; its log:"
    local line=""
    for _ in $(seq 1 50); do
        line=$(grep -m1 'pod=web-a.*path=/from-sidecar' "$d/sidecar.log" 2>/dev/null) && break
        sleep 0.1
    done
    echo "$line" | indent
    if [[ "$line" == *"pod=web-a"*"client=127.0.0.1"* ]]; then
        pass "fact 1: the sidecar reached the web container at localhost:80 (client 127.0.0.1)"
    else
        fail "fact 1: no answer from localhost:80 in the sidecar's log ($d/sidecar.log)"
    fi
    show "scripts/lab.sh exec web-a -- curl -s http://localhost/"
    local out
    out=$(in_pod web-a curl -s --max-time 3 http://localhost/ 2>&1)
    echo "$out" | indent
    if [[ "$out" == *"pod=web-a"* ]]; then
        pass "fact 1: a process in web-a got the web container's answer over localhost"
    else
        fail "fact 1: curl http://localhost/ in web-a did not answer"
    fi
}

fact2() {
    echo
    echo "Fact 2: pods on one node talk to each other, through Tapestry's bridge"
    local ip_b ip_c before after out
    ip_b=$(pod_ip web-b)
    ip_c=$(pod_ip client)
    echo "  client is $ip_c and web-b is $ip_b, both on node1: their eth0s are TAPs whose"
    echo "  other ends are ports of the bridge in node1's tapestryd."
    before=$(counter node1 forwarded)
    show "scripts/lab.sh exec client -- ping -c 3 $ip_b"
    out=$(in_pod client ping -c 3 -i 0.2 -W 2 "$ip_b" 2>&1)
    echo "$out" | indent
    if [[ "$out" == *" 0% packet loss"* ]]; then
        pass "fact 2: client pinged web-b ($ip_b), no loss"
    else
        fail "fact 2: ping client -> web-b ($ip_b) lost packets"
    fi
    show "scripts/lab.sh exec client -- curl -s http://$ip_b/"
    out=$(in_pod client curl -s --max-time 3 "http://$ip_b/" 2>&1)
    echo "$out" | indent
    if [[ "$out" == *"pod=web-b"*"client=$ip_c:"* ]]; then
        pass "fact 2: client's HTTP request was answered by web-b, which saw client's own IP"
    else
        fail "fact 2: curl client -> web-b ($ip_b) got no answer from web-b"
    fi
    after=$(counter node1 forwarded)
    echo "  node1 bridge 'forwarded' counter: $before -> $after"
    if [ "${after:-0}" -gt "${before:-0}" ]; then
        pass "fact 2: the frames crossed Tapestry's bridge (forwarded +$((after - before)))"
    else
        fail "fact 2: the bridge's forwarded counter did not move"
    fi
}

fact3() {
    echo
    echo "Fact 3: pods on different nodes talk to each other"
    local ip_c src_node remote=0 pod ip node out hops gw_src gw_dst
    ip_c=$(pod_ip client)
    src_node=$(pod_node client)
    gw_src="${ip_c%.*}.1"
    echo "  client ($ip_c) is on $src_node. A destination outside client's own /24 is not"
    echo "  on its link, so client falls back to its default gateway, $gw_src: the router"
    echo "  port in $src_node's tapestryd, which looks the /24 up and sends the packet to the"
    echo "  owning node inside VXLAN over the underlay (198.18.0.0/24)."
    while read -r pod ip node; do
        [ "$node" = "$src_node" ] && continue
        remote=$((remote + 1))
        gw_dst="${ip%.*}.1"
        echo
        echo "  -> $pod ($ip) on $node"
        show "scripts/lab.sh exec client -- ping -c 3 $ip"
        out=$(in_pod client ping -c 3 -i 0.2 -W 2 "$ip" 2>&1)
        echo "$out" | tail -n 2 | indent
        if [[ "$out" == *" 0% packet loss"* ]]; then
            pass "fact 3: client on $src_node pinged $pod on $node"
        else
            fail "fact 3: ping client -> $pod ($ip) on $node lost packets"
        fi
        show "scripts/lab.sh exec client -- curl -s http://$ip/"
        out=$(in_pod client curl -s --max-time 3 "http://$ip/" 2>&1)
        echo "$out" | indent
        if [[ "$out" == *"pod=$pod"*"node=$node"*"client=$ip_c:"* ]]; then
            pass "fact 3: $pod on $node answered client's HTTP request and saw client's own IP"
        else
            fail "fact 3: curl client -> $pod ($ip) got no answer from $pod"
        fi
        show "scripts/lab.sh exec client -- traceroute -n -q 1 -w 1 $ip"
        out=$(in_pod client traceroute -n -q 1 -w 1 "$ip" 2>&1)
        echo "$out" | indent
        hops=$(echo "$out" | awk 'NR > 1 { print $2 }' | tr '\n' ' ')
        if [ "$hops" = "$gw_src $gw_dst $ip " ]; then
            pass "fact 3: traceroute shows both gateways: $gw_src ($src_node), $gw_dst ($node), then $pod"
        else
            fail "fact 3: traceroute hops were '$hops', expected '$gw_src $gw_dst $ip'"
        fi
    done < <("$BIN/tapestry" get pods | awk 'NR > 1 && $2 ~ /^web-/ { print $2, $5, $6 }')
    if [ "$remote" -eq 0 ]; then
        fail "fact 3: no web pod runs on a node other than $src_node (bring the lab up with --nodes 2 or more)"
    fi
}

fact1
fact2
fact3
echo
echo "demo: $PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
