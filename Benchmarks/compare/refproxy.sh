# The "refproxy" column of run.sh (issue 13): the minimal C proxy of refproxy.c,
# built here with gcc and run in front of the same backends as every other
# proxy, one instance per row, with the same worker count. It is the ceiling:
# run.sh's report divides every proxy's figure by it ("ratio to refproxy").
# Sourced by run.sh (uses its TMP, HERE, HELPER, WORKERS, ports and start_bg).

REFPROXY_BIN=""

# build_refproxy: compiles refproxy.c into the temp dir. Sets STATUS[refproxy]
# to the reason when it cannot, so the run goes on without that column.
build_refproxy() {
    local cc="${CC:-gcc}"
    if ! command -v "$cc" >/dev/null 2>&1; then
        STATUS[refproxy]="n/a: no C compiler '$cc' (apt-get install -y gcc)"; return
    fi
    if ! "$cc" -O2 -pthread -o "$TMP/refproxy" "$HERE/refproxy.c" >"$TMP/refproxy.cc.log" 2>&1; then
        sed 's/^/    | /' "$TMP/refproxy.cc.log" >&2
        STATUS[refproxy]="n/a: refproxy.c did not compile"; return
    fi
    REFPROXY_BIN="$TMP/refproxy"
    STATUS[refproxy]=""
}

# start_refproxy: one refproxy per row run.sh measures (bulk -> iperf3, rr -> the
# HTTP backends, connrate -> the identity backends, the client address hashed
# over them). The idlemem row has no refproxy (its buffers are its whole cost).
start_refproxy() {
    build_refproxy
    [[ -z ${STATUS[refproxy]} ]] || return 0
    local role port targets=() p roles=()
    (( DO_BULK )) && roles+=(bulk)
    (( DO_RR )) && roles+=(rr)
    (( DO_CONNRATE )) && roles+=(connrate)
    for role in "${roles[@]}"; do
        case $role in
            bulk) port=${BULK_PORT[refproxy]}; targets=("127.0.0.1:$IPERF_PORT") ;;
            rr) port=${RR_PORT[refproxy]}; targets=()
                for p in "${BACKEND_PORTS[@]}"; do targets+=("127.0.0.1:$p"); done ;;
            connrate) port=${CONNRATE_PORT[refproxy]}; targets=()
                for p in "${STICKY_BACKEND_PORTS[@]}"; do targets+=("127.0.0.1:$p"); done ;;
        esac
        start_bg "refproxy-$role" "$REFPROXY_BIN" -w "$WORKERS" "127.0.0.1:$port" "${targets[@]}"
        case $role in
            bulk) BULK_PGID[refproxy]=$LAST_PID ;;
            rr) RR_PGID[refproxy]=$LAST_PID ;;
            connrate) CONNRATE_PGID[refproxy]=$LAST_PID ;;
        esac
        if ! python3 "$HELPER" wait-listen "$port" "$START_TIMEOUT" "$LAST_PID"; then
            tail_log "refproxy-$role"
            STATUS[refproxy]="n/a: failed to start"; return 0
        fi
    done
    if (( DO_RR )) && ! python3 "$HELPER" probe-http "${RR_PORT[refproxy]}" 3; then
        STATUS[refproxy]="n/a: does not forward HTTP to the backends"
    fi
}
