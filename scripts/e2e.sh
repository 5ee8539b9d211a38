#!/usr/bin/env bash
# End-to-end checks against a real three-node lab with a unique name, always torn
# down. Prints one PASS/FAIL line per check and closes with
# "e2e: N passed, M failed".
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LAB="e2e$$"
LAB=${LAB:0:12}
LABSH=("$REPO/scripts/lab.sh" --name "$LAB")
BIN="$REPO/target/release"
STORE="/run/tapestry/$LAB/store"
export TAPESTRY_STORE=$STORE
TMP=$(mktemp -d)
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
    rm -rf "$TMP"
}
trap cleanup EXIT INT TERM

lab_netns() { ip netns list | awk '{print $1}' | grep -E "^$LAB-" || true; }
lab_procs() { pgrep -f -- "/run/tapestry/$LAB/|/run/netns/$LAB-|netns exec $LAB-" || true; }
pod_field() { "$BIN/tapestry" get pods | awk -v p="$1" -v c="$2" '$2 == p { print $c }'; }
pod_ip() { pod_field "$1" 5; }
pod_node() { pod_field "$1" 6; }
in_pod() { local pod=$1; shift; ip netns exec "$LAB-default-$pod" "$@"; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }
# The first web pod on node $1.
web_on() { "$BIN/tapestry" get pods | awk -v n="$1" '$6 == n && $2 ~ /^web-/ { print $2; exit }'; }

# --- bring-up and the demo --------------------------------------------------
if "${LABSH[@]}" --nodes 3 up >"$TMP/up.log" 2>&1; then
    pass "lab.sh --nodes 3 up"
else
    fail "lab.sh --nodes 3 up (log follows)"; cat "$TMP/up.log"
fi
if "${LABSH[@]}" demo >"$TMP/demo.log" 2>&1; then
    pass "lab.sh demo passes facts 1-3"
else
    fail "lab.sh demo (log follows)"; cat "$TMP/demo.log"
fi

# --- one node ---------------------------------------------------------------
IP_B=$(pod_ip web-b)
check "exec: client pings web-b" "${LABSH[@]}" exec client -- ping -c 2 -i 0.2 -W 2 "$IP_B"
check "exec: client curls web-b and web-b answers" \
    bash -c "'${LABSH[0]}' --name $LAB exec client -- curl -s --max-time 3 http://$IP_B/ | grep -q pod=web-b"
check "a pod pings its gateway (the router port)" "${LABSH[@]}" exec web-a -- ping -c 1 -W 2 10.244.1.1
check "the node reaches its pods through the host port cbr0" ip netns exec "$LAB-node1" ping -c 1 -W 2 "$IP_B"
check "an unowned address on the pod's own subnet gets no answer" \
    bash -c "! '${LABSH[0]}' --name $LAB exec client -- ping -c 1 -W 1 10.244.1.200 >/dev/null"
check "pod MAC is derived from its IP" bash -c "ip -n $LAB-default-web-b link show eth0 | grep -q 'link/ether 0a:58:0a:f4:01:'"
check "pod eth0 is a persistent TAP with the virtio-net header" \
    bash -c "ip -n $LAB-default-web-b -d link show eth0 | grep -q 'tap.*vnet_hdr on persist on'"
check "pod MTU is the underlay's 1500 minus 50 for VXLAN" bash -c "ip -n $LAB-default-web-b link show eth0 | grep -q 'mtu 1450'"
check "CNI CHECK of an attached pod succeeds" "$BIN/tapestry" cni check \
    --socket "/run/tapestry/$LAB/nodes/node1/tapestryd.sock" --container-id "$LAB-default-web-b" --netns "/run/netns/$LAB-default-web-b"

# --- across nodes -----------------------------------------------------------
CLIENT_IP=$(pod_ip client)
WEB3=$(web_on node3)
IP3=$(pod_ip "$WEB3")
check "a web pod runs on node3 ($WEB3 $IP3)" test -n "$IP3"
check "exec: client on node1 curls $WEB3 on node3" \
    bash -c "'${LABSH[0]}' --name $LAB exec client -- curl -s --max-time 3 http://$IP3/ | grep -q 'pod=$WEB3 .*node=node3 client=$CLIENT_IP:'"
HOPS=$("${LABSH[@]}" exec client -- traceroute -n -q 1 -w 1 "$IP3" | awk 'NR > 1 { print $2 }' | tr '\n' ' ')
check "traceroute node1 -> node3 shows both gateways ($HOPS)" test "$HOPS" = "10.244.1.1 10.244.3.1 $IP3 "
check "node1 itself reaches a pod on node3 (host port, gateway, tunnel)" ip netns exec "$LAB-node1" ping -c 1 -W 2 "$IP3"
OUT=$("${LABSH[@]}" exec client -- ping -c 1 -W 2 10.244.99.5 2>&1)
check "an in-cluster subnet nobody owns: ICMP host unreachable from the gateway" \
    grep -q "From 10.244.1.1 .*Destination Host Unreachable" <<<"$OUT"
# The router's own check: raise client's MTU past the tunnel's, send 1500 bytes with DF.
ip -n "$LAB-default-client" link set eth0 mtu 1500
OUT=$("${LABSH[@]}" exec client -- ping -c 1 -W 2 -M "do" -s 1472 "$IP3" 2>&1)
ip -n "$LAB-default-client" link set eth0 mtu 1450
check "too big for the tunnel with DF set: ICMP fragmentation needed, mtu 1450, from the gateway" \
    grep -q "From 10.244.1.1 .*Frag needed and DF set (mtu = 1450)" <<<"$OUT"
check "a 1422-byte ping with DF set (1450 bytes) crosses the tunnel" "${LABSH[@]}" exec client -- ping -c 1 -W 2 -M "do" -s 1422 "$IP3"
check "a 20000-byte ping (IP fragments) crosses the tunnel" "${LABSH[@]}" exec client -- ping -c 1 -W 2 -s 20000 "$IP3"

# tshark decodes what crosses the underlay as VXLAN, VNI 1, with the pods inside.
ip netns exec "$LAB-underlay" tshark -i br0 -f "udp port 4789" -c 4 -a duration:15 -w "$TMP/vxlan.pcap" >"$TMP/tshark.log" 2>&1 &
TSHARK=$!
for _ in $(seq 1 100); do # until the capture runs (at most 10 s)
    grep -q "Capture started" "$TMP/tshark.log" 2>/dev/null && break
    kill -0 "$TSHARK" 2>/dev/null || break
    sleep 0.1
done
for _ in $(seq 1 10); do # traffic until 4 packets are captured
    kill -0 "$TSHARK" 2>/dev/null || break
    in_pod client ping -c 2 -i 0.2 -W 1 "$IP3" >/dev/null 2>&1
done
wait "$TSHARK" 2>/dev/null
DECODED=$(tshark -r "$TMP/vxlan.pcap" -Y vxlan -T fields -e vxlan.vni -e ip.src -e ip.dst 2>/dev/null | head -n 2)
while read -r line; do echo "      tshark: $line"; done <<<"$DECODED"
check "tshark decodes the underlay traffic as VXLAN VNI 1 carrying the pods' packets" \
    grep -q "^1[[:space:]]198.18.0.1,${CLIENT_IP}[[:space:]]198.18.0.3,${IP3}" <<<"$DECODED"

# A Linux kernel VXLAN endpoint configured the flannel way exchanges traffic with Tapestry.
KVX="$LAB-kvx"
ip netns add "$KVX"
ip -n "$KVX" link set lo up
ip link add name u200 netns "$LAB-underlay" type veth peer name eth0 netns "$KVX"
ip -n "$LAB-underlay" link set u200 master br0 up
ip -n "$KVX" addr add 198.18.0.200/24 dev eth0
ip -n "$KVX" link set eth0 up
ip -n "$KVX" link add flannel.1 type vxlan id 1 local 198.18.0.200 dstport 4789 nolearning dev eth0
ip -n "$KVX" link set flannel.1 address 0a:58:c6:12:00:c8 mtu 1450 up
ip -n "$KVX" addr add 10.244.200.0/32 dev flannel.1
ip -n "$KVX" link add cni0 type bridge
ip -n "$KVX" addr add 10.244.200.1/24 dev cni0
ip -n "$KVX" link set cni0 up
ip -n "$KVX" route add 10.244.1.0/24 via 10.244.1.0 dev flannel.1 onlink
ip -n "$KVX" neigh add 10.244.1.0 lladdr 0a:58:c6:12:00:01 dev flannel.1 nud permanent
ip netns exec "$KVX" bridge fdb append 0a:58:c6:12:00:01 dev flannel.1 dst 198.18.0.1
cat >"$TMP/kvx-node.yaml" <<'YAML'
apiVersion: v1
kind: Node
metadata:
  name: kernel-vxlan
spec:
  podCIDR: 10.244.200.0/24
status:
  underlayIP: 198.18.0.200
  vtepMAC: 0a:58:c6:12:00:c8
YAML
"$BIN/tapestry" apply -f "$TMP/kvx-node.yaml" >/dev/null
ok=1
for _ in $(seq 1 20); do
    ip netns exec "$KVX" ping -c 1 -W 1 -I 10.244.200.1 "$CLIENT_IP" >/dev/null 2>&1 && { ok=0; break; }
done
check "a kernel VXLAN node (flannel-style flannel.1) pings a Tapestry pod" test "$ok" -eq 0
check "a Tapestry pod pings the kernel VXLAN node's pod address" "${LABSH[@]}" exec client -- ping -c 2 -i 0.2 -W 2 10.244.200.1
check "TCP across the kernel VXLAN node: it curls a Tapestry pod" \
    bash -c "ip netns exec $KVX curl -s --max-time 3 --interface 10.244.200.1 http://$IP_B/ | grep -q 'pod=web-b .*client=10.244.200.1:'"

# --- the cluster state ------------------------------------------------------
cat >"$TMP/bad.yaml" <<'YAML'
apiVersion: v1
kind: Pod
metadata:
  name: bad
spec:
  containers:
    - name: web
      command: ["tapestry-web"]
      ports:
        - containerPort: 0
YAML
OUT=$("$BIN/tapestry" apply -f "$TMP/bad.yaml" 2>&1)
check "a wrong manifest is rejected, naming the field" grep -q "containerPort" <<<"$OUT"
check "get nodes lists the three nodes" bash -c "[ \$('$BIN/tapestry' get nodes | grep -c '^node') -eq 3 ]"
check "get pods -o yaml emits the pods" bash -c "'$BIN/tapestry' get pods -o yaml | grep -q 'kind: Pod'"

# A pod applied while the lab runs is reachable from another node within a second.
cat >"$TMP/late.yaml" <<'YAML'
apiVersion: v1
kind: Pod
metadata:
  name: late
spec:
  nodeName: node3
  containers:
    - name: web
      command: ["tapestry-web", "--port", "80"]
YAML
T0=$(now_ms)
"$BIN/tapestry" apply -f "$TMP/late.yaml" >/dev/null
LATE_IP=""
REACHED=""
while [ $(($(now_ms) - T0)) -lt 5000 ]; do
    if [ -z "$LATE_IP" ] || [ "$LATE_IP" = "-" ]; then LATE_IP=$(pod_ip late); fi
    if [ -n "$LATE_IP" ] && [ "$LATE_IP" != "-" ] && in_pod client ping -c 1 -W 1 "$LATE_IP" >/dev/null 2>&1; then
        REACHED=$(($(now_ms) - T0)); break
    fi
done
echo "      late pod $LATE_IP reachable from node1 after ${REACHED:-never} ms"
check "a pod applied while the lab runs is reachable from another node within a second" \
    test -n "$REACHED" -a "${REACHED:-99999}" -le 1000
T0=$(now_ms)
"$BIN/tapestry" delete pod late >/dev/null
GONE=""
while [ $(($(now_ms) - T0)) -lt 5000 ]; do
    if [ ! -e "/run/netns/$LAB-default-late" ]; then GONE=$(($(now_ms) - T0)); break; fi
done
echo "      late pod removed after ${GONE:-never} ms"
check "a deleted pod is removed within a second" test -n "$GONE" -a "${GONE:-99999}" -le 1000
check "the deleted pod no longer answers" bash -c "! ip netns exec $LAB-default-client ping -c 1 -W 1 $LATE_IP >/dev/null 2>&1"

# --- services and DNS -------------------------------------------------------
svc_ip() { "$BIN/tapestry" get services -A | awk -v n="$1" '$2 == n { print $4 }'; }
dig_c() { in_pod client dig +short "$@" 2>&1 | tr '\n' ' ' | sed 's/ $//'; }
VIP=$(svc_ip web)
check "web has a ClusterIP from 10.96.0.0/12 ($VIP)" bash -c "[[ '$VIP' == 10.9[6-9].* || '$VIP' == 10.10[0-9].* || '$VIP' == 10.11[01].* ]]"
check "kube-dns is at 10.96.0.10" test "$(svc_ip kube-dns)" = "10.96.0.10"
EPS=$("$BIN/tapestry" get endpoints | awk '$2 == "web" { print $3 }')
check "web's endpoints are its three ready replicas ($EPS)" test "$(echo "$EPS" | tr ',' '\n' | grep -c ':80$')" -eq 3
BACKENDS=""
LB_FAIL=0
for pod in client "$(web_on node2)" "$(web_on node3)"; do
    for _ in 1 2 3 4 5 6; do
        OUT=$(in_pod "$pod" curl -s --max-time 3 "http://$VIP/")
        if [[ "$OUT" == pod=web-* ]]; then BACKENDS="$BACKENDS ${OUT%% *}"; else LB_FAIL=$((LB_FAIL + 1)); fi
    done
done
check "18 requests to the ClusterIP from a pod on every node all answered" test "$LB_FAIL" -eq 0
check "answers came from more than one backend" test "$(echo "$BACKENDS" | tr ' ' '\n' | sort -u | grep -c .)" -ge 2
check "curl http://web from a pod (search path)" bash -c "ip netns exec $LAB-default-client curl -s --max-time 5 http://web/ | grep -q '^pod=web-'"
check "curl http://web.default.svc.cluster.local" bash -c "ip netns exec $LAB-default-client curl -s --max-time 5 http://web.default.svc.cluster.local/ | grep -q '^pod=web-'"
check "dig: A of the short name via search is the ClusterIP" test "$(dig_c +search web)" = "$VIP"
check "dig: names are case-insensitive" test "$(dig_c WEB.Default.SVC.Cluster.Local)" = "$VIP"
check "dig: SRV of the named port" test "$(dig_c SRV _http._tcp.web.default.svc.cluster.local)" = "0 100 80 web.default.svc.cluster.local."
check "dig: PTR of the ClusterIP" test "$(dig_c -x "$VIP")" = "web.default.svc.cluster.local."
READY=$("$BIN/tapestry" get endpoints | awk '$2 == "web-pods" { print $3 }' | tr ',' '\n' | cut -d: -f1 | sort | tr '\n' ' ' | sed 's/ $//')
check "dig: the headless service answers the ready pods ($READY)" test "$(in_pod client dig +short web-pods.default.svc.cluster.local | sort | tr '\n' ' ' | sed 's/ $//')" = "$READY"
IP_A=$(pod_ip web-a)
check "dig: a headless per-pod name (hostname.subdomain)" test "$(dig_c web-a.web-pods.default.svc.cluster.local)" = "$IP_A"
check "dig: PTR of that pod names it" test "$(dig_c -x "$IP_A")" = "web-a.web-pods.default.svc.cluster.local."
check "dig: a pod A record a-b-c-d.ns.pod" test "$(dig_c "${IP_A//./-}.default.pod.cluster.local")" = "$IP_A"
check "dig: no pod A record for an address no pod has" bash -c "ip netns exec $LAB-default-client dig 10-244-9-9.default.pod.cluster.local | grep -q 'status: NXDOMAIN'"
check "dig: ExternalName is a CNAME" test "$(dig_c docs.default.svc.cluster.local)" = "docs.example.org."
check "dig: dns-version TXT" test "$(dig_c TXT dns-version.cluster.local)" = '"1.1.0"'
check "dig: SRV of kube-dns's UDP port" test "$(dig_c SRV _dns._udp.kube-dns.kube-system.svc.cluster.local)" = "0 100 53 kube-dns.kube-system.svc.cluster.local."
check "dig: a name that does not exist is NXDOMAIN with the zone's SOA" \
    bash -c "ip netns exec $LAB-default-client dig nope.default.svc.cluster.local | grep -q 'status: NXDOMAIN' && ip netns exec $LAB-default-client dig nope.default.svc.cluster.local | grep -q 'IN.SOA.ns.dns.cluster.local'"
check "dig: names outside the cluster are refused (no upstream in the lab)" \
    bash -c "ip netns exec $LAB-default-client dig +tries=1 example.org | grep -q 'status: REFUSED'"
check "dig +tcp: DNS over TCP through the ClusterIP" test "$(dig_c +tcp web.default.svc.cluster.local)" = "$VIP"
for dnspod in tapestry-dns-1 tapestry-dns-2; do
    DIP=$("$BIN/tapestry" get pods -n kube-system | awk -v p="$dnspod" '$2 == p { print $5 }')
    check "both DNS pods answer: $dnspod ($DIP)" test "$(dig_c @"$DIP" web.default.svc.cluster.local)" = "$VIP"
done
T0=$(now_ms)
in_pod client getent ahosts web.default.svc.cluster.local >/dev/null
T1=$(now_ms)
echo "      getent ahosts (A and AAAA in parallel from one socket) took $((T1 - T0)) ms"
check "parallel A/AAAA lookups from one socket don't hit the 5 s conntrack race" test $((T1 - T0)) -lt 4000

cat >"$TMP/empty.yaml" <<'YAML'
apiVersion: v1
kind: Service
metadata:
  name: empty
spec:
  selector:
    app: nothing
  ports:
    - name: http
      port: 80
    - name: dns
      port: 53
      protocol: UDP
YAML
"$BIN/tapestry" apply -f "$TMP/empty.yaml" >/dev/null
EIP=$(svc_ip empty)
for _ in $(seq 1 50); do # until node1 has the new service (bounded): RST is "Couldn't connect"
    OUT=$(in_pod client curl -sS --max-time 1 "http://$EIP/" 2>&1)
    [[ "$OUT" == *"Couldn't connect"* ]] && break
done
echo "      curl http://$EIP/: $OUT"
check "a service with no endpoint refuses TCP at once (RST), not silence" grep -q "Couldn't connect\|refused" <<<"$OUT"
OUT=$(in_pod client dig +tries=1 +timeout=2 @"$EIP" web.default.svc.cluster.local 2>&1)
check "a service with no endpoint refuses UDP (ICMP port unreachable)" grep -q "connection refused" <<<"$OUT"
"$BIN/tapestry" delete svc empty >/dev/null

# A UDP service whose backends (the web pods) have no listener on the target port:
# the backend's kernel answers with ICMP port unreachable quoting client ->
# backend:9999, which the load balancer must rewrite to client -> ClusterIP:53 (as
# conntrack does for RELATED errors), or the client's socket never hears of it.
cat >"$TMP/noudp.yaml" <<'YAML'
apiVersion: v1
kind: Service
metadata:
  name: noudp
spec:
  selector:
    app: web
  ports:
    - name: dns
      port: 53
      targetPort: 9999
      protocol: UDP
YAML
"$BIN/tapestry" apply -f "$TMP/noudp.yaml" >/dev/null
NIP=$(svc_ip noudp)
N1SOCK="/run/tapestry/$LAB/nodes/node1/tapestryd.sock"
ICMP0=$("$BIN/tapestry" status --socket "$N1SOCK" --counter lb_icmp_errors)
# Until node1 has the service with its backends (bounded: 10 s). The ClusterIP may
# be the one `empty` just gave back, so until then node1 refuses it itself: the
# refusal counts only once node1 has rewritten a backend's ICMP error.
T0=$(now_ms)
while [ $(($(now_ms) - T0)) -lt 10000 ]; do
    OUT=$(in_pod client dig +tries=1 +timeout=1 @"$NIP" web.default.svc.cluster.local 2>&1)
    ICMP1=$("$BIN/tapestry" status --socket "$N1SOCK" --counter lb_icmp_errors)
    [[ "$OUT" == *"connection refused"* ]] && [ "$ICMP1" -gt "$ICMP0" ] && break
    sleep 0.1 # between polls of a bounded wait
done
echo "      dig @$NIP: $(grep -m1 -o 'communications error.*\|timed out.*' <<<"$OUT"); lb_icmp_errors on node1: $ICMP0 -> $ICMP1"
check "UDP to a ClusterIP whose backend does not listen: the backend's port unreachable reaches the client, rewritten (connection refused)" \
    bash -c "grep -q 'connection refused' <<<\"\$1\" && [ \"\$3\" -gt \"\$2\" ]" _ "$OUT" "$ICMP0" "$ICMP1"
# The same with 4,000 bytes: the client's kernel sends three IP fragments; the first
# (with the ports) is balanced, the others must follow it to the same backend.
OUT=$(ip netns exec "$LAB-default-client" bash -c "exec 3<>/dev/udp/$NIP/53; printf '%4000s' x >&3; read -r -t 3 -u 3 _" 2>&1 || true)
ICMP2=$("$BIN/tapestry" status --socket "$N1SOCK" --counter lb_icmp_errors)
check "a 4000-byte datagram to that ClusterIP crosses as IP fragments and is refused the same way" \
    bash -c "grep -q 'Connection refused' <<<\"\$1\" && [ \"\$3\" -gt \"\$2\" ]" _ "$OUT" "$ICMP1" "$ICMP2"
"$BIN/tapestry" delete svc noudp >/dev/null

# Deleting a web pod takes it out of DNS and the load balancer within a second,
# and no request fails after that.
GONE_POD=$(web_on node2)
GONE_IP=$(pod_ip "$GONE_POD")
T0=$(now_ms)
"$BIN/tapestry" delete pod "$GONE_POD" >/dev/null
OUT_OF_DNS=""
while [ $(($(now_ms) - T0)) -lt 5000 ]; do
    if ! in_pod client dig +short web-pods.default.svc.cluster.local | grep -qx "$GONE_IP"; then OUT_OF_DNS=$(($(now_ms) - T0)); break; fi
done
echo "      $GONE_POD ($GONE_IP) out of DNS after ${OUT_OF_DNS:-never} ms"
check "a deleted web pod leaves DNS within a second" test -n "$OUT_OF_DNS" -a "${OUT_OF_DNS:-99999}" -le 1000
BAD=0
for _ in $(seq 1 30); do
    OUT=$(in_pod client curl -s --max-time 2 "http://$VIP/")
    if [[ "$OUT" != pod=web-* ]] || [[ "$OUT" == "pod=$GONE_POD "* ]]; then BAD=$((BAD + 1)); fi
done
check "after that, 30 requests to the ClusterIP: none failed, none reached $GONE_POD" test "$BAD" -eq 0

# --- the CNI plugin, as a container runtime would call it ---------------------
CNI_NS="$LAB-cnitest"
ip netns add "$CNI_NS"
NETCONF="{\"cniVersion\":\"1.0.0\",\"name\":\"tapestry\",\"type\":\"tapestry-cni\",\"socket\":\"/run/tapestry/$LAB/nodes/node1/tapestryd.sock\"}"
cni() { # cni COMMAND: runs the plugin with CNI's environment and the config on stdin
    CNI_COMMAND=$1 CNI_CONTAINERID=cnitest-1 CNI_NETNS="/run/netns/$CNI_NS" CNI_IFNAME=eth0 \
        CNI_ARGS="K8S_POD_NAMESPACE=default;K8S_POD_NAME=cnitest" CNI_PATH="$BIN" "$BIN/tapestry-cni" <<<"$NETCONF"
}
OUT=$(cni ADD)
echo "      CNI ADD: $OUT"
CNI_IP=$(sed -n 's/.*"address":"\([0-9.]*\)\/24".*/\1/p' <<<"$OUT")
check "tapestry-cni ADD returns a CNI result with an address" test -n "$CNI_IP"
check "the CNI-attached namespace reaches its gateway and another pod" \
    bash -c "ip netns exec $CNI_NS ping -c 1 -W 2 10.244.1.1 >/dev/null && ip netns exec $CNI_NS ping -c 1 -W 2 $IP3 >/dev/null"
OUT=$(cni ADD)
check "tapestry-cni ADD again returns the same address" grep -q "\"$CNI_IP/24\"" <<<"$OUT"
check "tapestry-cni CHECK succeeds" cni CHECK
cni DEL
check "tapestry-cni DEL removes eth0" bash -c "! ip -n $CNI_NS link show eth0 >/dev/null 2>&1"
check "tapestry-cni DEL of what is gone succeeds" cni DEL
OUT=$(cni CHECK)
RC=$?
echo "      CNI CHECK after DEL: exit $RC, $OUT"
check "tapestry-cni CHECK of what is gone fails with a CNI error" bash -c "[ $RC -ne 0 ] && grep -q '\"code\":100' <<<'$OUT'"
check "tapestry-cni VERSION lists 1.0.0" bash -c "CNI_COMMAND=VERSION '$BIN/tapestry-cni' </dev/null | grep -q '\"1.0.0\"'"
ip netns del "$CNI_NS"

# --- agents ----------------------------------------------------------------
check "a second agent on the same state dir refuses to start" bash -c \
    "! ip netns exec $LAB-node1 '$BIN/tapestryd' --node node1 --pod-cidr 10.244.1.0/24 --state-dir /run/tapestry/$LAB/nodes/node1 2>$TMP/second.err && grep -q 'already' $TMP/second.err"
check "lab.sh up a second time is safe" bash -c "'${LABSH[0]}' --name $LAB --nodes 3 up >$TMP/up2.log 2>&1"
check "pods still answer after the second up" "${LABSH[@]}" exec client -- ping -c 1 -W 2 "$IP3"
check "up with another --nodes is refused while the lab is up" bash -c "! '${LABSH[0]}' --name $LAB --nodes 2 up >/dev/null 2>&1"

AGENT_PID=$(cat "/run/tapestry/$LAB/nodes/node1/tapestryd.pid")
kill -TERM "$AGENT_PID"
for _ in $(seq 1 50); do kill -0 "$AGENT_PID" 2>/dev/null || break; sleep 0.1; done
check "pod eth0 survives its agent (persistent TAP)" ip -n "$LAB-default-web-b" link show eth0
check "lab.sh up restarts the agent" bash -c "'${LABSH[0]}' --name $LAB --nodes 3 up >$TMP/up3.log 2>&1"
check "traffic resumes after the agent restarts" "${LABSH[@]}" exec client -- curl -s --max-time 3 "http://$IP3/"

"${LABSH[@]}" down >/dev/null 2>&1
check "down leaves no namespace of the lab" test -z "$(lab_netns)"
check "down leaves no process of the lab" test -z "$(lab_procs)"
check "down leaves no state directory" test ! -e "/run/tapestry/$LAB"

echo "e2e: $PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
