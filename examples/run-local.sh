#!/usr/bin/env bash
# Start three greeter pods and stickyd in front of them, on loopback.
# `make run` builds everything first and then calls this script.
#
#   pods:     127.0.0.1:50061-50063 (pod-1..pod-3)
#   stickyd:  config/stickyd.yaml, listening on 127.0.0.1:50051
#
# Ctrl-C (or SIGTERM) stops everything this script started.
# Environment: STICKYD_BIN (default .build/release/stickyd), CONFIG,
# PYTHON (default python3), POD_PORTS (default "50061 50062 50063"),
# LISTEN (default 127.0.0.1:50051: where the config listens; used to wait and to print).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

STICKYD_BIN=${STICKYD_BIN:-.build/release/stickyd}
CONFIG=${CONFIG:-config/stickyd.yaml}
PYTHON=${PYTHON:-python3}
POD_PORTS=${POD_PORTS:-50061 50062 50063}
LISTEN=${LISTEN:-127.0.0.1:50051}
GREETER=examples/greeter

die() { echo "run-local: $*" >&2; exit 1; }

[ -x "$STICKYD_BIN" ] || die "$STICKYD_BIN not found; run 'make build' (or 'make run') first"
[ -f "$CONFIG" ] || die "$CONFIG not found"
[ -f "$GREETER/helloworld_pb2.py" ] || die "generated gRPC code missing; run 'make proto'"
# The real interpreter, not a wrapper (pyenv shims), so that signals reach it.
PY=$("$PYTHON" -c 'import sys; print(sys.executable)')

# port_open HOST PORT: true when something accepts TCP connections there.
port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

listen_host=${LISTEN%:*}; listen_host=${listen_host#[}; listen_host=${listen_host%]}
listen_port=${LISTEN##*:}
for port in $POD_PORTS; do
    ! port_open 127.0.0.1 "$port" || die "port $port is already in use (another 'make run'?)"
done
! port_open "$listen_host" "$listen_port" || die "$LISTEN is already in use"

pids=()
names=()
cleanup() {
    trap - EXIT INT TERM
    local i pid deadline
    echo
    echo "run-local: stopping ${names[*]:-nothing}" >&2
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    # Bounded wait: the pods' grace is 5 s; anything left after 10 s is killed.
    deadline=$((SECONDS + 10))
    for i in "${!pids[@]}"; do
        pid=${pids[$i]}
        while kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then
            echo "run-local: ${names[$i]} did not stop; killing it" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
    done
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# wait_port NAME PID HOST PORT: poll (bounded) until it accepts, or fail.
wait_port() {
    local name=$1 pid=$2 host=$3 port=$4 deadline=$((SECONDS + 15))
    until port_open "$host" "$port"; do
        kill -0 "$pid" 2>/dev/null || die "$name exited before listening on $host:$port"
        [ "$SECONDS" -lt "$deadline" ] || die "$name is not listening on $host:$port after 15 s"
        sleep 0.1
    done
}

i=0
for port in $POD_PORTS; do
    i=$((i + 1))
    "$PY" "$GREETER/server.py" --port "$port" --name "pod-$i" &
    pids+=("$!"); names+=("pod-$i")
done
i=0
for port in $POD_PORTS; do
    wait_port "${names[$i]}" "${pids[$i]}" 127.0.0.1 "$port"
    i=$((i + 1))
done

"$STICKYD_BIN" --config "$CONFIG" &
pids+=("$!"); names+=("stickyd")
wait_port stickyd "$!" "$listen_host" "$listen_port"

cat <<EOF

run-local: greeter pods on 127.0.0.1:{${POD_PORTS// /,}} and stickyd on $LISTEN are up.
Call them through stickyd, from another terminal:

    python3 examples/greeter/client.py --target $LISTEN --name you
    python3 examples/greeter/client.py --target $LISTEN --name you --count 10 --new-channel-each-call

Ctrl-C stops everything.
EOF

# Run until interrupted, or until one of them exits on its own.
set +e
wait -n "${pids[@]}"
status=$?
set -e
echo "run-local: a process exited on its own (status $status); stopping the rest" >&2
exit 1
