#!/usr/bin/env bash
# End-to-end checks against a real lab with a unique name, always torn down.
# Prints one PASS/FAIL line per check and closes with "e2e: N passed, M failed".
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LAB="e2e$$"
LAB=${LAB:0:12}
LABSH=("$REPO/scripts/lab.sh" --name "$LAB")
PASSED=0
FAILED=0

pass() { echo "PASS  $*"; PASSED=$((PASSED + 1)); }
fail() { echo "FAIL  $*"; FAILED=$((FAILED + 1)); }
check() { # check "what" CMD...: PASS if CMD succeeds
    local what=$1; shift
    if "$@"; then pass "$what"; else fail "$what"; fi
}

cleanup() {
    "${LABSH[@]}" down >/dev/null 2>&1 || true
}
trap cleanup EXIT INT TERM

lab_netns() { ip netns list | awk '{print $1}' | grep -E "^$LAB-" || true; }
lab_procs() { pgrep -f -- "/run/tapestry/$LAB/|$LAB-default-" || true; }
pod_ip() { cat "/run/tapestry/$LAB/pods/default_$1/ip"; }

if "${LABSH[@]}" up >"/tmp/$LAB-up.log" 2>&1; then
    pass "lab.sh up"
else
    fail "lab.sh up (log follows)"; cat "/tmp/$LAB-up.log"
fi
check "lab.sh demo passes facts 1 and 2" "${LABSH[@]}" demo

IP_B=$(pod_ip web-b)
check "exec: client pings web-b" "${LABSH[@]}" exec client -- ping -c 2 -i 0.2 -W 2 "$IP_B"
check "exec: client curls web-b and web-b answers" \
    bash -c "'${LABSH[0]}' --name $LAB exec client -- curl -s --max-time 3 http://$IP_B/ | grep -q pod=web-b"
check "exec: a pod pings its gateway (the router port)" "${LABSH[@]}" exec web-a -- ping -c 1 -W 2 10.244.1.1
check "node reaches its pods through the host port cbr0" ip netns exec "$LAB-node1" ping -c 1 -W 2 "$IP_B"
check "an address nobody owns gets no answer" bash -c "! '${LABSH[0]}' --name $LAB exec client -- ping -c 1 -W 1 10.244.1.200 >/dev/null"
check "pod MAC is derived from its IP" bash -c "ip -n $LAB-default-web-b link show eth0 | grep -q 'link/ether 0a:58:0a:f4:01:'"
check "pod eth0 is a TAP with the virtio-net header (vnet_hdr)" bash -c "ip -n $LAB-default-web-b -d link show eth0 | grep -q 'tap.*vnet_hdr'"
check "CNI CHECK of an attached pod succeeds" "$REPO/target/release/tapestry" cni check \
    --socket "/run/tapestry/$LAB/nodes/node1/tapestryd.sock" --container-id "$LAB-default-web-b" --netns "/run/netns/$LAB-default-web-b"

check "a second agent on the same state dir refuses to start" bash -c \
    "! ip netns exec $LAB-node1 '$REPO/target/release/tapestryd' --node node1 --pod-cidr 10.244.1.0/24 --state-dir /run/tapestry/$LAB/nodes/node1 2>/tmp/$LAB-second.err && grep -q 'already' /tmp/$LAB-second.err"
check "lab.sh up a second time is safe" "${LABSH[@]}" up
check "pods still answer after the second up" "${LABSH[@]}" exec client -- ping -c 1 -W 2 "$IP_B"

# Agent restart: persistent TAPs are reattached and traffic resumes.
AGENT_PID=$(cat "/run/tapestry/$LAB/nodes/node1/tapestryd.pid")
kill -TERM "$AGENT_PID"
for _ in $(seq 1 50); do kill -0 "$AGENT_PID" 2>/dev/null || break; sleep 0.1; done
check "pod eth0 survives the agent (persistent TAP)" ip -n "$LAB-default-web-b" link show eth0
check "lab.sh up restarts the agent" "${LABSH[@]}" up
check "traffic resumes after the agent restarts" "${LABSH[@]}" exec client -- curl -s --max-time 3 "http://$IP_B/"

"${LABSH[@]}" down >/dev/null 2>&1
check "down leaves no namespace of the lab" test -z "$(lab_netns)"
check "down leaves no process of the lab" test -z "$(lab_procs)"
check "down leaves no state directory" test ! -e "/run/tapestry/$LAB"

echo "e2e: $PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
