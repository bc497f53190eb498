#!/usr/bin/env bash
# stickyd vs HAProxy vs nginx, side by side, as a ratio to a direct connection and
# to refproxy, a minimal C proxy (refproxy.c, issue 13): the most any proxy that ends
# TCP on both sides can do on this machine, so the ratio to it is the one to judge.
#
# This is `make bench` (issue 2 item 9; issue 3 adds the sticky connection-rate and
# idle-memory rows). In one run it starts, all on 127.0.0.1 and on free ports:
#   - an iperf3 server, and one nginx instance serving `return 200 "ok"` on N ports
#     (the backends); three `stickyctl bench serve` identity backends; a Python
#     backend that holds connections open (bench.py idle-backend);
#   - the proxies in front of them: refproxy (built with gcc into the temp dir),
#     stickyd --engine splice, stickyd --engine copy,
#     HAProxy 2.6 (mode tcp, option splice-auto) and nginx 1.22 stream, each with the
#     same number of workers/threads (--workers, default 2) and the same backends;
# and measures, interleaved round by round (column order rotates every round):
#   bulk_up    iperf3, one stream, client->server, Gbit/s
#   bulk_down  iperf3 -R, one stream, server->client, Gbit/s
#   rr         wrk keep-alive small requests, req/s and p99 latency
#   connrate   stickyctl bench: short connections from 10k client IPs, sticky on the
#              client address, conn/s, p99, violations and spread
#   idlemem    RSS growth of a fresh proxy per idle proxied connection (no direct)
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
STICKYCTL_BIN="${STICKYCTL_BIN:-.build/release/stickyctl}"
CR_CLIENTS=10000
CR_CONC=64
IDLE_CONNS=5000
WORKERS=2
BACKENDS=2
CONNS=32
THREADS=1
KEEP=0
NGINX_MODDIR="${NGINX_MODDIR:-/usr/lib/nginx/modules}"

usage() {
    cat <<EOF
usage: Benchmarks/compare/run.sh [options]

  --quick          one short comparison (a few minutes): --rounds 2 --duration 3
                   --only bulk,rr,connrate; options after it override these
  --duration S     seconds per measurement (default $DURATION)
  --rounds N       interleaved rounds; values are medians over rounds (default $ROUNDS)
  --only LIST      bulk, rr, connrate, idlemem or all; comma-separated (default all)
  --json PATH      also write the results as JSON (default \$BENCH_JSON, if set)
  --stickyd PATH   stickyd binary (default \$STICKYD_BIN or .build/release/stickyd,
                   relative to the repo root); missing -> stickyd columns show n/a
  --workers N      workers/threads for every proxy and the backends (default $WORKERS)
  --backends N     nginx HTTP backends for the rr row, 1-3 (default $BACKENDS)
  --conns N        wrk connections (default $CONNS); --threads N wrk threads (default $THREADS)
  --stickyctl PATH stickyctl binary for the connrate row (default \$STICKYCTL_BIN or
                   .build/release/stickyctl); missing -> the row shows "-"
  --clients N      connrate: distinct client IPs (default $CR_CLIENTS)
  --concurrency N  connrate: connections in flight (default $CR_CONC)
  --idle-conns N   idlemem: idle connections held open (default $IDLE_CONNS)
  --keep           keep the temp dir (configs, logs, raw outputs)
  -h, --help       this text

Environment: STICKYD_BIN, STICKYD_EXTRA_ARGS (appended to stickyd's command line),
STICKYCTL_BIN, BENCH_JSON, NGINX_MODDIR (default /usr/lib/nginx/modules).
A full default run takes about 4 rows x 6 columns x duration x rounds, plus ~30 s
(connrate warmups) and ~70 s (idlemem, ~6 s a column and round) = ~7 min.
Loopback figures on a small VM are noisy (single runs vary by 10-20 %): keep the
machine otherwise idle, and prefer more rounds to longer ones.
EOF
}

while [[ $# -gt 0 ]]; do
    case "$1" in
        --quick) ROUNDS=2; DURATION=3; ONLY=bulk,rr,connrate; shift ;;
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
        --stickyctl) STICKYCTL_BIN="$2"; shift 2 ;;
        --stickyctl=*) STICKYCTL_BIN="${1#*=}"; shift ;;
        --clients) CR_CLIENTS="$2"; shift 2 ;;
        --clients=*) CR_CLIENTS="${1#*=}"; shift ;;
        --concurrency) CR_CONC="$2"; shift 2 ;;
        --concurrency=*) CR_CONC="${1#*=}"; shift ;;
        --idle-conns) IDLE_CONNS="$2"; shift 2 ;;
        --idle-conns=*) IDLE_CONNS="${1#*=}"; shift ;;
        --keep) KEEP=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "run.sh: unknown option: $1 (see --help)" >&2; exit 2 ;;
    esac
done

die() { echo "run.sh: error: $*" >&2; exit 1; }
log() { echo "[bench] $*" >&2; }

declare -A OPT_NAME=([CR_CLIENTS]=clients [CR_CONC]=concurrency [IDLE_CONNS]=idle-conns)
for v in DURATION ROUNDS WORKERS BACKENDS CONNS THREADS CR_CLIENTS CR_CONC IDLE_CONNS; do
    [[ "${!v}" =~ ^[1-9][0-9]*$ ]] ||
        die "--${OPT_NAME[$v]:-${v,,}} must be a positive integer, got '${!v}'"
done
(( CR_CLIENTS <= 65536 )) || die "--clients must be at most 65536 (the 127.1.0.0/16 block)"
(( BACKENDS <= 3 )) || die "--backends must be 1-3"

DO_BULK=0; DO_RR=0; DO_CONNRATE=0; DO_IDLEMEM=0
IFS=',' read -r -a _only <<<"$ONLY"
for o in "${_only[@]}"; do
    case "$o" in
        all) DO_BULK=1; DO_RR=1; DO_CONNRATE=1; DO_IDLEMEM=1 ;;
        bulk) DO_BULK=1 ;;
        rr) DO_RR=1 ;;
        connrate) DO_CONNRATE=1 ;;
        idlemem) DO_IDLEMEM=1 ;;
        *) die "--only takes bulk, rr, connrate, idlemem or all (got '$o')" ;;
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
case "$STICKYCTL_BIN" in /*) ;; *) STICKYCTL_BIN="$ROOT/$STICKYCTL_BIN" ;; esac
# The connrate row needs `stickyctl bench` for its backends and its client, direct
# included: stickyctl runs the stickybench beside it. Without them the row is shown
# as "-" and the rest still runs.
CONNRATE_NOTE=""
if (( DO_CONNRATE )) && [[ ! -x "$STICKYCTL_BIN" || ! -x "$(dirname "$STICKYCTL_BIN")/stickybench" ]]; then
    CONNRATE_NOTE="no stickyctl with stickybench beside it at $STICKYCTL_BIN (swift build -c release)"
    DO_CONNRATE=0
fi

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
# idlemem: N idle connections cost N fds in the measuring client, N in the holding
# backend and 2N in the proxy (each process has the limit above), plus a warmup of 200
IDLE_WARMUP=200
if (( DO_IDLEMEM )); then
    (( IDLE_CONNS + IDLE_WARMUP + 200 <= HAPROXY_MAXCONN )) ||
        die "--idle-conns $IDLE_CONNS is too many for the open-file limit $NOFILE" \
            "(at most $(( HAPROXY_MAXCONN - IDLE_WARMUP - 200 )): HAProxy's maxconn is $HAPROXY_MAXCONN)"
    (( IDLE_CONNS + IDLE_WARMUP <= 10000 )) ||
        die "--idle-conns must be at most $(( 10000 - IDLE_WARMUP )) (stickyd's default max_connections)"
fi

# ---------------------------------------------------------------- ports
# iperf3, the HTTP backends, 3 identity backends, the holding backend, and for each
# of the 5 proxies: bulk, rr, connrate and idlemem listeners
NPORTS=$(( 1 + BACKENDS + 3 + 1 + 20 ))
mapfile -t P < <(python3 "$HELPER" ports "$NPORTS")
(( ${#P[@]} == NPORTS )) || die "could not allocate $NPORTS free ports"
IPERF_PORT=${P[0]}
BACKEND_PORTS=("${P[@]:1:$BACKENDS}")
i=$(( 1 + BACKENDS ))
STICKY_BACKEND_PORTS=("${P[@]:$i:3}")
i=$(( i + 3 ))
HOLD_PORT=${P[$i]}
i=$(( i + 1 ))
declare -A BULK_PORT RR_PORT CONNRATE_PORT IDLE_PORT STATUS
# process groups of each column's proxy, for its CPU time (direct: none)
declare -A BULK_PGID RR_PGID CONNRATE_PGID
COLUMNS=(direct refproxy stickyd-splice stickyd-copy haproxy nginx)
BULK_PORT[direct]=$IPERF_PORT
RR_PORT[direct]=${BACKEND_PORTS[0]}
for c in refproxy stickyd-splice stickyd-copy haproxy nginx; do
    BULK_PORT[$c]=${P[$i]}; RR_PORT[$c]=${P[$((i + 1))]}
    CONNRATE_PORT[$c]=${P[$((i + 2))]}; IDLE_PORT[$c]=${P[$((i + 3))]}
    i=$((i + 4))
done

# ---------------------------------------------------------------- backends
START_TIMEOUT=15

start_backends() {
    local p
    if (( DO_CONNRATE )); then
        # three identity backends: each connection gets "sN\n" and a FIN
        local args=() n=1
        for p in "${STICKY_BACKEND_PORTS[@]}"; do
            args+=(--listen "127.0.0.1:$p" --name "s$n"); n=$((n + 1))
        done
        start_bg sticky-backends "$STICKYCTL_BIN" bench serve "${args[@]}"
        local pid=$LAST_PID
        for p in "${STICKY_BACKEND_PORTS[@]}"; do
            python3 "$HELPER" wait-listen "$p" "$START_TIMEOUT" "$pid" \
                || { tail_log sticky-backends; die "stickyctl bench serve did not start"; }
        done
    fi
    if (( DO_IDLEMEM )); then
        start_bg idle-backend python3 "$HELPER" idle-backend "$HOLD_PORT"
        python3 "$HELPER" wait-listen "$HOLD_PORT" "$START_TIMEOUT" "$LAST_PID" \
            || { tail_log idle-backend; die "the holding backend did not start"; }
    fi
    (( DO_BULK || DO_RR )) || return 0

    start_bg iperf3 iperf3 -s -B 127.0.0.1 -p "$IPERF_PORT"
    python3 "$HELPER" wait-listen "$IPERF_PORT" "$START_TIMEOUT" "$LAST_PID" \
        || { tail_log iperf3; die "iperf3 server did not start"; }

    local servers=""
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
    local sticky_servers=""
    n=1
    for p in "${STICKY_BACKEND_PORTS[@]}"; do
        sticky_servers+="    server s$n 127.0.0.1:$p"$'\n'; n=$((n + 1))
    done
    python3 "$HELPER" render "$HERE/haproxy.cfg.tmpl" "$TMP/haproxy.cfg" \
        "DIR=$TMP" "WORKERS=$WORKERS" "IPERF_PORT=$IPERF_PORT" "MAXCONN=$HAPROXY_MAXCONN" \
        "BULK_PORT=${BULK_PORT[haproxy]}" "RR_PORT=${RR_PORT[haproxy]}" "RR_SERVERS=$servers" \
        "STICKY_PORT=${CONNRATE_PORT[haproxy]}" "STICKY_SERVERS=$sticky_servers"
    if ! haproxy -c -q -f "$TMP/haproxy.cfg" >"$TMP/haproxy.check.log" 2>&1; then
        sed 's/^/    | /' "$TMP/haproxy.check.log" >&2
        STATUS[haproxy]="n/a: config rejected by haproxy -c"; return
    fi
    start_bg haproxy haproxy -db -f "$TMP/haproxy.cfg"
    local pid=$LAST_PID
    BULK_PGID[haproxy]=$pid; RR_PGID[haproxy]=$pid; CONNRATE_PGID[haproxy]=$pid
    if python3 "$HELPER" wait-listen "${BULK_PORT[haproxy]}" "$START_TIMEOUT" "$pid" &&
       python3 "$HELPER" wait-listen "${RR_PORT[haproxy]}" "$START_TIMEOUT" "$pid" &&
       python3 "$HELPER" wait-listen "${CONNRATE_PORT[haproxy]}" "$START_TIMEOUT" "$pid"; then
        STATUS[haproxy]=""
    else
        tail_log haproxy; STATUS[haproxy]="n/a: failed to start"
    fi
}

start_nginx_stream() {
    local servers="" sticky_servers="" p
    for p in "${BACKEND_PORTS[@]}"; do servers+="        server 127.0.0.1:$p;"$'\n'; done
    for p in "${STICKY_BACKEND_PORTS[@]}"; do sticky_servers+="        server 127.0.0.1:$p;"$'\n'; done
    python3 "$HELPER" render "$HERE/nginx-stream.conf.tmpl" "$TMP/nginx-stream.conf" \
        "DIR=$TMP" "WORKERS=$WORKERS" "MODDIR=$NGINX_MODDIR" "IPERF_PORT=$IPERF_PORT" \
        "NOFILE=$NOFILE" "WORKER_CONNS=$WORKER_CONNS" \
        "BULK_PORT=${BULK_PORT[nginx]}" "RR_PORT=${RR_PORT[nginx]}" "RR_SERVERS=$servers" \
        "STICKY_PORT=${CONNRATE_PORT[nginx]}" "STICKY_SERVERS=$sticky_servers"
    if ! nginx -t -q -e "$TMP/nginx-stream.startup.log" -c "$TMP/nginx-stream.conf" -p "$TMP/" \
            >"$TMP/nginx-stream.t.log" 2>&1; then
        sed 's/^/    | /' "$TMP/nginx-stream.t.log" >&2
        STATUS[nginx]="n/a: config rejected by nginx -t"; return
    fi
    start_bg nginx-stream nginx -e "$TMP/nginx-stream.startup.log" -g 'daemon off;' \
        -c "$TMP/nginx-stream.conf" -p "$TMP/"
    local pid=$LAST_PID
    BULK_PGID[nginx]=$pid; RR_PGID[nginx]=$pid; CONNRATE_PGID[nginx]=$pid
    if python3 "$HELPER" wait-listen "${BULK_PORT[nginx]}" "$START_TIMEOUT" "$pid" &&
       python3 "$HELPER" wait-listen "${RR_PORT[nginx]}" "$START_TIMEOUT" "$pid" &&
       python3 "$HELPER" wait-listen "${CONNRATE_PORT[nginx]}" "$START_TIMEOUT" "$pid"; then
        STATUS[nginx]=""
    else
        tail_log nginx-stream; STATUS[nginx]="n/a: failed to start"
    fi
}

# stickyd's quick mode makes one pool, so each engine runs one instance per row it
# serves: in front of the iperf3 server (bulk rows), the HTTP backends (rr row) and the
# identity backends (connrate row, the quick-mode pool's client-IP affinity, /32).
# The idlemem row starts its own fresh instances (start_idle_proxy).
start_stickyd() { # start_stickyd ENGINE
    local engine="$1" col="stickyd-$1" role port targets=() p roles=()
    if [[ ! -x "$STICKYD_BIN" ]]; then
        STATUS[$col]="n/a: no stickyd binary at $STICKYD_BIN"; return
    fi
    (( DO_BULK )) && roles+=(bulk)
    (( DO_RR )) && roles+=(rr)
    (( DO_CONNRATE )) && roles+=(connrate)
    # shellcheck disable=SC2206
    local extra=($STICKYD_EXTRA_ARGS)
    for role in "${roles[@]}"; do
        if [[ $role == bulk ]]; then
            port=${BULK_PORT[$col]}; targets=(--target "127.0.0.1:$IPERF_PORT")
        elif [[ $role == rr ]]; then
            port=${RR_PORT[$col]}; targets=()
            for p in "${BACKEND_PORTS[@]}"; do targets+=(--target "127.0.0.1:$p"); done
        else
            port=${CONNRATE_PORT[$col]}; targets=()
            for p in "${STICKY_BACKEND_PORTS[@]}"; do targets+=(--target "127.0.0.1:$p"); done
        fi
        # Several instances run at once: each gets its own admin socket and
        # state directory instead of the shared defaults under /run and /var/lib.
        start_bg "$col-$role" "$STICKYD_BIN" --listen "127.0.0.1:$port" "${targets[@]}" \
            --engine "$engine" --workers "$WORKERS" \
            --admin-socket "$TMP/$col-$role.sock" --state-dir "$TMP/$col-$role-state" "${extra[@]}"
        case $role in
            bulk) BULK_PGID[$col]=$LAST_PID ;;
            rr) RR_PGID[$col]=$LAST_PID ;;
            connrate) CONNRATE_PGID[$col]=$LAST_PID ;;
        esac
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

# ================================================================ issue 3 rows
# Sticky connection-rate row ("new connections/s, 10k client IPs, sticky";
# target: stickyd >= 0.95 x refproxy, ahead of HAProxy and nginx; docs/BENCH.md).
# Backends: three `stickyctl bench serve` identity backends (s1, s2, s3). Each column
# runs `stickyctl bench` for $DURATION s: short connections (connect, read the
# backend's name, EOF) from $CR_CLIENTS distinct source IPs in 127.1.0.0/16 at
# concurrency $CR_CONC, after a warmup of one connection per client, so every client
# is pinned before the clock starts and all columns measure the hit path.
#   direct          the 3 backends as targets: client i -> backend i mod 3 (sticky by
#                   construction, the same fan-out, no balancer)
#   stickyd-*       quick mode: the default pool's client-IP affinity (/32)
#   haproxy         balance roundrobin + stick-table type ip size 1m expire 3h + stick on src
#   nginx           upstream { hash $remote_addr consistent; } (listen ... reuseport)
# Recorded: conn/s (value), p99 latency, violations (clients seen on two backends,
# warmup included), spread (max/mean connections per backend, out of 3), errors,
# and the proxy's CPU time.
bench_sticky_connrate() { # bench_sticky_connrate COLUMN ROUND
    local col="$1" round="$2" out="$TMP/connrate-$1-$2.json" v targets=() p
    local pg="${CONNRATE_PGID[$col]:-}" c0 c1 cpu=()
    local rps p99 viol spread errs multi all t0 t1
    if [[ $col == direct ]]; then
        for p in "${STICKY_BACKEND_PORTS[@]}"; do targets+=(--target "127.0.0.1:$p"); done
    else
        targets=(--target "127.0.0.1:${CONNRATE_PORT[$col]}")
    fi
    c0=$(python3 "$HELPER" cpu $pg); t0=$(date +%s.%N)
    if run_client timeout -k 5 "$(( DURATION + 90 ))" "$STICKYCTL_BIN" bench "${targets[@]}" \
            --clients "$CR_CLIENTS" --concurrency "$CR_CONC" --duration "${DURATION}s" \
            --warmup "$CR_CLIENTS" --expect-targets 3 --json --quiet >"$out" 2>"$out.err" &&
       v=$(python3 "$HELPER" parse-stickybench "$out" 2>>"$out.err"); then
        c1=$(python3 "$HELPER" cpu $pg); t1=$(date +%s.%N)
        read -r rps p99 viol spread errs multi all <<<"$v"
        # the proxy's CPU covers the whole client run, warmup included: it is divided
        # by all the connections made and by the run's wall time
        if [[ -n $pg ]]; then
            cpu=(cpu_s="$(python3 -c "print(round($c1 - $c0, 3))")" cpu_conns="$all"
                 cpu_window_s="$(python3 -c "print(round($t1 - $t0, 3))")")
        fi
        log "round $round  connrate   $(printf '%-15s' "$col") $rps conn/s  p99 $p99 ms" \
            " violations $viol  spread $spread  errors $errs${pg:+  proxy CPU ${cpu[0]#cpu_s=} s}"
        python3 "$HELPER" record "$RESULTS" scenario=connrate column="$col" round="$round" \
            value="$rps" p99_ms="$p99" violations="$viol" spread="$spread" errors="$errs" \
            clients_multi="$multi" ok=1 duration_s="$DURATION" "${cpu[@]}"
    else
        local err; err=$(tail -n 1 "$out.err" 2>/dev/null | tr -d '"' | cut -c1-200)
        log "round $round  connrate   $(printf '%-15s' "$col") FAILED: $err"
        python3 "$HELPER" record "$RESULTS" scenario=connrate column="$col" round="$round" \
            value=0 ok=0 error="${err:-stickyctl bench failed}"
    fi
}

# Idle-connection memory row (DESIGN.md: an idle proxied connection costs at most
# 2 KiB of user memory). For every column and round, a FRESH proxy is started in front
# of the holding backend (bench.py idle-backend: greets, echoes, never closes), so that
# memory freed by an earlier round cannot be reused and hide the cost. bench.py
# idle-measure then makes $IDLE_WARMUP warmup connections and closes them, reads the
# RSS (VmRSS summed over the proxy's process group), opens $IDLE_CONNS connections from
# distinct source IPs (127.3.0.0/16), each carrying one greeting and one echoed line,
# holds them idle, reads the RSS again and reports (after - before) / N. Also recorded:
# the marginal cost between N/2 and N open, anonymous memory only, proxy fds per
# connection, and (measure_reserved) the memory reserved per connection slot, which a
# proxy that preallocates pays whether or not the connections exist. RSS is user
# memory: socket buffers and pipes are kernel memory and do not appear in it.
stop_group() { # stop_group PID: stop a process group started by start_bg, bounded
    local pid="$1" k keep=()
    kill -TERM -- "-$pid" 2>/dev/null || true
    for (( k = 0; k < 50; k++ )); do
        kill -0 -- "-$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL -- "-$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    for k in "${PIDS[@]}"; do [[ $k == "$pid" ]] || keep+=("$k"); done
    PIDS=("${keep[@]}")
}

# start_idle_proxy COLUMN NAME [LIMIT]: a fresh proxy on IDLE_PORT[COLUMN] in front of
# the holding backend, sized for LIMIT proxied connections (default: the same sizes as
# the other rows: stickyd's default max_connections, HAProxy's maxconn, nginx's
# worker_connections). Sets LAST_PID ("" if nothing was started), or returns 1.
start_idle_proxy() {
    local col="$1" name="$2" limit="${3:-}" port="${IDLE_PORT[$1]}" lim=()
    LAST_PID=""
    case $col in
        stickyd-*)
            [[ -x "$STICKYD_BIN" ]] || return 1
            [[ -n $limit ]] && lim=(--max-connections "$limit")
            # shellcheck disable=SC2206
            local extra=($STICKYD_EXTRA_ARGS)
            start_bg "$name" "$STICKYD_BIN" --listen "127.0.0.1:$port" \
                --target "127.0.0.1:$HOLD_PORT" --engine "${col#stickyd-}" --workers "$WORKERS" \
                --admin-socket "$TMP/$name.sock" --state-dir "$TMP/$name-state" \
                "${lim[@]}" "${extra[@]}"
            python3 "$HELPER" wait-listen "$port" "$START_TIMEOUT" "$LAST_PID" \
                "$TMP/$name.log" ready || { tail_log "$name"; return 1; }
            ;;
        haproxy)
            python3 "$HELPER" render "$HERE/haproxy-idle.cfg.tmpl" "$TMP/$name.cfg" \
                "DIR=$TMP" "WORKERS=$WORKERS" "MAXCONN=${limit:-$HAPROXY_MAXCONN}" \
                "IDLE_PORT=$port" "HOLD_PORT=$HOLD_PORT"
            start_bg "$name" haproxy -db -f "$TMP/$name.cfg"
            python3 "$HELPER" wait-listen "$port" "$START_TIMEOUT" "$LAST_PID" \
                || { tail_log "$name"; return 1; }
            ;;
        nginx)
            # a proxied connection takes 2 of a worker's connections; +16 for listeners
            local wc=$WORKER_CONNS
            [[ -n $limit ]] && wc=$(( 2 * limit / WORKERS + 16 ))
            python3 "$HELPER" render "$HERE/nginx-idle.conf.tmpl" "$TMP/$name.conf" \
                "DIR=$TMP" "WORKERS=$WORKERS" "MODDIR=$NGINX_MODDIR" "NOFILE=$NOFILE" \
                "WORKER_CONNS=$wc" "IDLE_PORT=$port" "HOLD_PORT=$HOLD_PORT"
            start_bg "$name" nginx -e "$TMP/$name.startup.log" -g 'daemon off;' \
                -c "$TMP/$name.conf" -p "$TMP/"
            python3 "$HELPER" wait-listen "$port" "$START_TIMEOUT" "$LAST_PID" \
                || { tail_log "$name"; return 1; }
            ;;
        *) return 1 ;;
    esac
}

# processes a fresh proxy of COLUMN has once it is up (nginx: master + workers)
idle_procs() { if [[ $1 == nginx ]]; then echo $(( WORKERS + 1 )); else echo 1; fi; }

# measure_reserved COLUMN ROUND: memory a proxy sets aside per connection it is sized
# for, whether or not the connection exists (stickyd preallocates its connection slots,
# nginx its connection and event arrays): the RSS of a fresh, idle proxy sized for
# RES_HI connections minus one sized for RES_LO, divided by RES_HI - RES_LO.
# Sets RESERVED (bytes per slot) or leaves it empty.
RES_HI=$(( HAPROXY_MAXCONN < 6000 ? HAPROXY_MAXCONN : 6000 ))
RES_LO=$(( RES_HI / 3 ))
measure_reserved() {
    local col="$1" round="$2" lim rss=() pg
    RESERVED=""
    for lim in "$RES_LO" "$RES_HI"; do
        if ! start_idle_proxy "$col" "reserve-$col-$round-$lim" "$lim"; then
            [[ -n $LAST_PID ]] && stop_group "$LAST_PID"
            return 0
        fi
        pg=$LAST_PID
        rss+=("$(python3 "$HELPER" group-mem "$pg" "$(idle_procs "$col")" 2>/dev/null || echo x)")
        stop_group "$pg"
    done
    [[ ${rss[0]} =~ ^[0-9]+$ && ${rss[1]} =~ ^[0-9]+$ ]] || return 0
    RESERVED=$(python3 -c "print(round((${rss[1]} - ${rss[0]}) / ($RES_HI - $RES_LO), 1))")
}

bench_idle_memory() { # bench_idle_memory COLUMN ROUND
    local col="$1" round="$2" out="$TMP/idlemem-$1-$2.json" v pg
    local bpc marg anon fds mib
    [[ $col == direct || $col == refproxy ]] && return 0
    if ! start_idle_proxy "$col" "idle-$col-$round"; then
        [[ -n $LAST_PID ]] && stop_group "$LAST_PID"
        log "round $round  idlemem    $(printf '%-15s' "$col") FAILED: proxy did not start"
        python3 "$HELPER" record "$RESULTS" scenario=idlemem column="$col" round="$round" \
            value=0 ok=0 error="proxy did not start"
        return 0
    fi
    pg=$LAST_PID
    # nginx: the workers must be up too, or their RSS is missing from "before"
    python3 "$HELPER" group-mem "$pg" "$(idle_procs "$col")" >/dev/null 2>&1 || true
    if run_client timeout -k 5 240 python3 "$HELPER" idle-measure "${IDLE_PORT[$col]}" "$pg" \
            "$IDLE_CONNS" "$IDLE_WARMUP" >"$out" 2>"$out.err" &&
       v=$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1]))
print(d["bytes_per_conn"], d["bytes_per_conn_marginal"], d["anon_bytes_per_conn"],
      d["fds_per_conn"], round(d["rss_after"] / 1048576, 1))' "$out" 2>>"$out.err"); then
        read -r bpc marg anon fds mib <<<"$v"
        stop_group "$pg"; pg=""
        measure_reserved "$col" "$round"
        local res=() tot=""
        if [[ -n $RESERVED ]]; then
            tot=$(python3 -c "print(round($bpc + max(0.0, $RESERVED), 1))")
            res=(reserved="$RESERVED" with_reserved="$tot")
        fi
        log "round $round  idlemem    $(printf '%-15s' "$col") $bpc B/conn  marginal $marg" \
            " anon $anon  fds/conn $fds  RSS $mib MiB with $IDLE_CONNS open" \
            " reserved/slot ${RESERVED:-n/a} B"
        python3 "$HELPER" record "$RESULTS" scenario=idlemem column="$col" round="$round" \
            value="$bpc" marginal="$marg" anon="$anon" fds_per_conn="$fds" rss_after_mib="$mib" \
            connections="$IDLE_CONNS" ok=1 "${res[@]}"
    else
        local err; err=$(tail -n 1 "$out.err" 2>/dev/null | tr -d '"' | cut -c1-200)
        log "round $round  idlemem    $(printf '%-15s' "$col") FAILED: $err"
        python3 "$HELPER" record "$RESULTS" scenario=idlemem column="$col" round="$round" \
            value=0 ok=0 error="${err:-idle-measure failed}"
    fi
    [[ -n $pg ]] && stop_group "$pg"
    return 0
}
# ================================================================ end of issue 3 rows

# ---------------------------------------------------------------- run
log "temp dir $TMP; duration ${DURATION}s x $ROUNDS rounds; workers $WORKERS;" \
    "backends $BACKENDS; wrk -t$THREADS -c$CONNS"
LOAD1=$(cut -d' ' -f1 /proc/loadavg)
if python3 -c "import sys; sys.exit(0 if float('$LOAD1') > 0.5 else 1)"; then
    log "warning: 1-minute load average is $LOAD1; something else is running, figures will be noisy"
fi
start_backends
# shellcheck source=refproxy.sh
source "$HERE/refproxy.sh"
if (( DO_BULK || DO_RR || DO_CONNRATE )); then start_refproxy; else STATUS[refproxy]=""; fi
start_stickyd splice
start_stickyd copy
if (( DO_BULK || DO_RR || DO_CONNRATE )); then
    start_haproxy
    start_nginx_stream
else
    STATUS[haproxy]=""; STATUS[nginx]=""   # idlemem starts its own instances
fi

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
        for c in "${order[@]}"; do bench_sticky_connrate "$c" "$r"; sleep 0.3; done
    fi
    if (( DO_IDLEMEM )); then
        for c in "${order[@]}"; do bench_idle_memory "$c" "$r"; done
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
    B_CONNRATE_NOTE="$CONNRATE_NOTE" B_LOAD1=$LOAD1 B_STICKYCTL_BIN="$STICKYCTL_BIN" \
    B_DO_CONNRATE=$DO_CONNRATE B_DO_IDLEMEM=$DO_IDLEMEM B_CR_CLIENTS=$CR_CLIENTS \
    B_CR_CONC=$CR_CONC B_IDLE_CONNS=$IDLE_CONNS B_IDLE_WARMUP=$IDLE_WARMUP \
    B_V_HAPROXY="$(ver haproxy -v)" B_V_NGINX="$(ver nginx -v)" B_V_IPERF="$(ver iperf3 --version)" \
    B_V_WRK="$(ver wrk --version)" B_V_STICKYD="$STICKYD_VERSION"
for c in "${COLUMNS[@]}"; do export "B_STATUS_${c//-/_}=${STATUS[$c]:-}"; done
python3 - "$TMP/meta.json" <<'EOF'
import json, os, platform, sys, time
e = os.environ
cols = ["direct", "refproxy", "stickyd-splice", "stickyd-copy", "haproxy", "nginx"]
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
    "placeholders": {"connrate": e["B_CONNRATE_NOTE"]} if e["B_CONNRATE_NOTE"] else {},
}
if e["B_DO_CONNRATE"] == "1":
    meta["connrate"] = {"tool": "stickyctl bench", "stickyctl_bin": e["B_STICKYCTL_BIN"],
                        "clients": int(e["B_CR_CLIENTS"]), "sources": "127.1.0.0/16",
                        "concurrency": int(e["B_CR_CONC"]), "warmup": int(e["B_CR_CLIENTS"]),
                        "backends": 3,
                        "direct": "client i -> backend i mod 3, no balancer"}
if e["B_DO_IDLEMEM"] == "1":
    meta["idlemem"] = {"connections": int(e["B_IDLE_CONNS"]), "warmup": int(e["B_IDLE_WARMUP"]),
                       "sources": "127.3.0.0/16", "memory": "VmRSS summed over the proxy's "
                       "process group; value = (after - before) / connections",
                       "fresh_proxy_per_sample": True}
json.dump(meta, open(sys.argv[1], "w"), indent=2)
EOF

echo
echo "stickyd compare bench: $(nproc) CPUs, kernel $(uname -r), ${DURATION}s x $ROUNDS rounds," \
     "$WORKERS workers each, $BACKENDS HTTP backends, wrk -t$THREADS -c$CONNS"
(( DO_CONNRATE )) && echo "sticky conn/s: stickyctl bench, $CR_CLIENTS client IPs, concurrency $CR_CONC," \
     "warmup $CR_CLIENTS, 3 identity backends"
(( DO_IDLEMEM )) && echo "idle memory: $IDLE_CONNS idle connections, a fresh proxy each round"
echo
python3 "$HELPER" report "$RESULTS" "$TMP/meta.json" "$JSON_OUT"
[[ -n "$JSON_OUT" ]] && echo && echo "JSON results: $JSON_OUT"
exit 0
