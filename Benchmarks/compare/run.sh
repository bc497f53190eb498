#!/usr/bin/env bash
# stickyd vs HAProxy vs nginx, side by side, as a ratio to a direct connection.
#
# This is `make bench` (issue 2 item 9; issue 3 adds the sticky connection-rate row).
# In one run it starts, all on 127.0.0.1 and on free ports:
#   - an iperf3 server, and one nginx instance serving `return 200 "ok"` on N ports
#     (the backends);
#   - the proxies in front of them: stickyd --engine splice, stickyd --engine copy,
#     HAProxy 2.6 (mode tcp, option splice-auto) and nginx 1.22 stream, each with the
#     same number of workers/threads (--workers, default 2) and the same backends;
# and measures, interleaved round by round (column order rotates every round):
#   bulk_up    iperf3, one stream, client->server, Gbit/s
#   bulk_down  iperf3 -R, one stream, server->client, Gbit/s
#   rr         wrk keep-alive small requests, req/s and p99 latency
# then prints a table (values, ratio to direct) and writes JSON (--json / $BENCH_JSON).
#
# Everything it starts is stopped at exit (each in its own process group); all files
# go to a temp dir, removed at exit unless --keep.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
HELPER="$HERE/bench.py"

DURATION=5
ROUNDS=3
ONLY="all"
JSON_OUT="${BENCH_JSON:-}"
STICKYD_BIN="${STICKYD_BIN:-.build/release/stickyd}"
STICKYD_EXTRA_ARGS="${STICKYD_EXTRA_ARGS:-}"
WORKERS=2
BACKENDS=2
CONNS=32
THREADS=1
KEEP=0
NGINX_MODDIR="${NGINX_MODDIR:-/usr/lib/nginx/modules}"

usage() {
    cat <<EOF
usage: Benchmarks/compare/run.sh [options]

  --duration S     seconds per measurement (default $DURATION)
  --rounds N       interleaved rounds; values are medians over rounds (default $ROUNDS)
  --only LIST      bulk, rr, connrate or all; comma-separated (default all)
  --json PATH      also write the results as JSON (default \$BENCH_JSON, if set)
  --stickyd PATH   stickyd binary (default \$STICKYD_BIN or .build/release/stickyd,
                   relative to the repo root); missing -> stickyd columns show n/a
  --workers N      workers/threads for every proxy and the backends (default $WORKERS)
  --backends N     nginx HTTP backends for the rr row, 1-3 (default $BACKENDS)
  --conns N        wrk connections (default $CONNS); --threads N wrk threads (default $THREADS)
  --keep           keep the temp dir (configs, logs, raw outputs)
  -h, --help       this text

Environment: STICKYD_BIN, STICKYD_EXTRA_ARGS (appended to stickyd's command line),
BENCH_JSON, NGINX_MODDIR (default /usr/lib/nginx/modules).
A full default run takes about 3 rows x 5 columns x duration x rounds + ~20 s = ~4 min.
Loopback figures on a small VM are noisy (single runs vary by 10-20 %): keep the
machine otherwise idle, and prefer more rounds to longer ones.
EOF
}

while [[ $# -gt 0 ]]; do
    case "$1" in
        --duration) DURATION="$2"; shift 2 ;;
        --duration=*) DURATION="${1#*=}"; shift ;;
        --rounds) ROUNDS="$2"; shift 2 ;;
        --rounds=*) ROUNDS="${1#*=}"; shift ;;
        --only) ONLY="$2"; shift 2 ;;
        --only=*) ONLY="${1#*=}"; shift ;;
        --json) JSON_OUT="$2"; shift 2 ;;
        --json=*) JSON_OUT="${1#*=}"; shift ;;
        --stickyd) STICKYD_BIN="$2"; shift 2 ;;
        --stickyd=*) STICKYD_BIN="${1#*=}"; shift ;;
        --workers) WORKERS="$2"; shift 2 ;;
        --workers=*) WORKERS="${1#*=}"; shift ;;
        --backends) BACKENDS="$2"; shift 2 ;;
        --backends=*) BACKENDS="${1#*=}"; shift ;;
        --conns) CONNS="$2"; shift 2 ;;
        --conns=*) CONNS="${1#*=}"; shift ;;
        --threads) THREADS="$2"; shift 2 ;;
        --threads=*) THREADS="${1#*=}"; shift ;;
        --keep) KEEP=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "run.sh: unknown option: $1 (see --help)" >&2; exit 2 ;;
    esac
done

die() { echo "run.sh: error: $*" >&2; exit 1; }
log() { echo "[bench] $*" >&2; }

for v in DURATION ROUNDS WORKERS BACKENDS CONNS THREADS; do
    [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || die "--${v,,} must be a positive integer, got '${!v}'"
done
(( BACKENDS <= 3 )) || die "--backends must be 1-3"

DO_BULK=0; DO_RR=0; DO_CONNRATE=0
IFS=',' read -r -a _only <<<"$ONLY"
for o in "${_only[@]}"; do
    case "$o" in
        all) DO_BULK=1; DO_RR=1; DO_CONNRATE=1 ;;
        bulk) DO_BULK=1 ;;
        rr) DO_RR=1 ;;
        connrate) DO_CONNRATE=1 ;;
        *) die "--only takes bulk, rr, connrate or all (got '$o')" ;;
    esac
done

# ---------------------------------------------------------------- tools
need() { # need BINARY APT-PACKAGE
    command -v "$1" >/dev/null 2>&1 || die "'$1' not found; install it with: apt-get install -y $2"
}
need python3 python3
need timeout coreutils
need setsid util-linux
need iperf3 iperf3
need wrk wrk
need haproxy haproxy
if ! command -v nginx >/dev/null 2>&1; then
    [[ -x /usr/sbin/nginx ]] && PATH="$PATH:/usr/sbin" || die "'nginx' not found; install it with: apt-get install -y nginx"
fi
[[ -f "$NGINX_MODDIR/ngx_stream_module.so" ]] \
    || die "$NGINX_MODDIR/ngx_stream_module.so not found; install it with: apt-get install -y libnginx-mod-stream"

case "$STICKYD_BIN" in /*) ;; *) STICKYD_BIN="$ROOT/$STICKYD_BIN" ;; esac

# ---------------------------------------------------------------- processes, cleanup
TMP="$(mktemp -d "${TMPDIR:-/tmp}/stickyd-bench.XXXXXX")"
PIDS=()
NAMES=()

cleanup() {
    local rc=$? i pid
    trap - EXIT INT TERM
    [[ -n "${CLIENT_PID:-}" ]] && kill -TERM "$CLIENT_PID" 2>/dev/null
    for i in "${!PIDS[@]}"; do
        kill -TERM -- "-${PIDS[$i]}" 2>/dev/null || kill -TERM "${PIDS[$i]}" 2>/dev/null || true
    done
    # bounded wait for them to go, then SIGKILL whatever is left of each group
    for _ in $(seq 1 30); do
        local left=0
        for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && left=1; done
        (( left )) || break
        sleep 0.1
    done
    for pid in "${PIDS[@]}"; do
        kill -KILL -- "-$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if (( KEEP )); then log "kept $TMP"; else rm -rf "$TMP"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start_bg NAME CMD... : start CMD in its own process group, output to $TMP/NAME.log;
# sets LAST_PID.
start_bg() {
    local name="$1"; shift
    setsid "$@" >"$TMP/$name.log" 2>&1 </dev/null &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
    NAMES+=("$name")
}

# run_client CMD... : run a measuring client in the background and wait for it, so that
# INT/TERM reach the traps at once instead of after the client finishes.
CLIENT_PID=""
run_client() {
    local rc=0
    "$@" &
    CLIENT_PID=$!
    wait "$CLIENT_PID" || rc=$?
    CLIENT_PID=""
    return "$rc"
}

tail_log() { sed 's/^/    | /' "$TMP/$1.log" 2>/dev/null | tail -n 15 >&2 || true; }

# as many descriptors as we may have; the proxies' connection limits are sized from it
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)
[[ $NOFILE == unlimited ]] && NOFILE=1048576
WORKER_CONNS=$(( NOFILE / 2 > 65536 ? 65536 : NOFILE / 2 ))
# HAProxy needs ~2.5 fds a connection with splicing (2 sockets + maxconn/4 pipes)
HAPROXY_MAXCONN=$(( NOFILE / 3 - 500 > 100000 ? 100000 : NOFILE / 3 - 500 ))
(( HAPROXY_MAXCONN >= 1000 )) || die "open-file limit too low ($NOFILE); need at least 4096"

# ---------------------------------------------------------------- ports
NPORTS=$(( 1 + BACKENDS + 8 ))
mapfile -t P < <(python3 "$HELPER" ports "$NPORTS")
(( ${#P[@]} == NPORTS )) || die "could not allocate $NPORTS free ports"
IPERF_PORT=${P[0]}
BACKEND_PORTS=("${P[@]:1:$BACKENDS}")
i=$(( 1 + BACKENDS ))
declare -A BULK_PORT RR_PORT STATUS
# process groups of each column's proxy, for its CPU time (direct: none)
declare -A BULK_PGID RR_PGID
COLUMNS=(direct stickyd-splice stickyd-copy haproxy nginx)
BULK_PORT[direct]=$IPERF_PORT
RR_PORT[direct]=${BACKEND_PORTS[0]}
for c in stickyd-splice stickyd-copy haproxy nginx; do
    BULK_PORT[$c]=${P[$i]}; RR_PORT[$c]=${P[$((i + 1))]}; i=$((i + 2))
done

# ---------------------------------------------------------------- backends
START_TIMEOUT=15

start_backends() {
    start_bg iperf3 iperf3 -s -B 127.0.0.1 -p "$IPERF_PORT"
    python3 "$HELPER" wait-listen "$IPERF_PORT" "$START_TIMEOUT" "$LAST_PID" \
        || { tail_log iperf3; die "iperf3 server did not start"; }

    local servers="" p
    for p in "${BACKEND_PORTS[@]}"; do
        servers+="    server {
        listen 127.0.0.1:$p;
        location / { return 200 \"ok\"; }
    }
"
    done
    python3 "$HELPER" render "$HERE/nginx-backends.conf.tmpl" "$TMP/nginx-backends.conf" \
        "DIR=$TMP" "WORKERS=$WORKERS" "SERVERS=$servers" \
        "NOFILE=$NOFILE" "WORKER_CONNS=$WORKER_CONNS"
    nginx -t -q -e "$TMP/nginx-backends.startup.log" -c "$TMP/nginx-backends.conf" -p "$TMP/" \
        >"$TMP/nginx-backends.t.log" 2>&1 \
        || { cat "$TMP/nginx-backends.t.log" >&2; die "nginx backends config rejected"; }
    start_bg nginx-backends nginx -e "$TMP/nginx-backends.startup.log" -g 'daemon off;' \
        -c "$TMP/nginx-backends.conf" -p "$TMP/"
    local pid=$LAST_PID
    for p in "${BACKEND_PORTS[@]}"; do
        python3 "$HELPER" wait-listen "$p" "$START_TIMEOUT" "$pid" \
            || { tail_log nginx-backends; die "nginx backends did not start"; }
        python3 "$HELPER" probe-http "$p" 3 || die "nginx backend on port $p does not answer"
    done
}

# ---------------------------------------------------------------- proxies
# Each start_* sets STATUS[col] to "" when the column is usable, or to the reason why not.

start_haproxy() {
    local servers="" n=1 p
    for p in "${BACKEND_PORTS[@]}"; do
        servers+="    server b$n 127.0.0.1:$p"$'\n'; n=$((n + 1))
    done
    python3 "$HELPER" render "$HERE/haproxy.cfg.tmpl" "$TMP/haproxy.cfg" \
        "DIR=$TMP" "WORKERS=$WORKERS" "IPERF_PORT=$IPERF_PORT" "MAXCONN=$HAPROXY_MAXCONN" \
        "BULK_PORT=${BULK_PORT[haproxy]}" "RR_PORT=${RR_PORT[haproxy]}" "RR_SERVERS=$servers"
    if ! haproxy -c -q -f "$TMP/haproxy.cfg" >"$TMP/haproxy.check.log" 2>&1; then
        sed 's/^/    | /' "$TMP/haproxy.check.log" >&2
        STATUS[haproxy]="n/a: config rejected by haproxy -c"; return
    fi
    start_bg haproxy haproxy -db -f "$TMP/haproxy.cfg"
    local pid=$LAST_PID
    BULK_PGID[haproxy]=$pid; RR_PGID[haproxy]=$pid
    if python3 "$HELPER" wait-listen "${BULK_PORT[haproxy]}" "$START_TIMEOUT" "$pid" &&
       python3 "$HELPER" wait-listen "${RR_PORT[haproxy]}" "$START_TIMEOUT" "$pid"; then
        STATUS[haproxy]=""
    else
        tail_log haproxy; STATUS[haproxy]="n/a: failed to start"
    fi
}

start_nginx_stream() {
    local servers="" p
    for p in "${BACKEND_PORTS[@]}"; do servers+="        server 127.0.0.1:$p;"$'\n'; done
    python3 "$HELPER" render "$HERE/nginx-stream.conf.tmpl" "$TMP/nginx-stream.conf" \
        "DIR=$TMP" "WORKERS=$WORKERS" "MODDIR=$NGINX_MODDIR" "IPERF_PORT=$IPERF_PORT" \
        "NOFILE=$NOFILE" "WORKER_CONNS=$WORKER_CONNS" \
        "BULK_PORT=${BULK_PORT[nginx]}" "RR_PORT=${RR_PORT[nginx]}" "RR_SERVERS=$servers"
    if ! nginx -t -q -e "$TMP/nginx-stream.startup.log" -c "$TMP/nginx-stream.conf" -p "$TMP/" \
            >"$TMP/nginx-stream.t.log" 2>&1; then
        sed 's/^/    | /' "$TMP/nginx-stream.t.log" >&2
        STATUS[nginx]="n/a: config rejected by nginx -t"; return
    fi
    start_bg nginx-stream nginx -e "$TMP/nginx-stream.startup.log" -g 'daemon off;' \
        -c "$TMP/nginx-stream.conf" -p "$TMP/"
    local pid=$LAST_PID
    BULK_PGID[nginx]=$pid; RR_PGID[nginx]=$pid
    if python3 "$HELPER" wait-listen "${BULK_PORT[nginx]}" "$START_TIMEOUT" "$pid" &&
       python3 "$HELPER" wait-listen "${RR_PORT[nginx]}" "$START_TIMEOUT" "$pid"; then
        STATUS[nginx]=""
    else
        tail_log nginx-stream; STATUS[nginx]="n/a: failed to start"
    fi
}

# stickyd's quick mode makes one pool, so each engine runs two instances: one in front
# of the iperf3 server (bulk rows) and one in front of the HTTP backends (rr row).
start_stickyd() { # start_stickyd ENGINE
    local engine="$1" col="stickyd-$1" role port targets=() p
    if [[ ! -x "$STICKYD_BIN" ]]; then
        STATUS[$col]="n/a: no stickyd binary at $STICKYD_BIN"; return
    fi
    # shellcheck disable=SC2206
    local extra=($STICKYD_EXTRA_ARGS)
    for role in bulk rr; do
        if [[ $role == bulk ]]; then
            port=${BULK_PORT[$col]}; targets=(--target "127.0.0.1:$IPERF_PORT")
        else
            port=${RR_PORT[$col]}; targets=()
            for p in "${BACKEND_PORTS[@]}"; do targets+=(--target "127.0.0.1:$p"); done
        fi
        # Several instances run at once: each gets its own admin socket and
        # state directory instead of the shared defaults under /run and /var/lib.
        start_bg "$col-$role" "$STICKYD_BIN" --listen "127.0.0.1:$port" "${targets[@]}" \
            --engine "$engine" --workers "$WORKERS" \
            --admin-socket "$TMP/$col-$role.sock" --state-dir "$TMP/$col-$role-state" "${extra[@]}"
        if [[ $role == bulk ]]; then BULK_PGID[$col]=$LAST_PID; else RR_PGID[$col]=$LAST_PID; fi
        if ! python3 "$HELPER" wait-listen "$port" "$START_TIMEOUT" "$LAST_PID" \
                "$TMP/$col-$role.log" ready; then
            tail_log "$col-$role"
            STATUS[$col]="n/a: failed to start (--engine $engine)"; return
        fi
    done
    if [[ $DO_RR == 1 ]] && ! python3 "$HELPER" probe-http "${RR_PORT[$col]}" 3; then
        STATUS[$col]="n/a: does not forward HTTP to the backends"; return
    fi
    STATUS[$col]=""
}

# ---------------------------------------------------------------- measurements
RESULTS="$TMP/samples.jsonl"
: >"$RESULTS"
MEASURE_TIMEOUT=$(( DURATION + 30 ))

measure_bulk() { # measure_bulk COLUMN up|down ROUND
    local col="$1" dir="$2" round="$3" out="$TMP/iperf-$1-$2-$3.json" v rflag=()
    [[ $dir == down ]] && rflag=(-R)
    local pg="${BULK_PGID[$col]:-}" c0 c1 cpu=()
    c0=$(python3 "$HELPER" cpu $pg)
    if run_client timeout -k 5 "$MEASURE_TIMEOUT" iperf3 -c 127.0.0.1 -p "${BULK_PORT[$col]}" -P 1 \
            -t "$DURATION" --connect-timeout 3000 -J "${rflag[@]}" >"$out" 2>"$out.err" &&
       v=$(python3 "$HELPER" parse-iperf "$out" 2>>"$out.err"); then
        c1=$(python3 "$HELPER" cpu $pg)
        [[ -n $pg ]] && cpu=(cpu_s="$(python3 -c "print(round($c1 - $c0, 3))")")
        log "round $round  bulk_$dir  $(printf '%-15s' "$col") $v Gbit/s${pg:+  proxy CPU ${cpu[0]#cpu_s=} s}"
        python3 "$HELPER" record "$RESULTS" scenario="bulk_$dir" column="$col" round="$round" \
            value="$v" ok=1 duration_s="$DURATION" "${cpu[@]}"
    else
        local err; err=$(tail -n 1 "$out.err" 2>/dev/null | tr -d '"' | cut -c1-200)
        [[ -n $err ]] || err=$(python3 "$HELPER" parse-iperf "$out" 2>&1 | tail -n 1 | cut -c1-200)
        log "round $round  bulk_$dir  $(printf '%-15s' "$col") FAILED: $err"
        python3 "$HELPER" record "$RESULTS" scenario="bulk_$dir" column="$col" round="$round" \
            value=0 ok=0 error="${err:-iperf3 failed}"
    fi
}

measure_rr() { # measure_rr COLUMN ROUND
    local col="$1" round="$2" out="$TMP/wrk-$1-$2.txt" v rps p99 errs
    local pg="${RR_PGID[$col]:-}" c0 c1 cpu=()
    c0=$(python3 "$HELPER" cpu $pg)
    if run_client timeout -k 5 "$MEASURE_TIMEOUT" wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" --timeout 5s \
            -s "$HERE/wrk-report.lua" "http://127.0.0.1:${RR_PORT[$col]}/" >"$out" 2>&1 &&
       v=$(python3 "$HELPER" parse-wrk "$out" 2>>"$out"); then
        c1=$(python3 "$HELPER" cpu $pg)
        [[ -n $pg ]] && cpu=(cpu_s="$(python3 -c "print(round($c1 - $c0, 3))")")
        read -r rps p99 errs <<<"$v"
        log "round $round  rr         $(printf '%-15s' "$col") $rps req/s  p99 $p99 ms  errors $errs${pg:+  proxy CPU ${cpu[0]#cpu_s=} s}"
        python3 "$HELPER" record "$RESULTS" scenario=rr column="$col" round="$round" \
            value="$rps" p99_ms="$p99" errors="$errs" ok=1 duration_s="$DURATION" "${cpu[@]}"
    else
        local err; err=$(tail -n 1 "$out" | tr -d '"' | cut -c1-200)
        log "round $round  rr         $(printf '%-15s' "$col") FAILED: $err"
        python3 "$HELPER" record "$RESULTS" scenario=rr column="$col" round="$round" \
            value=0 ok=0 error="${err:-wrk failed}"
    fi
}

# ================================================================ HOOK: issue 3
# Sticky connection-rate row ("new connections/s, 10k client IPs, sticky";
# DESIGN.md: HAProxy 0.50, nginx 0.51, stickyd target >= 0.75).
# NOT BUILT YET -- it belongs to issue 3, which also ships the affinity benchmark tool
# (`stickyctl bench` or its own executable). To fill it in:
#   1. give each proxy a third listener in front of the same HTTP (or plain TCP echo)
#      backends, configured for stickiness on the client address:
#        - stickyd: its sticky pool (client-IP affinity, /32 mask);
#        - HAProxy: backend with `stick-table type ip size 20k expire 3h` + `stick on src`
#          (see the note at the end of haproxy.cfg.tmpl);
#        - nginx: `upstream { hash $remote_addr consistent; ... }`
#          (see the note at the end of nginx-stream.conf.tmpl);
#      and allocate ports for them next to BULK_PORT/RR_PORT (CONNRATE_PORT[col]);
#   2. for each column (direct = one backend, no balancer), run the affinity bench tool:
#      short connections from >= 10k distinct source IPs in 127.0.0.0/8, fixed
#      concurrency, for $DURATION s, with --json;
#   3. record scenario=connrate value=<conn/s> (plus p99, violations, spread) per column
#      and round with `bench.py record`, exactly as measure_rr does; bench.py already
#      knows the "connrate" scenario and prints it with its ratio to direct.
# Until then it records nothing and the report shows the row as "-".
CONNRATE_PLACEHOLDER="issue 3 (sticky connection-rate row, 10k client IPs) not built yet"
bench_sticky_connrate() { # bench_sticky_connrate COLUMN ROUND
    return 0
}
# ================================================================ end of hook

# ---------------------------------------------------------------- run
log "temp dir $TMP; duration ${DURATION}s x $ROUNDS rounds; workers $WORKERS;" \
    "backends $BACKENDS; wrk -t$THREADS -c$CONNS"
LOAD1=$(cut -d' ' -f1 /proc/loadavg)
if python3 -c "import sys; sys.exit(0 if float('$LOAD1') > 0.5 else 1)"; then
    log "warning: 1-minute load average is $LOAD1; something else is running, figures will be noisy"
fi
start_backends
start_stickyd splice
start_stickyd copy
start_haproxy
start_nginx_stream

ACTIVE=()
for c in "${COLUMNS[@]}"; do
    if [[ $c == direct || -z "${STATUS[$c]:-}" ]]; then ACTIVE+=("$c"); else log "$c: ${STATUS[$c]}"; fi
done
STATUS[direct]=""

T0=$(date +%s)
for (( r = 1; r <= ROUNDS; r++ )); do
    # rotate the column order each round, so no column always runs first or last
    n=${#ACTIVE[@]}
    order=()
    for (( k = 0; k < n; k++ )); do order+=("${ACTIVE[$(( (k + r - 1) % n ))]}"); done
    if (( DO_BULK )); then
        for c in "${order[@]}"; do measure_bulk "$c" up "$r"; sleep 0.3; done
        for c in "${order[@]}"; do measure_bulk "$c" down "$r"; sleep 0.3; done
    fi
    if (( DO_RR )); then
        for c in "${order[@]}"; do measure_rr "$c" "$r"; sleep 0.3; done
    fi
    if (( DO_CONNRATE )); then
        for c in "${order[@]}"; do bench_sticky_connrate "$c" "$r"; done
    fi
done
T1=$(date +%s)

# ---------------------------------------------------------------- report
ver() { "$@" 2>&1 | head -n 1 | tr -d '"\\' || true; }
STICKYD_VERSION="n/a"
if [[ -x "$STICKYD_BIN" ]]; then
    STICKYD_VERSION=$(timeout 5 "$STICKYD_BIN" --version 2>/dev/null </dev/null) && \
        STICKYD_VERSION=$(head -n 1 <<<"$STICKYD_VERSION" | tr -d '"\\') || STICKYD_VERSION="unknown"
fi
export B_DURATION=$DURATION B_ROUNDS=$ROUNDS B_WORKERS=$WORKERS B_BACKENDS=$BACKENDS \
    B_CONNS=$CONNS B_THREADS=$THREADS B_STICKYD_BIN=$STICKYD_BIN B_ELAPSED=$((T1 - T0)) \
    B_DO_CONNRATE=$DO_CONNRATE B_LOAD1=$LOAD1 B_CONNRATE_NOTE="$CONNRATE_PLACEHOLDER" \
    B_V_HAPROXY="$(ver haproxy -v)" B_V_NGINX="$(ver nginx -v)" B_V_IPERF="$(ver iperf3 --version)" \
    B_V_WRK="$(ver wrk --version)" B_V_STICKYD="$STICKYD_VERSION"
for c in "${COLUMNS[@]}"; do export "B_STATUS_${c//-/_}=${STATUS[$c]:-}"; done
python3 - "$TMP/meta.json" <<'EOF'
import json, os, platform, sys, time
e = os.environ
cols = ["direct", "stickyd-splice", "stickyd-copy", "haproxy", "nginx"]
meta = {
    "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    "host": platform.node(), "kernel": platform.release(), "cpus": os.cpu_count(),
    "duration_s": int(e["B_DURATION"]), "rounds": int(e["B_ROUNDS"]),
    "workers": int(e["B_WORKERS"]), "backends": int(e["B_BACKENDS"]),
    "wrk": {"threads": int(e["B_THREADS"]), "connections": int(e["B_CONNS"])},
    "measure_elapsed_s": int(e["B_ELAPSED"]), "loadavg_1m_at_start": float(e["B_LOAD1"]),
    "statistic": "median over rounds; ratio = median(column) / median(direct)",
    "stickyd_bin": e["B_STICKYD_BIN"],
    "versions": {"haproxy": e["B_V_HAPROXY"], "nginx": e["B_V_NGINX"],
                 "iperf3": e["B_V_IPERF"], "wrk": e["B_V_WRK"], "stickyd": e["B_V_STICKYD"]},
    "column_status": {c: e.get("B_STATUS_" + c.replace("-", "_"), "") for c in cols},
    "placeholders": {"connrate": e["B_CONNRATE_NOTE"]} if e["B_DO_CONNRATE"] == "1" else {},
}
json.dump(meta, open(sys.argv[1], "w"), indent=2)
EOF

echo
echo "stickyd compare bench: $(nproc) CPUs, kernel $(uname -r), ${DURATION}s x $ROUNDS rounds," \
     "$WORKERS workers each, $BACKENDS HTTP backends, wrk -t$THREADS -c$CONNS"
echo
python3 "$HELPER" report "$RESULTS" "$TMP/meta.json" "$JSON_OUT"
[[ -n "$JSON_OUT" ]] && echo && echo "JSON results: $JSON_OUT"
exit 0
