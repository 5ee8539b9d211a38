#!/usr/bin/env bash
# The lab's demo: each Kubernetes networking fact, shown with real tools and
# judged PASS or FAIL. Called by `scripts/lab.sh demo` (which sets LAB, LAB_DIR,
# BIN and REPO); exits non-zero if any check fails.
set -uo pipefail

: "${LAB:?}" "${LAB_DIR:?}" "${BIN:?}" "${REPO:?}"
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$REPO/scripts/lib.sh"

show() { echo "  \$ $*"; }
indent() { sed 's/^/    /'; }

pod_dir() { echo "$LAB_DIR/nodes/$(pod_node "$1")/pods/default_$1"; }
node_sock() { echo "$LAB_DIR/nodes/$1/tapestryd.sock"; }
counter() { # counter NODE NAME: one counter of the node's bridge
    tapestry status --socket "$(node_sock "$1")" --counter "$2"
}

# Sets line to the sidecar's first answer from localhost in log $1.
sidecar_answered() { line=$(grep -m1 'pod=web-a.*path=/from-sidecar' "$1" 2>/dev/null); }

fact1() {
    echo
    echo "Fact 1: containers of one pod talk over localhost"
    echo "  Pod web-a is one network namespace ($LAB-default-web-a) held by a pause process;"
    echo "  its containers 'web' and 'sidecar' are processes started inside it."
    local d c pid
    d=$(pod_dir web-a)
    for c in pause web sidecar; do
        pid=$(pidfile_pid "$d/$c.pid" || echo "?")
        echo "    $c: pid $pid, network namespace $(readlink "/proc/$pid/ns/net" 2>/dev/null || echo '?')"
    done
    echo "  The sidecar curls http://localhost:80/from-sidecar every 2 s; its log:"
    local line=""
    POLL_SLEEP=0.1 poll_until 5000 sidecar_answered "$d/sidecar.log"
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
    while IFS=$'\t' read -r pod ip node; do
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
    done < <(pods_tsv default | awk -F'\t' '$1 ~ /^web-/')
    if [ "$remote" -eq 0 ]; then
        fail "fact 3: no web pod runs on a node other than $src_node (bring the lab up with --nodes 2 or more)"
    fi
}

fact4() {
    echo
    echo "Fact 4: pods reach a Service by one stable virtual IP"
    local vip pod node i out seen=" " all_ok=0 n=0
    vip=$(svc_ip web)
    echo "  Service web has ClusterIP $vip. No interface anywhere has that address: each"
    echo "  node's router rewrites ClusterIP:80 to one ready web pod (Maglev hashing, then"
    echo "  connection tracking), and rewrites the replies back."
    tapestry get endpoints | awk 'NR == 1 || $2 == "web"' | indent
    while IFS=$'\t' read -r pod node; do
        echo "  from $pod on $node:"
        for i in 1 2 3 4 5 6; do
            out=$(in_pod "$pod" curl -s --max-time 3 "http://$vip/" 2>&1)
            n=$((n + 1))
            if [[ "$out" == pod=web-* ]]; then
                echo "    curl http://$vip/ #$i -> ${out%% namespace=*} (${out##* node=})" | sed 's/ client=.*)/)/'
                seen="$seen${out%% *} "
            else
                echo "    curl http://$vip/ #$i -> FAILED: $out"
                all_ok=1
            fi
        done
    done < <(pods_tsv default | awk -F'\t' '!seen[$3]++ { print $1 "\t" $3 }')
    if [ "$all_ok" -eq 0 ]; then
        pass "fact 4: all $n requests to the ClusterIP $vip answered, from a pod on every node"
    else
        fail "fact 4: some requests to the ClusterIP $vip failed"
    fi
    local distinct
    distinct=$(echo "$seen" | tr ' ' '\n' | sort -u | grep -c .)
    if [ "$distinct" -ge 2 ]; then
        pass "fact 4: answers came from $distinct different backends:$(echo "$seen" | tr ' ' '\n' | sort -u | tr '\n' ' ')"
    else
        fail "fact 4: every answer came from one backend ($seen)"
    fi
}

# web_e_discovered VIP: web-e has answered in DNS (DIG_OK, ms since T0) and
# through the ClusterIP (LB_OK); sets ip_e once the pod has its address.
web_e_discovered() {
    [ -n "$ip_e" ] || ip_e=$(pod_ip web-e)
    if [ -z "$DIG_OK" ] && [ -n "$ip_e" ] && in_pod client dig +short web-e.web-pods.default.svc.cluster.local | grep -qx "$ip_e"; then
        DIG_OK=$(($(now_ms) - T0))
    fi
    if [ -z "$LB_OK" ] && in_pod client curl -s --max-time 1 "http://$1/" | grep -q "pod=web-e "; then
        LB_OK=$(($(now_ms) - T0))
    fi
    [ -n "$DIG_OK" ] && [ -n "$LB_OK" ]
}
web_e_gone() { ! in_pod client dig +short web-pods.default.svc.cluster.local | grep -qx "$ip_e"; }

fact5() {
    echo
    echo "Fact 5: pods find Services by name, and new endpoints are discovered"
    local out vip
    vip=$(svc_ip web)
    show "scripts/lab.sh exec client -- cat /etc/resolv.conf"
    in_pod client cat /etc/resolv.conf | indent
    show "scripts/lab.sh exec client -- curl -s http://web/"
    out=$(in_pod client curl -s --max-time 5 http://web/ 2>&1)
    echo "$out" | indent
    if [[ "$out" == pod=web-* ]]; then pass "fact 5: curl http://web (short name, via the search path) answered"; else fail "fact 5: curl http://web failed"; fi
    show "scripts/lab.sh exec client -- curl -s http://web.default.svc.cluster.local/"
    out=$(in_pod client curl -s --max-time 5 http://web.default.svc.cluster.local/ 2>&1)
    echo "$out" | indent
    if [[ "$out" == pod=web-* ]]; then pass "fact 5: curl http://web.default.svc.cluster.local answered"; else fail "fact 5: curl of the full name failed"; fi
    show "scripts/lab.sh exec client -- dig +short +search web"
    out=$(in_pod client dig +short +search web 2>&1)
    echo "$out" | indent
    if [ "$out" = "$vip" ]; then pass "fact 5: dig of the short name gives the ClusterIP $vip"; else fail "fact 5: dig +search web gave '$out', want $vip"; fi
    show "scripts/lab.sh exec client -- dig +short web-pods.default.svc.cluster.local   (headless: the pods themselves)"
    out=$(in_pod client dig +short web-pods.default.svc.cluster.local 2>&1 | sort -V | tr '\n' ' ' | sed 's/ $//')
    echo "    $out"
    local ready
    ready=$(ready_ips web-pods)
    if [ -n "$out" ] && [ "$out" = "$ready" ]; then pass "fact 5: the headless name lists exactly the ready web pods"; else fail "fact 5: headless answer '$out', ready endpoints '$ready'"; fi

    echo "  Scaling web up: tapestry apply -f lab/scale/web-e.yaml"
    # Dynamic scope: web_e_discovered and web_e_gone read and set these.
    local ip_e="" DIG_OK="" LB_OK=""
    tapestry apply -f "$REPO/lab/scale/web-e.yaml" | indent
    T0=$(now_ms)
    poll_until 5000 web_e_discovered "$vip"
    echo "    web-e ($ip_e) in DNS after ${DIG_OK:-never} ms, served through the ClusterIP after ${LB_OK:-never} ms"
    if [ -n "$DIG_OK" ] && [ -n "$LB_OK" ]; then
        pass "fact 5: the new replica web-e appeared in DNS and behind the ClusterIP"
    else
        fail "fact 5: the new replica web-e was not discovered within 5 s"
    fi
    echo "  Scaling web down: tapestry delete -f lab/scale/web-e.yaml"
    tapestry delete -f "$REPO/lab/scale/web-e.yaml" | indent
    local failed=0
    poll_until 5000 web_e_gone
    for _ in $(seq 1 20); do
        out=$(in_pod client curl -s --max-time 2 "http://$vip/" 2>&1)
        if [[ "$out" != pod=web-* ]] || [[ "$out" == "pod=web-e "* ]]; then failed=$((failed + 1)); fi
    done
    echo "    web-e gone from DNS after ${POLL_MS:-never} ms; then 20 requests to the ClusterIP: $failed failed or reached web-e"
    if [ -n "$POLL_MS" ] && [ "$failed" -eq 0 ]; then
        pass "fact 5: web-e left DNS and the load balancer, and no request failed after that"
    else
        fail "fact 5: after scaling down, DNS or the load balancer still used web-e ($failed bad requests)"
    fi
}

# The exit status of curl from POD to URL with a short timeout: 0 answered,
# 28 timed out (a dropped packet), 7 refused (a reset).
curl_status() { in_pod "$1" curl -s -o /dev/null --max-time 1 "$2" >/dev/null 2>&1; echo $?; }
# nc_open POD IP PORT: a TCP connection from POD to IP:PORT is accepted.
nc_open() { in_pod "$1" nc -z -w 1 "$2" "$3" >/dev/null 2>&1; }
curl_blocked() { [ "$(curl_status "$1" "$2")" = 28 ]; }
curl_answers() { [ "$(curl_status "$1" "$2")" = 0 ]; }
demo_pods_up() {
    [ -n "$(pod_ip web shop)" ] && [ -n "$(pod_ip probe monitoring)" ] &&
        curl_answers client "http://$(pod_ip web shop)/"
}
policy_denials() { # the node's count of packets dropped by policy
    tapestry status --socket "$(node_sock "$1")" --counter policy_denied
}

policy() {
    echo
    echo "Policy: NetworkPolicy keeps pods apart (lab/policy/)"
    echo "  Namespaces shop (team=shop) and monitoring (team=ops); shop/web (app=web) serves"
    echo "  HTTP on ports 80 and 8080 on node2; monitoring/probe and default/client run on node1."
    local f
    for f in 00-namespaces.yaml demo-pods.yaml; do
        show "tapestry apply -f lab/policy/$f"
        tapestry apply -f "$REPO/lab/policy/$f" | indent
    done
    local web before
    poll_until 30000 demo_pods_up
    web=$(pod_ip web shop)
    if [ -z "$web" ]; then
        fail "policy: shop/web did not start"
        return
    fi
    echo "  Without a policy every pod reaches every pod:"
    show "scripts/lab.sh exec client -- curl http://$web/"
    in_pod client curl -s --max-time 2 "http://$web/" 2>&1 | indent
    if curl_answers client "http://$web/" && nc_open monitoring/probe "$web" 8080; then
        pass "policy: before any policy, client (default) and probe (monitoring) reach shop/web"
    else
        fail "policy: before any policy, shop/web did not answer client and probe"
    fi

    echo "  A default deny: a policy that selects every pod of shop and allows no ingress."
    show "tapestry apply -f lab/policy/10-default-deny-ingress.yaml"
    before=$(policy_denials node2)
    tapestry apply -f "$REPO/lab/policy/10-default-deny-ingress.yaml" | indent
    POLL_SLEEP=0.05 poll_until 5000 curl_blocked client "http://$web/"
    # A denied connection is only seen as such when curl gives up (1 s).
    echo "    denied ${POLL_MS:-never} ms after the apply, of which 1,000 ms are curl's own timeout"
    show "scripts/lab.sh exec client -- curl --max-time 1 http://$web/"
    echo "    curl exit status $(curl_status client "http://$web/") (28: timed out; the SYN was dropped, not reset)"
    if [ -n "$POLL_MS" ] && ! nc_open monitoring/probe "$web" 80; then
        pass "policy: default deny ingress: neither client nor probe reaches shop/web (dropped, not reset)"
    else
        fail "policy: default deny ingress did not stop client and probe"
    fi
    echo "    node2's packets dropped by policy: $before -> $(policy_denials node2)"
    show "tapestry status --socket $LAB_DIR/nodes/node2/tapestryd.sock --counter shop/default-deny-ingress"
    tapestry status --socket "$(node_sock node2)" --counter shop/default-deny-ingress | indent

    echo "  Then allow by namespace label and port: pods of namespaces labelled team=ops may"
    echo "  reach app=web in shop on TCP port 80 (policies add up; the default deny stays)."
    show "tapestry apply -f lab/policy/20-allow-ops-to-web-http.yaml"
    tapestry apply -f "$REPO/lab/policy/20-allow-ops-to-web-http.yaml" | indent
    POLL_SLEEP=0.05 poll_until 5000 nc_open monitoring/probe "$web" 80
    echo "    enforced after ${POLL_MS:-never} ms"
    show "scripts/lab.sh exec monitoring/probe -- nc -z -v -w 1 $web 80"
    in_pod monitoring/probe nc -z -v -w 1 "$web" 80 2>&1 | indent
    show "scripts/lab.sh exec monitoring/probe -- nc -z -v -w 1 $web 8080"
    in_pod monitoring/probe nc -z -v -w 1 "$web" 8080 2>&1 | indent
    if [ -n "$POLL_MS" ] && curl_answers monitoring/probe "http://$web/"; then
        pass "policy: probe (monitoring, team=ops) reaches shop/web on port 80"
    else
        fail "policy: the allow by namespace label did not let probe reach port 80"
    fi
    if ! nc_open monitoring/probe "$web" 8080 && curl_blocked client "http://$web/"; then
        pass "policy: port 8080, and client (default: no team=ops label), stay denied"
    else
        fail "policy: the allow opened more than TCP port 80 from team=ops"
    fi

    echo "  Cleaning up: the policies, pods and namespaces go again."
    for f in 20-allow-ops-to-web-http.yaml 10-default-deny-ingress.yaml demo-pods.yaml 00-namespaces.yaml; do
        tapestry delete -f "$REPO/lab/policy/$f" | indent
    done
}

fact1
fact2
fact3
fact4
fact5
policy
echo
echo "demo: $PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
