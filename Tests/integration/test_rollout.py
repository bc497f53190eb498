"""An end-to-end rolling update through stickyd, under continuous gRPC load
(issue 4, item 7; DESIGN.md, "Drain" and the figures).

Three greeter pods sit behind stickyd. Twelve long-lived gRPC clients, each
from its own source IP (see rollout_support.Relay), call SayHello all the
time. Each pod is replaced in turn, as a rollout system does it: start the new
pod, `stickyctl replace OLD NEW` (add NEW, drain OLD strictly, wait until OLD
has no connections, remove OLD), and, once OLD is draining, SIGTERM the old pod
so that it sends GOAWAY and its clients reconnect (and are re-pinned).

Held to the design's figures: 0 failed calls (a call that the old pod's own
gRPC server cancels at its shutdown is retried once; see RETRY_CANCELLED),
0 needless moves (a client's pod changes only when its pod was draining or
stopped), and a final spread (clients by the pod of their last call) whose
maximum is at most 1.25 x the mean. The summary line with the figures is
printed (run with -s or -rP to see it on a pass).

Knobs for comparison runs (defaults are what the test asserts with):
  ROLLOUT_WAIT_FOR_READY=1  calls with wait_for_ready=True
  ROLLOUT_GRPC_RETRIES=0    channels with grpc.enable_retries=0 (no transparent retry)
  ROLLOUT_RETRY_CANCELLED=0 no client retry of a call the pod cancelled at its shutdown
  ROLLOUT_HASH_KEY=<32 hex> a fixed affinity hash key (the summary prints each run's key)
  ROLLOUT_WORKERS=<n>       stickyd worker threads (default 2)
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time

import pytest

from rollout_support import (AdminClient, GreeterLoad, Relay, Timeline, events_text, find_moves, last_pods,
                             phase_table, progress, spread, start_replace, steering_worker, stickyctl_bin)
from support import (LOOPBACK, connect, fmt_addr, free_port, make_sink_then_reply_handler,
                     make_speak_first_handler, random_bytes, recv_until_eof, sha256, wait_until)

grpc = pytest.importorskip("grpc", reason="grpcio missing: run `make deps`")

CLIENTS = 12
WORKERS = int(os.environ.get("ROLLOUT_WORKERS", "2"))
BALANCE_FACTOR = 1.25
DRAIN_TIMEOUT_S = 15
DRAIN_GRACE_S = 2
CALL_DEADLINE_S = 5.0
POD_ARGS = ["--grace", "2"]  # in-flight RPCs get 2 s after the pod's GOAWAY
TEST_BUDGET_S = 90.0

# Fail-fast calls (wait_for_ready=False), on purpose. A production client
# would often set wait_for_ready (or a retry policy) to ride out a reconnect
# after GOAWAY; but through a correct balancer the reconnect itself never
# fails, so a fail-fast call fails only if stickyd refused, dropped or
# mis-sent the new connection, which is exactly what this test must see.
# Transparent retries (gRPC's default, for RPCs that never reached a server)
# stay as in production.
WAIT_FOR_READY = os.environ.get("ROLLOUT_WAIT_FOR_READY", "0") == "1"
GRPC_RETRIES = os.environ.get("ROLLOUT_GRPC_RETRIES", "1") == "1"
# One retry of a call that failed with CANCELLED, as a production client of an
# idempotent method does. Why: gRPC's server (core, as in grpcio 1.85) cancels
# an RPC that arrives after its shutdown began but before the client has the
# GOAWAY (grpc/grpc#41785, "Pending calls are CANCELLED on server shut-down").
# That race is the pod's, not the balancer's: SIGTERM to a pod with 12 direct
# channels and no stickyd at all cancels a call in about 1 of 3 tries. CANCELLED
# comes only from a server (an RST_STREAM), never from a dropped or refused
# TCP connection, which gives UNAVAILABLE and is not retried. Every retried
# call is recorded, and the test checks each one was sent to a pod that had
# already been sent SIGTERM. ROLLOUT_RETRY_CANCELLED=0 turns the retry off.
RETRY_CANCELLED = os.environ.get("ROLLOUT_RETRY_CANCELLED", "1") == "1"
# How long before the SIGTERM is recorded a cancelled call may have started
# (a call sent just before the signal can still be waiting in the server's
# queue when its shutdown begins).
CANCEL_WINDOW_S = 0.5
# The Maglev/SipHash key: random per run unless given. The summary prints the
# one used (from the state file); the pods' ports differ per run too, so a
# key alone does not replay a run's placement exactly.
HASH_KEY = os.environ.get("ROLLOUT_HASH_KEY")


def test_relay_is_a_transparent_pipe_with_half_close(backend):
    """The test's own tool: the relay connects from its source IP and passes
    bytes and a FIN each way unchanged (the client's first, then the server's)."""
    sink = backend(make_sink_then_reply_handler(b"bye"))
    speaker = backend(make_speak_first_handler(b"hello first"))
    host, port = sink.addr.rsplit(":", 1)
    relay = Relay((host, int(port)), "127.0.1.200", "relay-check")
    try:
        payload = random_bytes(300_000, seed=5)
        with connect((LOOPBACK, relay.port)) as s:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)  # the reply comes only after this EOF got through
            s.settimeout(10)
            got = recv_until_eof(s)
        assert got == f"{len(payload)} {sha256(payload)}\n".encode() + b"bye"
        sink.wait_for(lambda srv: srv.records and srv.records[0].closed is not None, 10, "closed")
        assert sink.records[0].peer[0] == "127.0.1.200"

        relay.upstream = ("127.0.0.1", speaker.port)
        with connect((LOOPBACK, relay.port)) as s:
            s.settimeout(10)
            assert recv_until_eof(s) == b"hello first"  # the server's FIN got through
            s.sendall(b"after your FIN")  # and our direction still flows
            s.shutdown(socket.SHUT_WR)
            r = speaker.result(b"speak-first", 10)
        assert r.recv_len == len(b"after your FIN") and r.recv_sha == sha256(b"after your FIN")
    finally:
        relay.stop()
    assert relay.connect_failures == 0 and not relay.errors


def write_config(path, listen: str, pods: list[tuple[str, str, object]]) -> None:
    targets = "\n".join(f"      - {{ address: {addr}, weight: 1, name: {name} }}" for name, addr, _ in pods)
    path.write_text(f"""\
workers: {WORKERS}
listeners:
  - address: {listen}
pools:
  - name: greeter
    targets:
{targets}
    affinity: {{ balance_factor: {BALANCE_FACTOR}{f", hash_key: {HASH_KEY}" if HASH_KEY else ""} }}
drain: {{ mode: strict, timeout: {DRAIN_TIMEOUT_S}s, grace: {DRAIN_GRACE_S}s }}
""")


def target_of(admin: AdminClient, address: str) -> dict | None:
    return next((t for t in admin.targets() if t["address"] == address), None)


def test_rolling_replace_of_three_pods_fails_no_call(run_stickyd, greeter_pods, greeter_code, tmp_path):
    budget_end = time.monotonic() + TEST_BUDGET_S
    ctl = stickyctl_bin()
    if not ctl.is_file():
        pytest.fail(f"stickyctl not found at {ctl}: build it or set STICKYCTL_BIN", pytrace=False)

    old_pods = greeter_pods(3, extra=POD_ARGS)
    pod_addr = {name: addr for name, addr, _ in old_pods}
    listen = fmt_addr(LOOPBACK, free_port())
    cfg = tmp_path / "rollout.yaml"
    write_config(cfg, listen, old_pods)
    sock = str(tmp_path / "admin.sock")
    d = run_stickyd(listen=[listen], args=["--config", str(cfg), "--admin-socket", sock,
                                           "--state-dir", str(tmp_path / "state")])
    admin = AdminClient(sock)
    wait_until(lambda: os.path.exists(sock), 10, what="admin socket")
    assert {t["name"]: t["state"] for t in admin.targets()} == {n: "ready" for n in pod_addr}

    sources = {i: f"127.0.1.{i + 1}" for i in range(CLIENTS)}
    workers = {i: steering_worker(ip, WORKERS) for i, ip in sources.items()}
    relays = [Relay(d.addr, sources[i], f"relay-{i}") for i in range(CLIENTS)]
    load = GreeterLoad(relays, deadline_s=CALL_DEADLINE_S, wait_for_ready=WAIT_FOR_READY, retries=GRPC_RETRIES,
                       retry_cancelled=RETRY_CANCELLED)
    timeline = Timeline()
    affinity_snapshots: list[tuple[str, list[dict]]] = []
    replace_logs: list[str] = []
    t0 = time.monotonic()
    new_pods = []

    def left() -> float:
        return max(1.0, budget_end - time.monotonic())

    def snapshot_affinity(label: str) -> None:
        try:
            affinity_snapshots.append((label, admin.json("show affinity")["entries"]))
        except (OSError, EOFError, TimeoutError, ValueError, KeyError) as exc:
            affinity_snapshots.append((label, [{"error": repr(exc)}]))

    try:
        timeline.begin("before", t0)
        load.start()
        load.wait_each_succeeded(t0, 20, min(30.0, left()), "warm-up")
        snapshot_affinity("before")

        for name, addr, proc in old_pods:
            t_phase = time.monotonic()
            timeline.begin(f"replace {name}", t_phase)
            [(new_name, new_addr, _)] = greeter_pods(1, extra=POD_ARGS)
            new_pods.append(new_name)
            pod_addr[new_name] = new_addr
            log_path = tmp_path / f"replace-{name}.log"
            rp = start_replace(addr, new_addr, new_name, sock, DRAIN_TIMEOUT_S, log_path)
            try:
                # SIGTERM only once the daemon sends OLD no new connections:
                # otherwise its reconnecting clients would be sent straight back.
                def draining() -> bool:
                    if rp.poll() is not None:
                        raise AssertionError(f"stickyctl replace exited {rp.returncode} before {name} was "
                                             f"draining:\n{log_path.read_text(errors='replace')}")
                    t = target_of(admin, addr)
                    return t is not None and t["state"] == "draining"

                wait_until(draining, min(20.0, left()), interval=0.01, what=f"{name} draining")
                timeline.drained[name] = time.monotonic()
                t = target_of(admin, addr)
                assert t["drain_mode"] == "strict", t
                assert (target_of(admin, new_addr) or {}).get("state") == "ready", admin.targets()

                timeline.stopped[name] = time.monotonic()
                proc.send_signal(signal.SIGTERM)
                rc = rp.wait(min(DRAIN_TIMEOUT_S + 15.0, left()))
            finally:
                if rp.poll() is None:
                    rp.kill()
                    rp.wait(5)
            took = time.monotonic() - timeline.drained[name]
            out = log_path.read_text(errors="replace")
            replace_logs.append(f"--- replace {name} -> {new_name} (exit {rc}, {took:.1f}s after drain)\n{out}")
            assert rc == 0, f"stickyctl replace {name} -> {new_name} exited {rc}:\n{out}"
            timeline.removed[name] = time.monotonic()
            # The drain ended because the connections ended, not because the
            # deadline cut them.
            assert took < DRAIN_TIMEOUT_S, f"{name}: drain took {took:.1f}s, the deadline is {DRAIN_TIMEOUT_S}s"
            assert target_of(admin, addr) is None, f"{name} still listed after replace"
            status = proc.wait(min(15.0, left()))
            assert status == 0, f"{name} exit status after SIGTERM: {status}"
            # Every client is served again (re-pinned if it was on the old pod)
            # before the next pod goes.
            load.wait_each_succeeded(timeline.removed[name], 10, min(20.0, left()), f"after replacing {name}")
            snapshot_affinity(f"after {name}")

        t_tail = time.monotonic()
        timeline.begin("after", t_tail)
        load.wait_each_succeeded(t_tail, 40, min(20.0, left()), "tail load")
        wait_until(lambda: time.monotonic() - t_tail >= 3.0, 4.0, interval=0.05, what="3 s of tail load")
    finally:
        stuck = load.stop(10.0)
        timeline.finish(time.monotonic())
        for r in relays:
            r.stop()
        admin.close()
    assert not stuck, f"load clients did not stop: {stuck}"
    assert not load.crashes, f"load clients crashed: {load.crashes}"

    # ---- figures
    calls = load.snapshot()
    failed = [c for c in calls if c.pod is None]
    retried, stray_cancels = [], []
    prev_pod: dict[int, str] = {}
    for c in sorted(calls, key=lambda c: c.start):
        if c.cancelled is not None:
            p = prev_pod.get(c.client)
            at_shutdown = p in timeline.stopped and c.cancelled[0] >= timeline.stopped[p] - CANCEL_WINDOW_S
            (retried if at_shutdown else stray_cancels).append((c, p))
        if c.pod is not None:
            prev_pod[c.client] = c.pod
    moves = find_moves(calls, timeline)
    needless = [m for m in moves if not m.needed]
    into_retiring = [m for m in moves if m.into_retiring]
    final = last_pods(calls)
    final_spread = spread(final, new_pods)
    mean = CLIENTS / len(new_pods)
    busiest = max(final_spread.values())
    no_progress = {}
    for ph in timeline.phases:
        counts = progress(calls, ph, CLIENTS)
        stalled = [i for i, n in counts.items() if n == 0]
        if stalled:
            no_progress[ph.name] = stalled
    relay_failures = sum(r.connect_failures for r in relays)
    relay_errors = [e for r in relays for e in r.errors]
    relay_resets: dict[str, int] = {}
    for r in relays:
        for kind, n in r.resets.items():
            relay_resets[kind] = relay_resets.get(kind, 0) + n
    try:
        hash_key = json.loads((tmp_path / "state" / "state.json").read_text()).get("hash_key") or HASH_KEY
    except (OSError, ValueError):
        hash_key = HASH_KEY

    summary = (
        f"rollout figures: calls={len(calls)} failed={len(failed)} "
        f"cancelled_by_pod_shutdown_then_retried={len(retried)} moves={len(moves)} "
        f"needless_moves={len(needless)} moves_into_draining={len(into_retiring)} "
        f"final_spread={' '.join(f'{p}={n}' for p, n in final_spread.items())} "
        f"(max {busiest}, limit {BALANCE_FACTOR} x mean {mean:.2f} = {BALANCE_FACTOR * mean:.2f}) "
        f"wait_for_ready={WAIT_FOR_READY} grpc_retries={GRPC_RETRIES} retry_cancelled={RETRY_CANCELLED} "
        f"workers={WORKERS} "
        f"relay_connections={sum(r.accepted for r in relays)} duration={timeline.phases[-1].end - t0:.1f}s "
        f"hash_key={hash_key}")
    table = phase_table(calls, timeline, CLIENTS, t0, workers, sources)
    failed_text = "\n".join(f"  {c.start - t0:7.2f}s client {c.client}: {c.code} {c.detail}" for c in failed[:30])
    retried_text = "\n".join(
        f"  {c.start - t0:7.2f}s client {c.client}: CANCELLED by {p} "
        f"(sent {c.cancelled[0] - timeline.stopped[p]:+.3f}s from its SIGTERM), retry -> {c.pod or c.code}"
        for c, p in retried)
    stray_text = "\n".join(f"  {c.cancelled[0] - t0:7.2f}s client {c.client}: CANCELLED on {p}, "
                           f"retry -> {c.pod or c.code}"
                           for c, p in stray_cancels)
    moves_text = "\n".join(
        f"  {m.at - t0:7.2f}s client {m.client}: {m.old} -> {m.new} (gap {m.at - m.prev_end:.3f}s)"
        f"{'' if m.needed else '  NEEDLESS'}{'  INTO DRAINING/STOPPED POD' if m.into_retiring else ''}"
        for m in moves)
    pods_by_addr = {a: n for n, a in pod_addr.items()}
    snaps = "\n".join(
        f"  {label}: " + ", ".join(
            f"{e.get('client')}->{pods_by_addr.get(e.get('target'), e.get('target'))}/w{e.get('worker')}"
            f"/c{e.get('connections')}" if "error" not in e else e["error"]
            for e in sorted(entries, key=lambda e: str(e.get("client"))))
        for label, entries in affinity_snapshots)
    report = (f"{summary}\n\nevents:\n{events_text(timeline, t0)}\n\nper-phase client -> pods "
              f"(successful calls), !failed:\n{table}\n\nmoves:\n{moves_text or '  none'}\n\n"
              f"daemon affinity (client->pod/worker/connections):\n{snaps}\n\n"
              + (f"failed calls (first 30):\n{failed_text}\n\n" if failed else "")
              + (f"calls cancelled by a pod's shutdown, retried once:\n{retried_text}\n\n" if retried else "")
              + (f"CANCELLED calls NOT at a pod's shutdown:\n{stray_text}\n\n" if stray_cancels else "")
              + (f"relay upstream connect failures: {relay_failures}; errors: {relay_errors[:10]}\n\n"
                 if relay_failures or relay_errors else "")
              + f"resets passed on by the relays (connection teardown after GOAWAY): {relay_resets or 'none'}\n\n"
              + "\n".join(replace_logs))
    print("\n" + report)

    assert not failed, f"{len(failed)} failed calls\n{report}"
    assert not stray_cancels, f"{len(stray_cancels)} calls CANCELLED away from any pod's shutdown\n{report}"
    assert relay_failures == 0, f"{relay_failures} relay connects to stickyd failed\n{report}"
    assert not needless, f"{len(needless)} needless moves\n{report}"
    assert not into_retiring, f"{len(into_retiring)} moves into a draining or stopped pod\n{report}"
    assert not no_progress, f"clients with no successful call in a phase: {no_progress}\n{report}"
    assert set(final.values()) <= set(new_pods), f"clients still on old pods at the end: {final}\n{report}"
    assert busiest <= BALANCE_FACTOR * mean, (
        f"final spread {final_spread}: busiest pod has {busiest} clients, over "
        f"{BALANCE_FACTOR} x mean {mean:.2f}\n{report}")
