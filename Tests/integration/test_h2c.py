"""gRPC-aware drain (docs/HTTP2.md): stickyd ends a leaving target's h2c
connections with one GOAWAY at a frame boundary, so a drain ends as soon as
the streams in flight are done, and fails no call.

Real greeter pods (grpcio), real gRPC clients through per-client source-IP
relays (rollout_support.Relay), the real daemon.

- A careful rollout: each pod is replaced with `stickyctl replace` and
  SIGTERMed only once the replace has returned. Every drain ends in under
  3 s, no call fails, no client moves without need, and the spread stays
  within balance_factor x the mean.
- A rollout that SIGTERMs each pod as soon as its drain starts: its failed
  calls are reported.
- A server-streaming call that runs through a drain completes.
- The tracker: a target that does not speak HTTP/2 on an h2c pool, and one
  that sends a malformed header after its SETTINGS, are forwarded byte-exact
  and counted.
- max_connection_age: long-lived clients spread onto a 4th pod within a few
  ages, and only clients of overloaded pods move.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import time

import pytest

from rollout_support import (AdminClient, GreeterLoad, Relay, Timeline, events_text, find_moves, last_pods,
                             phase_table, spread, start_replace, steering_worker)
from support import LOOPBACK, connect, fmt_addr, free_port, random_bytes, recv_exactly, wait_until

grpc = pytest.importorskip("grpc", reason="grpcio missing: run `make deps`")

CLIENTS = 12
WORKERS = 2
BALANCE_FACTOR = 1.25
POD_ARGS = ["--grace", "2"]
DRAIN_END_S = 3.0  # the figure a drain must end within (DESIGN.md)
DRAIN_TIMEOUT_S = 10


def write_config(path, listen: str, pods, *, extra_pool: str = "", drain_timeout_s: int = DRAIN_TIMEOUT_S) -> None:
    targets = "\n".join(f"      - {{ address: {addr}, weight: 1, name: {name} }}" for name, addr, _ in pods)
    path.write_text(f"""\
workers: {WORKERS}
listeners:
  - address: {listen}
pools:
  - name: greeter
    protocol: h2c
{extra_pool}    targets:
{targets}
    affinity: {{ balance_factor: {BALANCE_FACTOR} }}
drain: {{ mode: strict, timeout: {drain_timeout_s}s, grace: 2s }}
""")


def start_daemon(run_stickyd, tmp_path, pods, **config):
    listen = fmt_addr(LOOPBACK, free_port())
    cfg = tmp_path / "h2c.yaml"
    write_config(cfg, listen, pods, **config)
    sock = str(tmp_path / "admin.sock")
    d = run_stickyd(listen=[listen], args=["--config", str(cfg), "--admin-socket", sock,
                                           "--state-dir", str(tmp_path / "state")])
    wait_until(lambda: os.path.exists(sock), 10, what="admin socket")
    return d, AdminClient(sock), sock


def target_of(admin: AdminClient, address: str) -> dict | None:
    return next((t for t in admin.targets() if t["address"] == address), None)


def stats(admin: AdminClient) -> dict:
    return admin.json("show stats")


def rollout(run_stickyd, greeter_pods, tmp_path, *, sigterm_at_drain_start: bool):
    """Replaces each of 3 pods under 12 long-lived clients; returns the figures."""
    old_pods = greeter_pods(3, extra=POD_ARGS)
    pod_addr = {name: addr for name, addr, _ in old_pods}
    d, admin, sock = start_daemon(run_stickyd, tmp_path, old_pods)
    sources = {i: f"127.0.2.{i + 1}" for i in range(CLIENTS)}
    workers = {i: steering_worker(ip, WORKERS) for i, ip in sources.items()}
    relays = [Relay(d.addr, sources[i], f"relay-{i}") for i in range(CLIENTS)]
    # The careful rollout stops a pod only after its clients left it, so no
    # call can race the pod's shutdown: no retry of a CANCELLED call there.
    load = GreeterLoad(relays, deadline_s=5.0, retry_cancelled=sigterm_at_drain_start)
    timeline = Timeline()
    drain_times: dict[str, float] = {}
    goaways: dict[str, int] = {}
    logs: list[str] = []
    new_pods: list[str] = []
    t0 = time.monotonic()
    try:
        timeline.begin("before", t0)
        load.start()
        load.wait_each_succeeded(t0, 20, 30, "warm-up")
        for name, addr, proc in old_pods:
            timeline.begin(f"replace {name}", time.monotonic())
            [(new_name, new_addr, _)] = greeter_pods(1, extra=POD_ARGS)
            new_pods.append(new_name)
            pod_addr[new_name] = new_addr
            log_path = tmp_path / f"replace-{name}.log"
            # The drain starts within milliseconds of this, and with GOAWAY
            # its clients may have moved before a poll could see it
            # draining: the old pod counts as leaving from here (a move
            # away from it is needed; a move anywhere else is not).
            t_replace = time.monotonic()
            rp = start_replace(addr, new_addr, new_name, sock, DRAIN_TIMEOUT_S, log_path)
            try:
                def draining() -> bool:
                    if rp.poll() is not None:
                        return True  # it may have finished before we looked
                    t = target_of(admin, addr)
                    return t is not None and t["state"] == "draining"

                wait_until(draining, 20, interval=0.01, what=f"{name} draining")
                timeline.drained[name] = t_replace
                if sigterm_at_drain_start:
                    timeline.stopped[name] = time.monotonic()
                    proc.send_signal(signal.SIGTERM)
                rc = rp.wait(DRAIN_TIMEOUT_S + 15)
            finally:
                if rp.poll() is None:
                    rp.kill()
                    rp.wait(5)
            drain_times[name] = time.monotonic() - timeline.drained[name]
            out = log_path.read_text(errors="replace")
            logs.append(f"--- replace {name} -> {new_name} (exit {rc}, {drain_times[name]:.2f}s)\n{out}")
            assert rc == 0, f"stickyctl replace {name} exited {rc}:\n{out}"
            # The progress names the GOAWAYs the drain sent.
            assert "GOAWAY sent to" in out, out
            timeline.removed[name] = time.monotonic()
            if not sigterm_at_drain_start:
                timeline.stopped[name] = time.monotonic()
                proc.send_signal(signal.SIGTERM)
            assert proc.wait(15) == 0
            load.wait_each_succeeded(timeline.removed[name], 10, 20, f"after replacing {name}")
        t_tail = time.monotonic()
        timeline.begin("after", t_tail)
        load.wait_each_succeeded(t_tail, 20, 20, "tail load")
        goaways = {k: v for k, v in stats(admin).items() if k.startswith("goaways_sent")}
    finally:
        stuck = load.stop(10)
        timeline.finish(time.monotonic())
        for r in relays:
            r.stop()
        admin.close()
    assert not stuck and not load.crashes, (stuck, load.crashes)
    calls = load.snapshot()
    failed = [c for c in calls if c.pod is None]
    moves = find_moves(calls, timeline)
    final = spread(last_pods(calls), new_pods)
    report = (f"h2c rollout (sigterm_at_drain_start={sigterm_at_drain_start}): calls={len(calls)} "
              f"failed={len(failed)} moves={len(moves)} needless={sum(not m.needed for m in moves)} "
              f"drain_s={ {k: round(v, 2) for k, v in drain_times.items()} } final_spread={final} "
              f"goaways={goaways}\n\nevents:\n{events_text(timeline, t0)}\n\n"
              f"{phase_table(calls, timeline, CLIENTS, t0, workers, sources)}\n\n"
              + "\n".join(f"  failed {c.start - t0:.2f}s client {c.client}: {c.code} {c.detail}" for c in failed[:20])
              + "\n" + "\n".join(logs))
    print("\n" + report)
    return failed, moves, final, drain_times, goaways, report


def test_careful_rollout_drains_in_seconds_and_fails_no_call(run_stickyd, greeter_pods, greeter_code, tmp_path):
    failed, moves, final, drain_times, goaways, report = rollout(
        run_stickyd, greeter_pods, tmp_path, sigterm_at_drain_start=False)
    assert not failed, f"{len(failed)} failed calls\n{report}"
    slow = {k: v for k, v in drain_times.items() if v >= DRAIN_END_S}
    assert not slow, f"drains that took {DRAIN_END_S}s or more: {slow}\n{report}"
    assert not [m for m in moves if not m.needed], f"needless moves\n{report}"
    mean = CLIENTS / len(final)
    assert max(final.values()) <= BALANCE_FACTOR * mean, f"spread {final}\n{report}"
    assert goaways.get("goaways_sent_drain", 0) >= CLIENTS, f"GOAWAYs sent: {goaways}\n{report}"


def test_rollout_with_sigterm_at_drain_start(run_stickyd, greeter_pods, greeter_code, tmp_path):
    """As test_rollout.py does it, on an h2c pool: the pod's own GOAWAY and
    ours race; the failed calls are reported (and must be 0, as there)."""
    failed, moves, final, drain_times, _, report = rollout(
        run_stickyd, greeter_pods, tmp_path, sigterm_at_drain_start=True)
    assert not failed, f"{len(failed)} failed calls\n{report}"
    assert not [m for m in moves if not m.needed], f"needless moves\n{report}"


def test_stream_in_flight_finishes_through_a_drain(run_stickyd, greeter_pods, greeter_code, tmp_path):
    import helloworld_pb2
    import helloworld_pb2_grpc

    pods = greeter_pods(2)
    (a_name, a_addr, _), (b_name, b_addr, _) = pods
    d, admin, sock = start_daemon(run_stickyd, tmp_path, pods)
    relay = Relay(d.addr, "127.0.2.100", "stream-relay")
    try:
        with grpc.insecure_channel(relay.target, options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
            stub = helloworld_pb2_grpc.GreeterStub(ch)
            first = stub.SayHello(helloworld_pb2.HelloRequest(name="x"), timeout=5).message
            pod = a_name if f"(from {a_name})" in first else b_name
            other = b_name if pod == a_name else a_name
            addr = a_addr if pod == a_name else b_addr
            stream = stub.SayHelloStream(helloworld_pb2.HelloRequest(name="s", count=30, interval_ms=100), timeout=20)
            replies = [next(stream).message]
            t_drain = time.monotonic()
            assert admin.command(f"drain target {addr} mode strict timeout 20s").startswith("ok"), "drain refused"
            replies += [r.message for r in stream]
            t_done = time.monotonic()
            assert len(replies) == 30, replies
            assert all(f"(from {pod})" in r for r in replies), replies
            # The drain ends once the stream is done and the client left.
            wait_until(lambda: (target_of(admin, addr) or {}).get("connections", 1) == 0, DRAIN_END_S,
                       what="the drained pod's connection to close after the stream")
            assert time.monotonic() - t_done < DRAIN_END_S
            assert t_done - t_drain > 1.0, "the stream should still have been running at the drain"
            # The client's next call opens a new connection, placed on the other pod.
            nxt = stub.SayHello(helloworld_pb2.HelloRequest(name="y"), timeout=5).message
            assert f"(from {other})" in nxt, nxt
        t = target_of(admin, addr)
        assert t["goaways_sent"] == 1 and t["goaway_closed"] == 1, t
    finally:
        relay.stop()
        admin.close()


def h2_frame(ftype: int, flags: int, stream: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(">I", stream) + payload


def byte_exact_through_h2c_pool(run_stickyd, backend, tmp_path, greeting: bytes, counter: str):
    """A backend that sends `greeting` first, then echoes; returns the daemon's stats."""
    def handler(server, conn, rec):
        conn.sendall(greeting)
        while True:
            data = conn.recv(65536)
            if not data:
                conn.shutdown(socket.SHUT_WR)
                return
            conn.sendall(data)

    srv = backend(handler)
    d, admin, _ = start_daemon(run_stickyd, tmp_path, [("echo", srv.addr, None)])
    try:
        payload = random_bytes(1_000_000, seed=11)
        with connect(d.addr) as s:
            s.settimeout(10)
            assert recv_exactly(s, len(greeting)) == greeting
            s.sendall(payload)
            assert recv_exactly(s, len(payload)) == payload
            # Draining its target sends nothing into a stream stickyd cannot follow.
            assert admin.command(f"drain target {srv.addr} mode strict timeout 20s").startswith("ok")
            s.sendall(b"still here")
            assert recv_exactly(s, 10) == b"still here"
        wait_until(lambda: stats(admin).get(counter, 0) == 1, 5, what=f"{counter} counted")
        assert stats(admin).get("goaways_sent_drain", 0) == 0
    finally:
        admin.close()


def test_target_that_does_not_speak_http2_is_forwarded_byte_exact(run_stickyd, backend, tmp_path):
    byte_exact_through_h2c_pool(run_stickyd, backend, tmp_path, b"HTTP/1.1 200 OK\r\n\r\n", "h2_untracked_not_http2")


def test_malformed_header_after_settings_stops_tracking_not_the_connection(run_stickyd, backend, tmp_path):
    # A valid server preface, then a PING on stream 1: a connection error
    # from the header alone (RFC 9113 §6.7).
    greeting = h2_frame(0x4, 0, 0, b"") + h2_frame(0x6, 0, 1, b"12345678")
    byte_exact_through_h2c_pool(run_stickyd, backend, tmp_path, greeting, "h2_untracked_malformed_header")


def test_max_connection_age_spreads_long_lived_clients_onto_a_new_pod(run_stickyd, greeter_pods, greeter_code,
                                                                        tmp_path):
    age_s = 5
    pods = greeter_pods(3, extra=POD_ARGS)
    d, admin, sock = start_daemon(run_stickyd, tmp_path, pods, extra_pool=f"    max_connection_age: {age_s}s\n")
    relays = [Relay(d.addr, f"127.0.3.{i + 1}", f"age-relay-{i}") for i in range(CLIENTS)]
    load = GreeterLoad(relays, deadline_s=5.0, retry_cancelled=False)
    try:
        t0 = time.monotonic()
        load.start()
        load.wait_each_succeeded(t0, 10, 30, "warm-up")
        before = last_pods(load.snapshot())
        [(new_name, new_addr, _)] = greeter_pods(1, extra=POD_ARGS)
        t_add = time.monotonic()
        assert admin.command(f"add target {new_addr} name {new_name}").startswith("ok")
        names = [n for n, _, _ in pods] + [new_name]
        mean = CLIENTS / len(names)

        def spread_ok() -> bool:
            now = last_pods([c for c in load.snapshot() if c.start >= t_add])
            return len(now) == CLIENTS and max(spread(now, names).values()) <= BALANCE_FACTOR * mean

        wait_until(spread_ok, 6 * age_s, interval=0.2, what="clients to spread onto the new pod")
        t_spread = time.monotonic()
        load.wait_each_succeeded(t_spread, 10, 20, "after the spread")
    finally:
        load.stop(10)
        for r in relays:
            r.stop()
    calls = load.snapshot()
    moves = find_moves([c for c in calls if c.start >= t_add], Timeline())
    after = last_pods(calls)
    report = (f"age: before={spread(before, names)} after={spread(after, names)} moves="
              + ", ".join(f"{m.client}:{m.old}->{m.new}@{m.at - t_add:.1f}s" for m in moves))
    failed = [c for c in calls if c.pod is None]
    report += "".join(f"\n  failed {c.start - t_add:+.2f}s client {c.client}: {c.code} {c.detail}" for c in failed[:10])
    print("\n" + report)
    assert not failed, f"{len(failed)} failed calls: {report}"
    # Only clients of overloaded pods moved, each once, and only onto pods
    # that were under the mean: the new pod, or an old pod that the start
    # left short (12 clients hash onto 3 pods unevenly, 2/5/5 say).
    overloaded = {p for p, n in spread(before, names).items() if n > BALANCE_FACTOR * mean}
    short = {p for p, n in spread(before, names).items() if n < mean}
    assert moves, report
    assert any(m.new == new_name for m in moves), f"nobody moved onto the new pod: {report}"
    assert all(m.new in short for m in moves), f"a client moved onto a pod that was not short: {report}"
    assert all(m.old in overloaded for m in moves), f"a client of a pod within its bound moved: {report}"
    assert len({m.client for m in moves}) == len(moves), f"a client moved twice: {report}"
    age_moves = admin.json("show stats").get("affinity_moves_age", 0)
    admin.close()
    assert age_moves >= 1, report
