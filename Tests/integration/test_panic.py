"""Panic mode and trial connects (docs/HEALTH.md, sections 2 and 7), with the
real daemon, real greeter pods (killed with SIGKILL and restarted on the same
port) and real gRPC clients from many source addresses.

The pools here have no active checks: passive detection takes the killed
pods down, as in the issue's chaos run. Figures are printed (visible with
`-s`) as one `PANIC-FIGURES {json}` line per test.
"""

from __future__ import annotations

import json
import signal
import socket
import sys
import time
from pathlib import Path

import pytest

from admin_support import AdminClient, parse_table, targets_by_address
from conftest import GREETER_DIR, _attach, greeter_env, wait_serving
from rollout_support import REPLY, Relay
from support import LOOPBACK, ManagedProcess, fmt_addr, free_port, wait_until

grpc = pytest.importorskip("grpc", reason="grpcio missing: run `make deps`")

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def figures(tmp_path: Path, name: str, data: dict) -> None:
    (tmp_path / f"{name}.json").write_text(json.dumps(data, indent=2, sort_keys=True))
    print(f"\nPANIC-FIGURES {name} {json.dumps(data, sort_keys=True)}")


class Pods:
    """Greeter pods on fixed ports that can be killed and started again on
    the same port. Every process made is stopped at teardown."""

    def __init__(self, request, code_dir: Path, tmp_path: Path) -> None:
        self.request = request
        self.code_dir = code_dir
        self.tmp_path = tmp_path
        self.procs: list[ManagedProcess] = []
        self.current: dict[str, ManagedProcess] = {}
        self.ports: dict[str, int] = {}

    def start(self, name: str, port: int | None = None) -> str:
        port = port or self.ports.get(name) or free_port()
        self.ports[name] = port
        argv = [sys.executable, str(GREETER_DIR / "server.py"), "--port", str(port), "--name", name]
        p = ManagedProcess(argv, f"{name}#{len(self.procs) + 1}", self.tmp_path / f"{name}-{len(self.procs) + 1}.log",
                           env=greeter_env(self.code_dir))
        self.procs.append(p)
        self.current[name] = p
        _attach(self.request.node, p)
        return self.addr(name)

    def addr(self, name: str) -> str:
        return fmt_addr(LOOPBACK, self.ports[name])

    def kill(self, name: str) -> None:
        p = self.current[name]
        p.send_signal(signal.SIGKILL)
        assert p.wait(10) is not None, f"{name} did not die"
        p.stop(1)

    def serving(self, name: str, timeout: float = 20) -> None:
        try:
            wait_serving(self.addr(name), timeout)
        except TimeoutError as exc:
            raise RuntimeError(f"{exc}\n{self.current[name].output_tail()}") from None

    def stop_all(self) -> None:
        for p in self.procs:
            p.stop(15)


@pytest.fixture
def pods(request, greeter_code, tmp_path):
    made = Pods(request, greeter_code, tmp_path)
    yield made
    made.stop_all()


def start_daemon(run_stickyd, tmp_path: Path, addrs: list[str], health: str):
    """The daemon with one pool `greeter` over `addrs` and the given
    `health` mapping (YAML flow style)."""
    listen = fmt_addr(LOOPBACK, free_port())
    cfg = tmp_path / "panic.yaml"
    cfg.write_text("\n".join([
        f"listeners: [ {{ address: {listen}, pool: greeter }} ]",
        "pools:",
        "  - name: greeter",
        f"    health: {health}",
        "    targets:",
        *[f"      - {{ address: {a} }}" for a in addrs],
        "timeouts: { connect: 1s }",
    ]) + "\n")
    return run_stickyd(args=["--config", str(cfg)], listen=[listen])


def admin_path(d) -> str:
    return d.argv[d.argv.index("--admin-socket") + 1]


def rows(d) -> dict:
    with AdminClient(admin_path(d)) as c:
        return targets_by_address(c)


def stats(d) -> dict[str, int]:
    with AdminClient(admin_path(d)) as c:
        return {k: int(v) for k, v in (line.split(": ", 1) for line in c.cmd("show stats").splitlines())}


def health_column(d) -> dict[str, str]:
    with AdminClient(admin_path(d)) as c:
        return {r["ADDRESS"]: r["HEALTH"] for r in parse_table(c.cmd("show targets"))}


def knock(d, ip: str) -> bool:
    """One client connection from `ip`: the HTTP/2 preface, then the pod's
    first frame (a SETTINGS frame, type 4). True if a pod answered; False
    if the daemon closed the connection (no target took it). Each one makes
    the daemon connect to a target, so connects to dead pods feed passive
    detection."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(5)
    try:
        s.bind((ip, 0))
        s.connect(d.addr)
        s.sendall(H2_PREFACE)
        head = b""
        while len(head) < 9:
            chunk = s.recv(9 - len(head))
            if not chunk:
                return False
            head += chunk
        return head[3] == 4
    except OSError:
        # Reset, broken pipe or no answer: nobody served this client.
        return False
    finally:
        s.close()


def knock_until(d, done, what: str, limit: int = 400, timeout: float = 30) -> int:
    """Knocks from distinct source addresses until `done()` (bounded in
    count and time); returns the knocks made."""
    deadline = time.monotonic() + timeout
    for n in range(limit):
        if done():
            return n
        assert time.monotonic() < deadline, f"{what}: not after {n} clients in {timeout}s"
        knock(d, f"127.0.5.{1 + n % 250}")
    assert done(), f"{what}: not after {limit} clients"
    return limit


def health_of(d, addrs: list[str]) -> list[str]:
    r = rows(d)
    return [r[a]["health"] for a in addrs]


def test_trial_connects_revive_restarted_pods_before_revive_after(run_stickyd, pods, tmp_path):
    """Two of three pods are killed; passive detection takes them down (the
    pool goes into panic: 1 of 3 healthy is below 50%). Both are restarted at
    once: the trial connects bring them up within a few seconds, where
    `revive_after` (60 s) would have kept them out for a minute."""
    names = ["pod-1", "pod-2", "pod-3"]
    addrs = [pods.start(n) for n in names]
    for n in names:
        pods.serving(n)
    revive_after_s = 60
    d = start_daemon(run_stickyd, tmp_path, addrs, f"{{ type: none, revive_after: {revive_after_s}s }}")
    victims = addrs[:2]
    for n in names[:2]:
        pods.kill(n)
    knock_until(d, lambda: health_of(d, victims) == ["down", "down"], "both killed pods down")
    t_down = time.monotonic()
    d.wait_for_output(r"pool in panic", 5)
    s_panic = stats(d)
    assert s_panic["pools_in_panic"] == 1 and s_panic["panic_entered"] == 1, s_panic
    assert [health_column(d)[a] for a in victims] == ["down(panic)", "down(panic)"]

    for n in names[:2]:
        pods.start(n)
    t_restart = time.monotonic()
    for n in names[:2]:
        pods.serving(n)
    t_serving = time.monotonic()
    wait_until(lambda: health_of(d, victims) == ["up", "up"], revive_after_s / 2, interval=0.05,
               what="restarted pods up again through trial connects")
    t_up = time.monotonic()
    r = rows(d)
    d.wait_for_output(r"pool out of panic", 5)
    s_after = stats(d)
    data = {
        "revive_after_s": revive_after_s,
        "down_to_up_s": round(t_up - t_down, 3),
        "restart_to_up_s": round(t_up - t_restart, 3),
        "serving_to_up_s": round(t_up - t_serving, 3),
        "reasons": [r[a]["health_reason"] for a in victims],
        "panic_entered": s_after["panic_entered"],
        "affinity_panic_placements": s_after["affinity_panic_placements"],
    }
    figures(tmp_path, "trial-revive", data)
    for a in victims:
        assert "trial connect ok" in r[a]["health_reason"], r[a]
    # Well before revive_after: the trials back off 1 s, 2 s, 4 s, 8 s.
    assert t_up - t_down < revive_after_s / 3, data
    assert s_after["pools_in_panic"] == 0, s_after
    assert s_after["panic_entered"] == 1, s_after
    # New clients reach the revived pods again.
    reached: set[str] = set()
    for i in range(60):
        if len(reached) == 3:
            break
        relay = Relay(d.addr, f"127.0.6.{i + 1}", f"after{i}")
        try:
            reached.add(say(relay.target, f"after-{i}"))
        finally:
            relay.stop()
    assert reached == set(names), reached


def say(target: str, name: str) -> str:
    """One gRPC call on a new channel; the pod that answered."""
    import helloworld_pb2
    import helloworld_pb2_grpc

    with grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
        reply = helloworld_pb2_grpc.GreeterStub(ch).SayHello(helloworld_pb2.HelloRequest(name=name), timeout=10)
    m = REPLY.match(reply.message)
    assert m, reply.message
    return m["pod"]


def test_all_down_but_one_alive_is_served_in_panic(run_stickyd, pods, tmp_path):
    """Every pod killed, so passive detection takes every target down; then
    one pod comes back, but health does not see it (the trial connects go to
    a `health.port` nobody listens on: a wrong health signal, which panic
    mode is for). Clients from many addresses are served by the live pod
    instead of being refused: the pool is in panic, the dead targets are
    skipped by connect failover. With `panic_threshold: 0` the same state
    refuses them."""
    names = ["pod-1", "pod-2", "pod-3"]
    addrs = [pods.start(n) for n in names]
    for n in names:
        pods.serving(n)
    dead_port = free_port()
    d = start_daemon(run_stickyd, tmp_path, addrs,
                     f"{{ type: none, revive_after: 1h, port: {dead_port} }}")
    for n in names:
        pods.kill(n)
    knock_until(d, lambda: health_of(d, addrs) == ["down"] * 3, "every target down")
    assert stats(d)["pools_in_panic"] == 1

    pods.start("pod-2")
    pods.serving("pod-2")
    before = stats(d)
    served: list[str] = []
    relays = [Relay(d.addr, f"127.0.7.{i + 1}", f"panic{i}") for i in range(12)]
    try:
        for i, relay in enumerate(relays):
            served.append(say(relay.target, f"panic-{i}"))
    finally:
        for relay in relays:
            relay.stop()
    after = stats(d)
    cols = health_column(d)
    r = rows(d)
    data = {
        "clients": len(relays), "served": len(served), "by_pod": {p: served.count(p) for p in set(served)},
        "affinity_panic_placements": after["affinity_panic_placements"] - before["affinity_panic_placements"],
        "connect_retries": after["connect_retries"] - before["connect_retries"],
        "health": cols,
    }
    figures(tmp_path, "all-down-one-alive", data)
    assert served == ["pod-2"] * len(relays), data
    assert [r[a]["health"] for a in addrs] == ["down"] * 3, "health still says down: panic served them"
    assert all(cols[a] == "down(panic)" for a in addrs), cols
    assert all(r[a]["effective_state"] == "ready" and r[a]["health_panic"] for a in addrs), r
    assert data["affinity_panic_placements"] >= len(relays), data
    assert after["pools_in_panic"] == 1 and after["panic_entered"] == 1, after
    # Failover skipped the targets that refused: some clients were placed
    # on a dead pod first.
    assert data["connect_retries"] > 0, data
    assert "pool in panic" in d.output()


def test_panic_threshold_zero_refuses_when_all_down(run_stickyd, pods, tmp_path):
    """The contrast: panic off, every target passively down, one pod alive
    again but unseen by health (as above): clients are refused."""
    names = ["pod-1", "pod-2"]
    addrs = [pods.start(n) for n in names]
    for n in names:
        pods.serving(n)
    d = start_daemon(run_stickyd, tmp_path, addrs,
                     f"{{ type: none, revive_after: 1h, port: {free_port()}, panic_threshold: 0 }}")
    for n in names:
        pods.kill(n)
    knock_until(d, lambda: health_of(d, addrs) == ["down"] * 2, "every target down")
    pods.start("pod-2")
    pods.serving("pod-2")
    answered = [knock(d, f"127.0.8.{i + 1}") for i in range(10)]
    s = stats(d)
    assert answered == [False] * 10, answered
    assert s["pools_in_panic"] == 0 and s["panic_entered"] == 0, s
    assert "pool in panic" not in d.output()
