#!/usr/bin/env bash
# Sourced by e2e.sh: restart without loss (issue 11, item 1). Long-lived TCP
# conversations (scripts/conversation.py) run from the client pod on node1, pod to
# pod and through a ClusterIP, client first and server first, while each node's
# tapestryd is killed with -9 and started again; on node1 (where the client's
# flows are balanced) the service's endpoints change while its agent is down.
# None may be lost; each case prints its longest stall. The time from the
# restarted agent's start to the first packet it forwards (a ping every 2 ms
# from the client across node1) is measured and must be under 200 ms.
# Then node1's agent is upgraded without a gap (`tapestryd --upgrade` through its
# supervisor) under the same conversations: the longest ping gap is the stall
# (at most 50 ms) and no TAP may be closed. RESTART_STEPS lists the steps in order.

CONV_PY="$REPO/scripts/conversation.py"
# The cases: NAME TARGET PORT MODE CONNECTIONS (TARGET: conv-2's address or the ClusterIP).
CONV_CASES=(
    "pod-to-pod,client-first p2p 7001 client-first 2"
    "pod-to-pod,server-first p2p 7002 server-first 2"
    "clusterip,client-first vip 7001 client-first 8"
    "clusterip,server-first vip 7002 server-first 8"
)

# conv_pod NAME NODE: a pod on NODE serving both conversation ports.
conv_pod() {
    cat <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: $1
  labels: {app: conv}
spec:
  nodeName: $2
  containers:
    - name: conv
      command: ["python3", "$CONV_PY", "serve", "7001", "7002"]
      ports:
        - {name: cf, containerPort: 7001}
        - {name: sf, containerPort: 7002}
---
EOF
}

conv_endpoints() { test "$(endpoints_of conv | wc -l)" -eq "$1"; }

setup_conversations() {
    {
        conv_pod conv-1 node2
        conv_pod conv-2 node3
        cat <<EOF
apiVersion: v1
kind: Service
metadata: {name: conv}
spec:
  selector: {app: conv}
  ports:
    - {name: cf, port: 7001, targetPort: 7001}
    - {name: sf, port: 7002, targetPort: 7002}
EOF
    } >"$TMP/conv.yaml"
    tapestry apply -f "$TMP/conv.yaml" >/dev/null
    # Two pods, two ports each.
    POLL_SLEEP=0.2 poll_until 60000 conv_endpoints 4 || echo "conv endpoints: $(endpoints_of conv | paste -sd,)"
    CONV_VIP=$(svc_ip conv)
    CONV_P2P=$(pod_ip conv-2)
}

flows_started() { [ "$(counter_n1 lb_new_flows)" -ge "$1" ]; }

# Starts every case's talkers in the client pod; they run until $TMP/conv.stop.
check_conversations_start() {
    local c name target port mode n before want=0
    rm -f "$TMP/conv.stop"
    before=$(counter_n1 lb_new_flows)
    for c in "${CONV_CASES[@]}"; do
        read -r name target port mode n <<<"$c"
        [ "$target" = vip ] && target=$CONV_VIP && want=$((want + n))
        [ "$target" = p2p ] && target=$CONV_P2P
        in_pod client python3 "$CONV_PY" talk "$target" "$port" "$mode" "$n" "$TMP/conv.stop" \
            >"$TMP/conv.$name" 2>&1 &
    done
    verdict "conversations running: pod to pod and via ClusterIP $CONV_VIP, client and server first" \
        poll_until 10000 flows_started $((before + want))
}

agent_pidfile() { echo "/run/tapestry/$LAB/nodes/$1/tapestryd.pid"; }
agent_gone() { ! kill -0 "$1" 2>/dev/null; }

# first_forward_ms NODE PINGLOG: ms from the agent's logged start to the first
# ping reply after it (ping -D timestamps); empty if none.
# agent_log NODE: its log without terminal colours.
agent_log() { sed 's/\x1b\[[0-9;]*m//g' "/run/tapestry/$LAB/nodes/$1/tapestryd.log"; }
# forwarded_since_start NODE PINGLOG: a ping reply came after the agent started.
forwarded_since_start() { test -n "$(first_forward_ms "$1" "$2")"; }
first_forward_ms() {
    local start
    start=$(agent_log "$1" | grep -o 'start_unix_ms=[0-9]*' | tail -n 1 | cut -d= -f2)
    [ -n "$start" ] || return 0
    awk -v s="$start" -F'[][]' '/bytes from/ { t = $2 * 1000; if (t >= s) { printf "%d\n", t - s; exit } }' "$2"
}

# kill9_restart NODE [WHILE_DOWN]: kill -9 NODE's agent (and its supervisor) under the running
# conversations, wait until it is gone, run WHILE_DOWN, start it again with
# `lab.sh up`. A ping every 2 ms from the client to conv-2 (through node1, and
# node3) times the first forwarded packet. Sets RESTART_MS.
kill9_restart() {
    local node=$1 pid sup
    shift
    pid=$(pidfile_pid "$(agent_pidfile "$node")")
    sup=$(pidfile_pid "/run/tapestry/$LAB/nodes/$node/supervise.pid")
    local t0
    t0=$(now_ms)
    # The supervisor first (killed too, it starts nothing), so that the agent
    # stays down until `lab.sh up`, while WHILE_DOWN changes the cluster.
    kill -KILL "$sup" "$pid"
    POLL_SLEEP=0.02 poll_until 5000 agent_gone "$pid" || return 1
    if [ $# -gt 0 ]; then "$@" || return 1; fi
    in_pod client ping -D -n -i 0.002 -W 1 -w 60 "$CONV_P2P" >"$TMP/ping.$node" 2>&1 &
    local ping=$!
    lab up --nodes 3 >"$TMP/up.$node" 2>&1 || { kill "$ping"; cat "$TMP/up.$node"; return 1; }
    POLL_SLEEP=0.05 poll_until 5000 forwarded_since_start "$node" "$TMP/ping.$node"
    kill "$ping" 2>/dev/null
    wait "$ping" 2>/dev/null
    RESTART_MS=$(first_forward_ms "$node" "$TMP/ping.$node")
    echo "      $node: agent down for $(($(now_ms) - t0)) ms (kill -9 to forwarding again, lab.sh up included)"
    echo "      $node: first packet forwarded ${RESTART_MS:-?} ms after tapestryd started" \
        "(its log: $(agent_log "$node" | grep -o 'serving.*' | tail -n 1 | tr -d '"'))"
    [ -n "$RESTART_MS" ]
}

# While node1's agent is down: a third backend joins the service (Maglev now
# sends some of the clients' ports elsewhere; their flows must stay put).
add_conv_backend() {
    conv_pod conv-3 node2 >"$TMP/conv-3.yaml"
    tapestry apply -f "$TMP/conv-3.yaml" >/dev/null &&
        POLL_SLEEP=0.2 poll_until 60000 conv_endpoints 6
}

check_kill9_node1() {
    verdict "kill -9 node1's agent (client side, endpoints change while down) and restart" \
        kill9_restart node1 add_conv_backend
    NODE1_RESTART_MS=$RESTART_MS
}
check_kill9_node2() { verdict "kill -9 node2's agent (a backend's node) and restart" kill9_restart node2; }
check_kill9_node3() { verdict "kill -9 node3's agent (the pod-to-pod server's node) and restart" kill9_restart node3; }
check_restart_within_200ms() {
    verdict "the restarted agent forwards within 200 ms of starting (node1: ${NODE1_RESTART_MS:-?} ms)" \
        test "${NODE1_RESTART_MS:-999999}" -lt 200
}

# Restart without a gap (issue 11, item 2): node1's agent is upgraded (SIGUSR2 to
# its supervisor, which starts `tapestryd --upgrade`; the running agent hands
# its descriptors over and exits) under the running conversations and a ping
# every 2 ms from the client (on node1) to conv-2 (on node3). The longest gap
# between ping replies is the stall; the client's eth0 must never lose its
# carrier (no TAP closed, even for a moment). Sets UPGRADE_STALL_MS.
client_carrier_changes() { in_pod client cat /sys/class/net/eth0/carrier_changes; }
# replies_after FILE T_MS: ping replies (-D) in FILE after epoch ms T_MS.
replies_after() { awk -v t="$2" -F'[][]' '/bytes from/ && $2 * 1000 > t { n++ } END { print n + 0 }' "$1"; }
# replied FILE T_MS N: at least N replies in FILE after T_MS.
replied() { [ "$(replies_after "$1" "$2")" -ge "$3" ]; }
# longest_gap_ms FILE: the longest time between two consecutive ping replies.
longest_gap_ms() {
    awk -F'[][]' '/bytes from/ { t = $2 * 1000; if (p && t - p > g) g = t - p; p = t } END { printf "%d\n", g }' "$1"
}
upgraded() { [ "$(pidfile_pid "$(agent_pidfile node1)")" != "$1" ] && agent_gone "$1" && counter_n1 lb_new_flows >/dev/null 2>&1; }
upgrade_node1() {
    local old new sup ping t0 before
    old=$(pidfile_pid "$(agent_pidfile node1)")
    sup=$(pidfile_pid "/run/tapestry/$LAB/nodes/node1/supervise.pid")
    CARRIER_BEFORE=$(client_carrier_changes)
    # Not through in_pod (a function): $! must be ping itself, to stop it.
    ip netns exec "$(pod_ns client)" ping -D -n -i 0.002 -W 1 -w 60 "$CONV_P2P" >"$TMP/ping.upgrade" 2>&1 &
    ping=$!
    # Replies flowing before the upgrade, so that the gap is measured across it.
    t0=$(now_ms)
    POLL_SLEEP=0.05 poll_until 5000 replied "$TMP/ping.upgrade" "$t0" 100 ||
        { kill "$ping"; echo "      no ping replies before the upgrade: $(tail -n 3 "$TMP/ping.upgrade")"; return 1; }
    kill -USR2 "$sup"
    POLL_SLEEP=0.02 poll_until 15000 upgraded "$old" || { kill "$ping"; echo "      upgrade did not complete (pid $old)"; return 1; }
    new=$(pidfile_pid "$(agent_pidfile node1)")
    # As many replies again after the new agent serves.
    t0=$(now_ms)
    POLL_SLEEP=0.05 poll_until 5000 replied "$TMP/ping.upgrade" "$t0" 100
    kill -INT "$ping" 2>/dev/null
    wait "$ping" 2>/dev/null || true
    CARRIER_AFTER=$(client_carrier_changes)
    UPGRADE_STALL_MS=$(longest_gap_ms "$TMP/ping.upgrade")
    before=$(grep -o '[0-9]* packets transmitted, [0-9]* received' "$TMP/ping.upgrade")
    echo "      node1: tapestryd $old handed over to $new; pings: $before; longest gap ${UPGRADE_STALL_MS} ms"
    echo "      old agent: $(agent_log node1 | grep -o 'upgrade: handed over.*' | tail -n 1 | tr -d '"')"
    echo "      new agent: $(agent_log node1 | grep -o 'upgrade: descriptors received.*' | tail -n 1 | tr -d '"')"
    kill -0 "$new" && agent_gone "$old"
}
check_upgrade_node1() {
    verdict "node1's agent upgraded under running conversations: the old one gone, the new one serving" upgrade_node1
}
check_upgrade_stall_50ms() {
    verdict "the upgrade stalled traffic across node1 for at most 50 ms (longest ping gap: ${UPGRADE_STALL_MS:-?} ms)" \
        test "${UPGRADE_STALL_MS:-999999}" -le 50
}
check_upgrade_taps_kept() {
    verdict "no TAP closed by the upgrade: the client's eth0 kept its carrier (carrier_changes ${CARRIER_BEFORE:-?} -> ${CARRIER_AFTER:-?})" \
        test -n "${CARRIER_BEFORE:-}" -a "${CARRIER_BEFORE:-x}" = "${CARRIER_AFTER:-y}"
}

# The supervisor's side of an upgrade, with a stand-in CMD (one python process
# that, started with --upgrade, tells the running one to exit 0 and takes its
# place, or fails when $dir/fail exists): a hand-off is adopted (no restart
# counted), a failed one leaves the old process supervised, a later one still
# works, and a kill -9 after all that is restarted as usual.
STANDIN_PY='
import os, signal, sys
d = sys.argv[1]
if sys.argv[2:] == ["--upgrade"]:
    if os.path.exists(d + "/fail"):
        sys.exit(1)
    os.kill(int(open(d + "/cur").read()), signal.SIGUSR1)
open(d + "/cur", "w").write(str(os.getpid()))
signal.signal(signal.SIGUSR1, lambda *_: sys.exit(0))
while True:
    signal.pause()
'
standin_pid() { cut -d' ' -f1 "$1/standin.pid" 2>/dev/null; }
# standin_is DIR PID: the supervised stand-in is PID (recorded and running).
standin_is() { [ "$(standin_pid "$1")" = "$2" ] && kill -0 "$2" 2>/dev/null; }
standin_changed() { local now; now=$(standin_pid "$1"); [ -n "$now" ] && [ "$now" != "$2" ] && kill -0 "$now" 2>/dev/null; }
supervisor_upgrade_paths() {
    local d="$TMP/standin" sup first second third fourth ok=1
    mkdir -p "$d"
    setsid bash "$REPO/scripts/supervise.sh" "$d" standin -- python3 -c "$STANDIN_PY" "$d" </dev/null >/dev/null 2>&1 &
    sup=$!
    poll_until 5000 test -s "$d/standin.pid" || ok=""
    first=$(standin_pid "$d")
    # 1. A hand-off: the new process is adopted, the old one gone, no restart.
    kill -USR2 "$sup"
    POLL_SLEEP=0.05 poll_until 5000 standin_changed "$d" "$first" || ok=""
    second=$(standin_pid "$d")
    kill -0 "$first" 2>/dev/null && ok=""
    [ "$(cat "$d/standin.restarts")" = 0 ] || ok=""
    # 2. A failed upgrade: the running one stays supervised.
    touch "$d/fail"
    kill -USR2 "$sup"
    POLL_SLEEP=0.05 poll_until 5000 grep -q "upgrade of standin failed" "$d/standin.log" || ok=""
    standin_is "$d" "$second" || ok=""
    # 3. Upgradable again afterwards.
    rm -f "$d/fail"
    kill -USR2 "$sup"
    POLL_SLEEP=0.05 poll_until 5000 standin_changed "$d" "$second" || ok=""
    third=$(standin_pid "$d")
    # 4. A crash after all that: restarted as always, counted.
    kill -KILL "$third"
    POLL_SLEEP=0.05 poll_until 5000 standin_changed "$d" "$third" || ok=""
    fourth=$(standin_pid "$d")
    [ "$(cat "$d/standin.restarts")" = 1 ] || ok=""
    echo "      stand-in: $first handed over to $second; failed upgrade kept $second; $second handed over to $third;" \
        "$third killed, restarted as ${fourth:-?} (restarts $(cat "$d/standin.restarts"))"
    kill -TERM "$sup"
    # The supervisor is this shell's child: gone once reaped.
    POLL_SLEEP=0.05 poll_until 5000 agent_gone "$fourth" || ok=""
    wait "$sup" || ok=""
    standin_cleanup
    [ -n "$ok" ]
}
# Whatever happened above (a step that timed out, a hand-off half done), no
# stand-in, its log capper or its supervisor outlives the check: each holds
# descriptors of this run (the e2e lock among them). All carry $TMP/standin
# in their command line, which no other process has.
standin_cleanup() {
    pkill -KILL -f -- "$TMP/standin" 2>/dev/null || true
}
check_supervisor_upgrade() {
    verdict "the supervisor adopts an upgraded process, keeps the old one when the upgrade fails, restarts after a crash" \
        supervisor_upgrade_paths
}

talkers_done() { ! pgrep -f -- "$CONV_PY talk" >/dev/null; }

# Lets the conversations run on for a second after the last restart (an
# observation period, not a wait for readiness), then stops them.
setup_conversations_stop() {
    local t0
    t0=$(now_ms)
    poll_until 1000 test $(($(now_ms) - t0)) -ge 1000
    touch "$TMP/conv.stop"
    POLL_SLEEP=0.2 poll_until 40000 talkers_done || true
}

conv_ok() { grep -q '^ok ' "$TMP/conv.$1"; }
conv_result() {
    local name=$1
    verdict "no $name conversation lost across three kill -9 restarts and an upgrade: $(cat "$TMP/conv.$name" 2>/dev/null)" \
        conv_ok "$name"
}
check_restart_p2p_client_first() { conv_result pod-to-pod,client-first; }
check_restart_p2p_server_first() { conv_result pod-to-pod,server-first; }
check_restart_vip_client_first() { conv_result clusterip,client-first; }
check_restart_vip_server_first() { conv_result clusterip,server-first; }
check_restart_flows_restored() {
    local n
    n=$(counter_n1 conntrack_restored)
    verdict "node1 restored its service flows from the flow file (conntrack_restored=$n)" test "$n" -ge 16
}

# shellcheck disable=SC2034 # run by e2e.sh
RESTART_STEPS=(
    setup_conversations check_conversations_start
    check_kill9_node1 check_kill9_node2 check_kill9_node3 check_restart_within_200ms
    check_upgrade_node1 check_upgrade_stall_50ms check_upgrade_taps_kept check_supervisor_upgrade
    setup_conversations_stop
    check_restart_p2p_client_first check_restart_p2p_server_first
    check_restart_vip_client_first check_restart_vip_server_first check_restart_flows_restored
)
