#!/usr/bin/env bash
# NetworkPolicy truth table, in the style of Kubernetes' upstream e2e netpol
# suite. Namespaces x, y, z (labelled ns=x, ns=y, ns=z) hold pods a, b, c
# (labelled pod=a, …), spread over three nodes so that every namespace and every
# pod name spans them all; each serves TCP and UDP on ports 80 and 81
# (`tapestry-probe serve`; container ports named serve-80-tcp, serve-81-udp, …),
# and Service x/s-a (a ClusterIP over x/a) is the tenth column. After every
# change each pod probes every column on TCP and UDP, 80 and 81, at once
# (`tapestry-probe probe`, 0.8 s each), until the observed table equals the one
# the case expects (a few seconds at most), or prints both and fails.
#
# The expected table is written the upstream way, from the case's description:
# start from "all allowed", then mark FROM -> TO cells denied or allowed by
# pattern (`np_deny 'y/*' 'x/a' 'tcp/*'`). Two rules hold for every case: a pod
# reaches itself (its own address never leaves its namespace; upstream's
# AllowLoopback), and the Service column equals the column of its backend x/a
# (policy judges the backend the load balancer picked, not the ClusterIP); x/a
# through its own Service (hairpin, masqueraded to the node) is not judged.
#
# Each case deletes its policies and waits for the table to be all allowed
# again; the last step removes the section's pods, Service and namespaces.
#
# Sourced by e2e.sh, which runs NETPOL_STEPS in its lab (LAB, BIN, TMP and the
# store set). Run alone, as root, it brings up its own three-node lab, runs the
# section and tears the lab down:  scripts/e2e_netpol.sh

NP_NAMESPACES=(x y z)
NP_PODS=(x/a x/b x/c y/a y/b y/c z/a z/b z/c)
NP_PORTS=(tcp/80 tcp/81 udp/80 udp/81)
NP_COLS=("${NP_PODS[@]}" svc)
# The Service column: Service s-a of namespace x, whose only backend is x/a.
NP_SVC_BACKEND=x/a
# Each probe's bound, and how long a table may take to match after a change.
NP_TIMEOUT_MS=800
NP_BOUND_MS=6000
declare -A NP_IP NP_NODE NP_EXP NP_OBS NP_RAW NP_TARGET

# --- the expected table ------------------------------------------------------------

# np_in NAME PATTERNS: NAME matches one of the space-separated globs PATTERNS.
np_in() {
    local pats p
    read -ra pats <<<"$2"
    for p in "${pats[@]}"; do
        # shellcheck disable=SC2053 # the right side is a glob on purpose
        [[ $1 == $p ]] && return 0
    done
    return 1
}
# np_expect_all V: every cell is V (`.` allowed, `X` denied).
np_expect_all() {
    local f t p
    for f in "${NP_PODS[@]}"; do
        for t in "${NP_PODS[@]}"; do
            for p in "${NP_PORTS[@]}"; do NP_EXP[$f|$t|$p]=$1; done
        done
    done
}
# np_set V FROM TO [PORTS]: the cells from a pod matching FROM to a pod matching
# TO, on a PROTO/PORT matching PORTS (default every one), become V.
np_set() {
    local v=$1 from=$2 to=$3 ports=${4:-*} f t p
    for f in "${NP_PODS[@]}"; do
        np_in "$f" "$from" || continue
        for t in "${NP_PODS[@]}"; do
            np_in "$t" "$to" || continue
            for p in "${NP_PORTS[@]}"; do
                np_in "$p" "$ports" && NP_EXP[$f|$t|$p]=$v
            done
        done
    done
}
np_deny() { np_set X "$@"; }
np_allow() { np_set . "$@"; }
# The rules every case shares: loopback, and the Service column (see the header).
np_expect_finish() {
    local f p
    for f in "${NP_PODS[@]}"; do
        for p in "${NP_PORTS[@]}"; do
            NP_EXP[$f|$f|$p]=.
            NP_EXP[$f|svc|$p]=${NP_EXP[$f|$NP_SVC_BACKEND|$p]}
        done
    done
    for p in "${NP_PORTS[@]}"; do NP_EXP[$NP_SVC_BACKEND|svc|$p]=-; done
}
# np_pods_on NODE: the section's pods the store places on NODE, space-separated.
np_pods_on() {
    local p out=()
    for p in "${NP_PODS[@]}"; do [ "${NP_NODE[$p]}" = "$1" ] && out+=("$p"); done
    echo "${out[*]}"
}

# --- probing -----------------------------------------------------------------------

# One round: every pod probes every column at once. Fills NP_OBS (`.` answered
# by the right pod, `X` not answered, `?` answered by another) and NP_RAW.
np_probe_round() {
    local targets=() c p spec i f outcome name want key
    NP_OBS=()
    NP_RAW=()
    for c in "${NP_COLS[@]}"; do
        for p in "${NP_PORTS[@]}"; do
            spec="${p%/*}:${NP_IP[$c]}:${p#*/}"
            targets+=("$spec")
            NP_TARGET[$spec]="$c|$p"
        done
    done
    i=0
    for f in "${NP_PODS[@]}"; do
        in_pod "$f" "$BIN/tapestry-probe" probe --timeout-ms "$NP_TIMEOUT_MS" "${targets[@]}" >"$TMP/np-probe.$i" 2>&1 &
        i=$((i + 1))
    done
    wait
    i=0
    for f in "${NP_PODS[@]}"; do
        while read -r spec outcome name; do
            [ -n "${NP_TARGET[$spec]:-}" ] || continue
            key="$f|${NP_TARGET[$spec]}"
            want=${NP_TARGET[$spec]%|*}
            [ "$want" = svc ] && want=$NP_SVC_BACKEND
            if [ "$outcome" != connected ]; then
                NP_OBS[$key]=X
            elif [ "$name" = "$want" ]; then
                NP_OBS[$key]=.
            else
                NP_OBS[$key]='?'
            fi
            NP_RAW[$key]="$outcome${name:+ $name}"
        done <"$TMP/np-probe.$i"
        i=$((i + 1))
    done
}
# np_mismatches: the cells where observed and expected differ (`-` is not judged).
np_mismatches() {
    local key n=0
    for key in "${!NP_EXP[@]}"; do
        [ "${NP_EXP[$key]}" = - ] && continue
        [ "${NP_OBS[$key]:-none}" = "${NP_EXP[$key]}" ] || n=$((n + 1))
    done
    echo "$n"
}
# np_differing N: the first N differing cells, "FROM TO PROTO/PORT OUTCOME", on one line.
np_differing() {
    local key n=0 cells=""
    for key in $(printf '%s\n' "${!NP_EXP[@]}" | sort); do
        [ "${NP_EXP[$key]}" = - ] && continue
        [ "${NP_OBS[$key]:-none}" = "${NP_EXP[$key]}" ] && continue
        cells+="${cells:+; }${key//|/ } ${NP_RAW[$key]:-nothing}"
        n=$((n + 1))
        [ "$n" -lt "$1" ] || break
    done
    echo "$cells"
}
# One round; a round that does not match is remembered in NP_MISSES (what the
# step prints if a later round matches: a late policy or a lost probe).
np_round_matches() {
    local n
    NP_ROUNDS=$((NP_ROUNDS + 1))
    np_probe_round
    n=$(np_mismatches)
    [ "$n" -eq 0 ] && return 0
    NP_MISSES+=("round $NP_ROUNDS: $n cells differ ($(np_differing 3))")
    return 1
}

# np_matrix TABLE PORT: one upstream-style matrix of TABLE (NP_EXP or NP_OBS),
# rows are from, columns are to: `.` allowed, `X` denied, `?` answered by another
# pod than the column's, `-` not judged, `!` no result.
np_matrix() {
    local -n table=$1
    local f c row
    row=$(printf '%-5s' "$2")
    for c in "${NP_COLS[@]}"; do row+=$(printf ' %-3s' "$c"); done
    echo "$row"
    for f in "${NP_PODS[@]}"; do
        row=$(printf '%-5s' "$f")
        for c in "${NP_COLS[@]}"; do row+=$(printf ' %-3s' "${table[$f|$c|$2]:-!}"); done
        echo "$row"
    done
}
# Prints expected and observed side by side for every PROTO/PORT that differs,
# then the raw outcome of the first differing cells.
np_print_tables() {
    local p key
    for p in "${NP_PORTS[@]}"; do
        local differ=0
        for key in "${!NP_EXP[@]}"; do
            [[ $key == *"|$p" ]] || continue
            [ "${NP_EXP[$key]}" = - ] && continue
            [ "${NP_OBS[$key]:-none}" = "${NP_EXP[$key]}" ] || differ=1
        done
        [ "$differ" -eq 1 ] || continue
        echo "      expected (rows from, columns to; . allowed, X denied)   observed"
        paste -d'|' <(np_matrix NP_EXP "$p") <(np_matrix NP_OBS "$p") |
            awk -F'|' '{ printf "      %-46s   %s\n", $1, $2 }'
    done
    np_differing 12 | tr ';' '\n' | sed 's/^ */      /'
}

# np_step WHAT: the expected table is complete; probe until it matches (bounded).
# Prints the time it took, or both tables.
np_step() {
    np_expect_finish
    local miss
    NP_ROUNDS=0
    NP_MISSES=()
    if POLL_SLEEP=0.05 poll_until "$NP_BOUND_MS" np_round_matches; then
        echo "      $1: table matched after $POLL_MS ms ($NP_ROUNDS probe rounds)"
        for miss in "${NP_MISSES[@]}"; do echo "        $miss"; done
        return 0
    fi
    echo "      $1: table still differs after $NP_BOUND_MS ms ($NP_ROUNDS probe rounds, $(np_mismatches) cells):"
    np_print_tables
    return 1
}

# --- objects -----------------------------------------------------------------------

# np_apply: applies the manifest on stdin.
np_apply() {
    cat >"$TMP/np-apply.yaml"
    tapestry apply -f "$TMP/np-apply.yaml" >/dev/null
}
np_namespace() { # np_namespace NS [EXTRA_LABEL]: Namespace NS labelled ns=NS (and EXTRA_LABEL)
    printf 'apiVersion: v1\nkind: Namespace\nmetadata:\n  name: %s\n  labels:\n    ns: %s\n' "$1" "$1"
    [ -z "${2:-}" ] || printf '    %s\n' "$2"
}
np_pod() { # np_pod NS NAME NODE
    cat <<YAML
apiVersion: v1
kind: Pod
metadata:
  name: $2
  namespace: $1
  labels:
    pod: $2
spec:
  nodeName: $3
  containers:
    - name: serve
      command: ["tapestry-probe", "serve", "--port", "80", "--port", "81"]
      ports:
        - {name: serve-80-tcp, containerPort: 80, protocol: TCP}
        - {name: serve-81-tcp, containerPort: 81, protocol: TCP}
        - {name: serve-80-udp, containerPort: 80, protocol: UDP}
        - {name: serve-81-udp, containerPort: 81, protocol: UDP}
YAML
}
np_service() {
    cat <<'YAML'
apiVersion: v1
kind: Service
metadata:
  name: s-a
  namespace: x
spec:
  selector:
    pod: a
  ports:
    - {name: tcp-80, port: 80, protocol: TCP}
    - {name: tcp-81, port: 81, protocol: TCP}
    - {name: udp-80, port: 80, protocol: UDP}
    - {name: udp-81, port: 81, protocol: UDP}
YAML
}
# Every policy of the section's namespaces is deleted and the namespaces get
# their own labels back.
np_reset_objects() {
    local ns name
    for ns in "${NP_NAMESPACES[@]}"; do
        for name in $(objects networkpolicies "$ns" | jq -r .metadata.name); do
            tapestry delete networkpolicy "$name" -n "$ns" >/dev/null
        done
    done
    for ns in "${NP_NAMESPACES[@]}"; do np_namespace "$ns"; echo ---; done | np_apply
}
# np_case STEP…: runs the case's steps (functions) in order, stopping at the
# first that fails, then deletes its policies and waits for an all-allowed table.
np_case() {
    local step ok=0
    for step in "$@"; do
        "$step" || { ok=1; break; }
    done
    np_reset_objects
    np_expect_all .
    np_step "cleanup: policies deleted, every pair allowed again" || ok=1
    return "$ok"
}

# --- setup and teardown ------------------------------------------------------------

setup_netpol() {
    local i ns name node p
    NP_T0=$(now_ms)
    {
        for ns in "${NP_NAMESPACES[@]}"; do np_namespace "$ns"; echo ---; done
        i=0
        for p in "${NP_PODS[@]}"; do
            ns=${p%/*} name=${p#*/}
            # A Latin square: each namespace and each pod name on all three nodes.
            node="node$(((i / 3 + i % 3) % 3 + 1))"
            np_pod "$ns" "$name" "$node"
            echo ---
            i=$((i + 1))
        done
        np_service
    } | np_apply
    tapestry wait --timeout 60 >/dev/null
    for ns in "${NP_NAMESPACES[@]}"; do
        while IFS=$'\t' read -r name ip node; do
            NP_IP[$ns/$name]=$ip
            NP_NODE[$ns/$name]=$node
        done < <(pods_tsv "$ns")
    done
    NP_IP[svc]=$(svc_ip s-a x)
    echo "      netpol pods:$(for p in "${NP_PODS[@]}"; do printf ' %s=%s@%s' "$p" "${NP_IP[$p]:-?}" "${NP_NODE[$p]:-?}"; done) svc=${NP_IP[svc]:-?}"
}

check_netpol_pods() {
    local p missing=0
    for p in "${NP_PODS[@]}" svc; do [ -n "${NP_IP[$p]:-}" ] && [ "${NP_IP[$p]}" != - ] || missing=1; done
    verdict "netpol: 9 probe pods in namespaces x, y, z over 3 nodes, and Service x/s-a over x/a" test "$missing" -eq 0
}

np_pods_gone() {
    local p
    for p in "${NP_PODS[@]}"; do [ ! -e "/run/netns/$(pod_ns "$p")" ] || return 1; done
}
np_teardown() {
    local ns
    np_reset_objects
    tapestry delete svc s-a -n x >/dev/null || return 1
    for ns in "${NP_NAMESPACES[@]}"; do tapestry delete pod a b c -n "$ns" >/dev/null || return 1; done
    POLL_SLEEP=0.1 poll_until 20000 np_pods_gone || return 1
    tapestry delete namespace "${NP_NAMESPACES[@]}" >/dev/null || return 1
    [ -z "$(objects pods x; objects pods y; objects pods z)" ]
}
check_netpol_teardown() {
    verdict "netpol: the section's pods, Service and namespaces are deleted" np_teardown
    echo "      netpol section took $((($(now_ms) - NP_T0) / 1000)) s"
}

# --- the cases -----------------------------------------------------------------------

np_no_policy() {
    np_expect_all .
    np_step "no policy"
}
check_netpol_no_policy() {
    verdict "netpol: no policy: every pod reaches every pod and the Service, TCP and UDP, 80 and 81" np_no_policy
}

np_deny_ingress() {
    np_apply <<'YAML'
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: deny-ingress
  namespace: x
spec:
  podSelector: {}
  policyTypes: [Ingress]
YAML
    np_expect_all .
    np_deny '*' 'x/*'
    np_step "default deny ingress in x"
}
check_netpol_deny_ingress() { verdict "netpol: default deny ingress" np_case np_deny_ingress; }

np_deny_egress() {
    np_apply <<'YAML'
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: deny-egress
  namespace: x
spec:
  podSelector: {}
  policyTypes: [Egress]
YAML
    np_expect_all .
    np_deny 'x/*' '*'
    np_step "default deny egress in x"
}
check_netpol_deny_egress() { verdict "netpol: default deny egress" np_case np_deny_egress; }

np_by_namespace() {
    np_apply <<'YAML'
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: allow-from-ns-y
  namespace: x
spec:
  podSelector: {}
  ingress:
    - from:
        - namespaceSelector:
            matchLabels:
              ns: y
YAML
    np_expect_all .
    np_deny '*' 'x/*'
    np_allow 'y/*' 'x/*'
    np_step "x admits namespace ns=y"
}
check_netpol_by_namespace() { verdict "netpol: allow by namespace label" np_case np_by_namespace; }

np_by_pod() {
    np_apply <<'YAML'
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: allow-b-to-a
  namespace: x
spec:
  podSelector:
    matchLabels:
      pod: a
  ingress:
    - from:
        - podSelector:
            matchLabels:
              pod: b
YAML
    np_expect_all .
    np_deny '*' 'x/a'
    np_allow 'x/b' 'x/a'
    np_step "x/a admits pod=b of its own namespace"
}
check_netpol_by_pod() { verdict "netpol: allow by pod label (own namespace only)" np_case np_by_pod; }

np_and() {
    np_apply <<'YAML'
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: allow-y-b-to-a
  namespace: x
spec:
  podSelector:
    matchLabels:
      pod: a
  ingress:
    - from:
        - namespaceSelector:
            matchLabels:
              ns: y
          podSelector:
            matchLabels:
              pod: b
YAML
    np_expect_all .
    np_deny '*' 'x/a'
    np_allow 'y/b' 'x/a'
    np_step "x/a admits one peer: ns=y AND pod=b"
}
check_netpol_and() { verdict "netpol: namespace and pod selectors in one peer (AND)" np_case np_and; }

np_or() {
    np_apply <<'YAML'
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: allow-y-or-b-to-a
  namespace: x
spec:
  podSelector:
    matchExpressions:
      - {key: pod, operator: In, values: [a]}
  ingress:
    - from:
        - namespaceSelector:
            matchExpressions:
              - {key: ns, operator: In, values: [y]}
        - podSelector:
            matchExpressions:
              - {key: pod, operator: NotIn, values: [a, c]}
YAML
    np_expect_all .
    np_deny '*' 'x/a'
    np_allow 'y/*' 'x/a'
    np_allow 'x/b' 'x/a'
    np_step "x/a admits two peers: ns In (y) OR pod NotIn (a, c) of x"
}
check_netpol_or() { verdict "netpol: namespace and pod selectors as two peers (OR), matchExpressions" np_case np_or; }

np_named_ports() {
    np_apply <<'YAML'
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: allow-named-ports
  namespace: x
spec:
  podSelector: {}
  ingress:
    - ports:
        - port: serve-81-tcp
        - port: serve-80-udp
          protocol: UDP
        # A TCP port's name with protocol UDP names no container port: nothing.
        - port: serve-81-tcp
          protocol: UDP
YAML
    np_expect_all .
    np_deny '*' 'x/*'
    np_allow '*' 'x/*' 'tcp/81 udp/80'
    np_step "x admits ports serve-81-tcp and serve-80-udp by name"
}
check_netpol_named_ports() { verdict "netpol: named ports, resolved per pod and protocol" np_case np_named_ports; }

np_end_port() {
    np_apply <<'YAML'
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: egress-port-ranges
  namespace: y
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
    - ports:
        - {protocol: TCP, port: 81, endPort: 90}
        - {protocol: UDP, port: 70, endPort: 80}
YAML
    np_expect_all .
    np_deny 'y/*' '*' 'tcp/80 udp/81'
    np_step "y sends only to TCP 81-90 and UDP 70-80"
}
check_netpol_end_port() { verdict "netpol: endPort ranges (egress)" np_case np_end_port; }

np_ipblock_ingress() {
    np_apply <<YAML
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: allow-pod-network-but-y-b
  namespace: x
spec:
  podSelector: {}
  ingress:
    - from:
        - ipBlock:
            cidr: 10.244.0.0/16
            except: [${NP_IP[y/b]}/32]
YAML
    np_expect_all .
    np_deny 'y/b' 'x/*'
    np_step "x admits 10.244.0.0/16 except y/b's ${NP_IP[y/b]}/32"
}
check_netpol_ipblock_ingress() { verdict "netpol: ipBlock with except (ingress, one pod excepted)" np_case np_ipblock_ingress; }

np_ipblock_egress() {
    local cidr
    cidr=$(objects nodes | jq -r 'select(.metadata.name == "node1") | .spec.podCIDR')
    np_apply <<YAML
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: egress-but-node1
  namespace: z
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
    - to:
        - ipBlock:
            cidr: 10.244.0.0/16
            except: [$cidr]
YAML
    np_expect_all .
    np_deny 'z/*' "$(np_pods_on node1)"
    np_step "z sends to 10.244.0.0/16 except node1's pods ($cidr: $(np_pods_on node1))"
}
check_netpol_ipblock_egress() { verdict "netpol: ipBlock with except (egress, a node's pod CIDR excepted)" np_case np_ipblock_egress; }

np_udp_only() {
    np_apply <<'YAML'
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: allow-udp-from-y
  namespace: x
spec:
  podSelector: {}
  ingress:
    - from:
        - namespaceSelector:
            matchLabels:
              ns: y
      ports:
        - protocol: UDP
YAML
    np_expect_all .
    np_deny '*' 'x/*'
    np_allow 'y/*' 'x/*' 'udp/*'
    np_step "x admits UDP (every port) from ns=y"
}
check_netpol_udp_only() { verdict "netpol: a UDP-only rule does not open TCP" np_case np_udp_only; }

np_stacked() {
    np_apply <<'YAML'
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: a-from-y-tcp-80
  namespace: x
spec:
  podSelector:
    matchLabels:
      pod: a
  ingress:
    - from:
        - namespaceSelector:
            matchLabels:
              ns: y
      ports:
        - {protocol: TCP, port: 80}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: a-from-z-c
  namespace: x
spec:
  podSelector:
    matchLabels:
      pod: a
  ingress:
    - from:
        - namespaceSelector:
            matchLabels:
              ns: z
          podSelector:
            matchLabels:
              pod: c
YAML
    np_expect_all .
    np_deny '*' 'x/a'
    np_allow 'y/*' 'x/a' 'tcp/80'
    np_allow 'z/c' 'x/a'
    np_step "x/a: (ns=y on TCP 80) + (z/c on every port)" || return 1
    tapestry delete networkpolicy a-from-z-c -n x >/dev/null
    np_deny 'z/c' 'x/a'
    np_step "one of the two deleted: z/c denied again" || return 1
    # Ingress allowed at x/a is not enough when the sender's egress denies it.
    np_apply <<'YAML'
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: y-b-sends-nothing
  namespace: y
spec:
  podSelector:
    matchLabels:
      pod: b
  policyTypes: [Egress]
YAML
    np_deny 'y/b' '*'
    np_step "and y/b's egress denied: ingress allowed at x/a is not enough"
}
check_netpol_stacked() { verdict "netpol: stacked policies are a union; ingress and egress both must allow" np_case np_stacked; }

np_label_change() {
    np_apply <<'YAML'
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: allow-team-blue
  namespace: x
spec:
  podSelector: {}
  ingress:
    - from:
        - namespaceSelector:
            matchLabels:
              team: blue
YAML
    np_expect_all .
    np_deny '*' 'x/*'
    np_step "x admits team=blue namespaces; none has the label" || return 1
    np_namespace y "team: blue" | np_apply
    np_allow 'y/*' 'x/*'
    np_step "namespace y re-applied with team=blue" || return 1
    np_namespace y | np_apply
    np_deny 'y/*' 'x/*'
    np_step "namespace y re-applied without it"
}
check_netpol_label_change() { verdict "netpol: a namespace label change is enforced both ways" np_case np_label_change; }

np_deletion() {
    np_apply <<'YAML'
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: deny-ingress
  namespace: y
spec:
  podSelector: {}
  policyTypes: [Ingress]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: deny-egress
  namespace: z
spec:
  podSelector: {}
  policyTypes: [Egress]
YAML
    np_expect_all .
    np_deny '*' 'y/*'
    np_deny 'z/*' '*'
    np_step "deny ingress in y, deny egress in z" || return 1
    tapestry delete networkpolicy deny-ingress -n y >/dev/null
    np_allow '*' 'y/*'
    np_deny 'z/*' '*'
    np_step "y's policy deleted: y reachable again" || return 1
    tapestry delete networkpolicy deny-egress -n z >/dev/null
    np_allow 'z/*' '*'
    np_step "z's policy deleted: z sends again"
}
check_netpol_deletion() { verdict "netpol: deleting a policy stops its enforcement" np_case np_deletion; }

np_service_traffic() {
    np_apply <<'YAML'
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: a-from-y
  namespace: x
spec:
  podSelector:
    matchLabels:
      pod: a
  ingress:
    - from:
        - namespaceSelector:
            matchLabels:
              ns: y
YAML
    np_expect_all .
    np_deny '*' 'x/a'
    np_allow 'y/*' 'x/a'
    np_step "backend x/a admits ns=y: the ClusterIP too, and only for y" || return 1
    tapestry delete networkpolicy a-from-y -n x >/dev/null
    np_apply <<'YAML'
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: z-sends-to-x-a
  namespace: z
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
    - to:
        - namespaceSelector:
            matchLabels:
              ns: x
          podSelector:
            matchLabels:
              pod: a
YAML
    np_expect_all .
    np_deny 'z/*' '*'
    np_allow 'z/*' 'x/a'
    np_step "z may send only to pod x/a: the ClusterIP is judged by its backend"
}
check_netpol_service() { verdict "netpol: service traffic is judged by its backend (ingress and egress)" np_case np_service_traffic; }

np_replies() {
    np_apply <<'YAML'
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: a-sends-nothing-admits-y
  namespace: x
spec:
  podSelector:
    matchLabels:
      pod: a
  policyTypes: [Ingress, Egress]
  ingress:
    - from:
        - namespaceSelector:
            matchLabels:
              ns: y
YAML
    np_expect_all .
    np_deny 'x/a' '*'
    np_deny '*' 'x/a'
    np_allow 'y/*' 'x/a'
    np_step "x/a: egress denied, ingress from ns=y: y's connections get their answers"
}
check_netpol_replies() { verdict "netpol: replies pass under an egress default deny" np_case np_replies; }

# shellcheck disable=SC2034 # run by e2e.sh or below
NETPOL_STEPS=(
    setup_netpol check_netpol_pods check_netpol_no_policy
    check_netpol_deny_ingress check_netpol_deny_egress check_netpol_by_namespace
    check_netpol_by_pod check_netpol_and check_netpol_or check_netpol_named_ports
    check_netpol_end_port check_netpol_ipblock_ingress check_netpol_ipblock_egress
    check_netpol_udp_only check_netpol_stacked check_netpol_label_change
    check_netpol_deletion check_netpol_service check_netpol_replies
    check_netpol_teardown
)

# --- run alone ---------------------------------------------------------------------

np_main() {
    LAB="np$$"
    LAB=${LAB:0:12}
    BIN="$REPO/target/release"
    export TAPESTRY_STORE="/run/tapestry/$LAB/store"
    TMP=$(mktemp -d)
    trap '"$REPO/scripts/lab.sh" --name "$LAB" down >/dev/null 2>&1; rm -rf "$TMP"' EXIT INT TERM
    need_root e2e_netpol.sh
    if "$REPO/scripts/lab.sh" --name "$LAB" --nodes 3 up >"$TMP/up.log" 2>&1; then
        pass "lab.sh --nodes 3 up ($LAB)"
    else
        fail "lab.sh --nodes 3 up (log follows)"
        cat "$TMP/up.log"
        return 1
    fi
    local step
    for step in "${NETPOL_STEPS[@]}"; do "$step"; done
    echo "e2e_netpol: $PASSED passed, $FAILED failed"
    [ "$FAILED" -eq 0 ]
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    set -uo pipefail
    REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
    # shellcheck source-path=SCRIPTDIR source=lib.sh
    source "$REPO/scripts/lib.sh"
    case "${1:-}" in
        "") np_main ;;
        -h | --help) usage_of "$0" ;;
        *) usage_of "$0" >&2; echo "e2e_netpol.sh: unknown argument '$1'" >&2; exit 2 ;;
    esac
fi
