#!/usr/bin/env bash
# Sourced by e2e.sh: the lab on a real etcd cluster (issue 12, items 2 and 4). A
# second lab, of its own name, is built with `lab.sh --store etcd` once the first
# one is down: three etcd members on the underlay, and nodes that share nothing
# but the underlay and etcd. It must pass the demo, show its objects in etcd, and
# ride out two faults: one member killed with -9 (pods keep talking, a new pod
# is applied and answers; the member, started again, rejoins and catches up), and
# all three killed (the data plane forwards on its last state, the agents log
# the store unreachable and retry with backoff, and a pod applied once etcd is
# back gets an address and answers). ETCD_STEPS lists the steps in order;
# setup_etcd_lab points the helpers (LAB, LABSH, TAPESTRY_STORE, the CLI's
# namespace) at the etcd lab, and e2e.sh's cleanup removes it on any exit.

ELAB="e2d$$"
ELAB=${ELAB:0:12}
ETCD_T0=0

# The etcd lab's members, as lab.sh places them.
etcd_member_ip() { echo "198.18.0.$((100 + $1))"; }
etcd_member_pidfile() { echo "/run/tapestry/$ELAB/etcd/etcd$1/etcd.pid"; }
# etcdctl_at ENDPOINTS ARGS…: etcdctl from the lab's underlay namespace.
etcdctl_at() {
    local eps=$1
    shift
    ip netns exec "$ELAB-underlay" etcdctl --endpoints "$eps" "$@"
}
etcd_all() { etcdctl_at "$(etcd_urls)" "$@"; }
etcd_urls() { echo "http://198.18.0.101:2379,http://198.18.0.102:2379,http://198.18.0.103:2379"; }
three_healthy() { [ "$(etcd_all endpoint health 2>&1 | grep -c ' is healthy')" -eq 3 ]; }

# shellcheck disable=SC2034 # LABSH, N1SOCK and TAPESTRY_STORE are e2e.sh's
setup_etcd_lab() {
    LAB=$ELAB
    LABSH=("$REPO/scripts/lab.sh" --name "$LAB")
    N1SOCK="/run/tapestry/$LAB/nodes/node1/tapestryd.sock"
    TAPESTRY_STORE="etcd://198.18.0.101:2379,198.18.0.102:2379,198.18.0.103:2379"
    export TAPESTRY_NETNS="$LAB-underlay"
    ETCD_T0=$(now_ms)
}

check_etcd_up() {
    local t0
    t0=$(now_ms)
    if lab --nodes 3 --store etcd up >"$TMP/etcd-up.log" 2>&1; then
        pass "lab.sh --nodes 3 --store etcd up ($(($(now_ms) - t0)) ms; $(grep -o 'members healthy after [0-9]* ms' "$TMP/etcd-up.log"))"
    else
        fail "lab.sh --nodes 3 --store etcd up (log follows)"
        cat "$TMP/etcd-up.log"
    fi
}
# pids_of_lab: the agents' and the members' PIDs, one line.
pids_of_lab() {
    cat "/run/tapestry/$LAB"/nodes/*/tapestryd.pid "/run/tapestry/$LAB"/etcd/*/etcd.pid 2>/dev/null | tr '\n' ' '
}
check_etcd_up_twice() {
    local before after
    before=$(pids_of_lab)
    lab --nodes 3 --store etcd up >"$TMP/etcd-up2.log" 2>&1 || { cat "$TMP/etcd-up2.log"; }
    after=$(pids_of_lab)
    verdict "a second up --store etcd changes nothing (same agents and members: $after)" \
        test -n "$before" -a "$before" = "$after"
}
check_etcd_up_dir_refused() {
    local out rc=0
    out=$(lab --nodes 3 up 2>&1) || rc=$?
    verdict "up with --store dir on the etcd lab refuses: $(tail -n 1 <<<"$out")" \
        test "$rc" -ne 0 -a -n "$(grep -- "--store etcd" <<<"$out")"
}
check_etcd_status() {
    lab status >"$TMP/etcd-status.log" 2>&1
    verdict "status shows the three members healthy" \
        test "$(grep -c '^http://198.18.0.10[1-3]:2379 is healthy' "$TMP/etcd-status.log")" -eq 3
}
check_etcd_keys() {
    local keys want missing=""
    keys=$(lab etcdctl get --prefix /tapestry/ --keys-only 2>&1)
    for want in /tapestry/pods/default/client /tapestry/pods/kube-system/tapestry-dns-1 \
        /tapestry/services/default/web /tapestry/services/kube-system/kube-dns \
        /tapestry/nodes/node1 /tapestry/nodes/node2 /tapestry/nodes/node3; do
        grep -qxF "$want" <<<"$keys" || missing+=" $want"
    done
    echo "      $(grep -c '^/tapestry/' <<<"$keys") keys under /tapestry/"
    verdict "etcdctl get --prefix /tapestry/ --keys-only lists the lab's pods, services and nodes${missing:+ (missing:$missing)}" \
        test -z "$missing"
}
check_etcd_lab_cli() {
    local out
    out=$(lab tapestry get pods -A -o wide 2>&1)
    verdict "lab.sh tapestry get pods -A reads the etcd lab's pods (client, the DNS pods)" \
        both grep -q '^default  *client ' -- grep -q '^kube-system  *tapestry-dns-1 ' <<<"$out"
}
check_etcd_demo() {
    if lab demo >"$TMP/etcd-demo.log" 2>&1 && [ "$(grep -c '^PASS  policy:' "$TMP/etcd-demo.log")" -eq 4 ] &&
        ! grep -q '^FAIL' "$TMP/etcd-demo.log"; then
        pass "lab.sh demo on the etcd lab passes facts 1-5 and its NetworkPolicy part"
    else
        fail "lab.sh demo on the etcd lab (log follows)"
        cat "$TMP/etcd-demo.log"
    fi
}
# A DNS pod reads the store over TCP to a member on the underlay: pod egress
# through its node (masqueraded), the path every pod has to the node network.
dns_talks_to_etcd() {
    ip netns exec "$LAB-kube-system-tapestry-dns-1" ss -Htn state established |
        grep -qE ' 198\.18\.0\.10[1-3]:2379 *$'
}
check_etcd_dns_pod_reaches_members() {
    POLL_SLEEP=0.2 poll_until 10000 dns_talks_to_etcd
    verdict "the DNS pod (on 10.244.x.y) holds a connection to an etcd member on the underlay" test -n "$POLL_MS"
}

# pods_talk: client (node1) pings and curls the web pod on node3.
pods_talk() {
    local ip3 out
    ip3=${ETCD_WEB3_IP:-}
    pings client "$ip3" || return 1
    out=$(in_pod client curl -s --max-time 3 "http://$ip3/") || return 1
    grep -q "node=node3" <<<"$out"
}
setup_etcd_web3() {
    local w
    w=$(web_on node3)
    ETCD_WEB3_IP=$(pod_ip "$w")
}
# new_pod NAME NODE: applies a web pod NAME on NODE and waits for every pod;
# then the pod has an address and the client reaches it (ping and curl).
new_pod() {
    local ip out
    cat >"$TMP/$1.yaml" <<YAML
apiVersion: v1
kind: Pod
metadata:
  name: $1
spec:
  nodeName: $2
  containers:
    - name: web
      command: ["tapestry-web", "--port", "80"]
YAML
    tapestry apply -f "$TMP/$1.yaml" >"$TMP/$1.log" 2>&1 || { cat "$TMP/$1.log"; return 1; }
    tapestry wait --timeout 60 >>"$TMP/$1.log" 2>&1 || { cat "$TMP/$1.log"; return 1; }
    ip=$(pod_ip "$1")
    echo "      pod $1 on $2: ${ip:-no address}"
    [ -n "$ip" ] || return 1
    pings client "$ip" || return 1
    out=$(in_pod client curl -s --max-time 3 "http://$ip/") || return 1
    grep -q "pod=$1 " <<<"$out"
}

# --- one member killed -------------------------------------------------------------
# The leader, so that the rest must elect a new one.
leader_index() {
    local k
    for k in 1 2 3; do
        if etcdctl_at "http://$(etcd_member_ip "$k"):2379" endpoint status -w json 2>/dev/null |
            jq -e '.[0].Status.leader == .[0].Status.header.member_id' >/dev/null; then
            echo "$k"
            return
        fi
    done
}
setup_etcd_kill_one() {
    ETCD_KILLED=$(leader_index)
    ETCD_KILLED=${ETCD_KILLED:-2}
    echo "      kill -9 etcd$ETCD_KILLED (the leader)"
    kill -9 "$(pidfile_pid "$(etcd_member_pidfile "$ETCD_KILLED")")"
    POLL_SLEEP=0.05 poll_until 3000 not pid_alive "$(etcd_member_pidfile "$ETCD_KILLED")"
}
check_etcd_one_down_pods_talk() { verdict "one member killed: client on node1 pings and curls a pod on node3" pods_talk; }
check_etcd_one_down_apply() {
    verdict "one member killed: a new pod is applied, gets an address and answers" new_pod etcd-one node2
}
member_has() {
    etcdctl_at "http://$(etcd_member_ip "$1"):2379" get "$2" --keys-only --consistency=s 2>/dev/null | grep -qxF "$2"
}
check_etcd_member_rejoins() {
    lab --nodes 3 --store etcd up >"$TMP/etcd-up3.log" 2>&1 || cat "$TMP/etcd-up3.log"
    POLL_SLEEP=0.2 poll_until 20000 three_healthy
    local healthy=$POLL_MS
    # Its own copy (a serializable read answered by it alone) has what was
    # written while it was down.
    POLL_SLEEP=0.2 poll_until 20000 member_has "$ETCD_KILLED" /tapestry/pods/default/etcd-one
    echo "      etcd$ETCD_KILLED: 3 healthy ${healthy:-never} ms and caught up ${POLL_MS:-never} ms after up"
    verdict "the killed member, started again, rejoins (3 healthy) and has the pod written meanwhile" \
        test -n "$healthy" -a -n "$POLL_MS"
}

# --- all three killed ------------------------------------------------------------------
agent_log_of() { sed 's/\x1b\[[0-9;]*m//g' "/run/tapestry/$LAB/nodes/$1/tapestryd.log"; }
declare -A ETCD_LOG_LINES=()
setup_etcd_kill_all() {
    local k n
    for n in node1 node2 node3; do ETCD_LOG_LINES[$n]=$(agent_log_of "$n" | wc -l); done
    for k in 1 2 3; do pidfile_signal KILL "$(etcd_member_pidfile "$k")"; done
    for k in 1 2 3; do POLL_SLEEP=0.05 poll_until 3000 not pid_alive "$(etcd_member_pidfile "$k")"; done
}
check_etcd_all_down_pods_talk() {
    verdict "all members killed: client on node1 still pings and curls a pod on node3" pods_talk
}
# store_retry_lines NODE: the agent's log lines since the members were killed in
# which the store's etcd client says it lost etcd and when it tries again
# ("store: etcd watch broken (…tcp connect error…); reopening … retry_in=200ms").
store_retry_lines() {
    agent_log_of "$1" | tail -n "+$((${ETCD_LOG_LINES[$1]:-0} + 1))" | grep -E 'store: etcd' | grep -E 'retry_in='
}
# retry_delays_ms NODE: the retry_in values of those lines, in ms, one a line.
retry_delays_ms() {
    store_retry_lines "$1" | grep -oE 'retry_in=[0-9.]+(ms|s)' |
        awk -F= '{ v = $2; if (v ~ /ms$/) { sub(/ms$/, "", v); print v + 0 } else { sub(/s$/, "", v); print v * 1000 } }'
}
# backs_off NODE: at least three retries, and the delay grew (backoff, not a loop).
backs_off() {
    local d
    d=$(retry_delays_ms "$1")
    [ "$(wc -l <<<"$d")" -ge 3 ] && [ "$(sort -n <<<"$d" | tail -n 1)" -gt "$(sort -n <<<"$d" | head -n 1)" ]
}
every_agent_backs_off() {
    local n
    for n in node1 node2 node3; do backs_off "$n" || return 1; done
}
check_etcd_all_down_agents_retry() {
    POLL_SLEEP=0.5 poll_until 30000 every_agent_backs_off
    local waited=$POLL_MS n
    echo "      node1: $(store_retry_lines node1 | tail -n 1 | cut -c1-240)"
    for n in node1 node2 node3; do
        echo "      $n: $(retry_delays_ms "$n" | wc -l) retries, delays (ms) $(retry_delays_ms "$n" | tr '\n' ' ')"
    done
    verdict "all members killed: every agent logs the store lost and retries with growing backoff (seen after ${waited:-30000+} ms)" \
        test -n "$waited"
}
check_etcd_all_down_pods_still_talk() {
    verdict "all members still down after the agents' retries: the pods still talk" pods_talk
}
check_etcd_back_apply() {
    lab --nodes 3 --store etcd up >"$TMP/etcd-up4.log" 2>&1 || cat "$TMP/etcd-up4.log"
    verdict "etcd back: a new pod is applied, gets an address and answers" new_pod etcd-back node3
}
check_etcd_back_healthy() { verdict "etcd back: the three members are healthy" three_healthy; }

setup_etcd_down() { lab down >/dev/null 2>&1; }
check_etcd_down_clean() {
    echo "      the etcd phase took $((($(now_ms) - ETCD_T0) / 1000)) s"
    verdict "down removes the etcd lab: no namespace, process or state left" \
        test -z "$(netns_with_prefix "$LAB")" -a -z "$(lab_procs)" -a ! -e "/run/tapestry/$LAB"
}
# shellcheck disable=SC2034 # used by e2e.sh
ETCD_STEPS=(
    setup_etcd_lab check_etcd_up check_etcd_up_twice check_etcd_up_dir_refused check_etcd_status
    check_etcd_keys check_etcd_lab_cli check_etcd_demo check_etcd_dns_pod_reaches_members
    setup_etcd_web3 setup_etcd_kill_one check_etcd_one_down_pods_talk check_etcd_one_down_apply
    check_etcd_member_rejoins
    setup_etcd_kill_all check_etcd_all_down_pods_talk check_etcd_all_down_agents_retry
    check_etcd_all_down_pods_still_talk check_etcd_back_apply check_etcd_back_healthy
    setup_etcd_down check_etcd_down_clean
)
