"""gRPC through stickyd to real greeter pods (examples/greeter), and the pods themselves."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from conftest import GREETER_DIR, greeter_env
from support import LOOPBACK, fmt_addr, free_port

grpc = pytest.importorskip("grpc", reason="grpcio missing: run `make deps`")

REPLY = re.compile(r"^Hello, (?P<name>.+)! \(from (?P<pod>pod-\d+)\)$")


def say_hello(target: str, name: str, channel=None) -> str:
    import helloworld_pb2
    import helloworld_pb2_grpc

    own = channel is None
    ch = channel or grpc.insecure_channel(target)
    try:
        reply = helloworld_pb2_grpc.GreeterStub(ch).SayHello(
            helloworld_pb2.HelloRequest(name=name), timeout=10)
        return reply.message
    finally:
        if own:
            ch.close()


def test_say_hello_through_stickyd(run_stickyd, greeter_pods, greeter_code, engine):
    pods = greeter_pods(3)
    names = {name for name, _, _ in pods}
    d = run_stickyd([addr for _, addr, _ in pods], engine=engine)
    target = fmt_addr(*d.addr)

    # A new channel (new TCP connection) per call.
    seen = set()
    for i in range(12):
        m = REPLY.match(say_hello(target, f"caller-{i}"))
        assert m, "unexpected reply"
        assert m["name"] == f"caller-{i}"
        assert m["pod"] in names, f"reply from unknown pod {m['pod']}"
        seen.add(m["pod"])

    # One long-lived channel: one connection, so one pod for all its calls.
    with grpc.insecure_channel(target) as ch:
        pods_on_channel = {REPLY.match(say_hello(target, f"keep-{i}", ch))["pod"] for i in range(20)}
    assert len(pods_on_channel) == 1, f"one connection was served by {pods_on_channel}"

    # Concurrent calls on several channels.
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        try:
            with grpc.insecure_channel(target) as ch:
                for i in range(10):
                    assert REPLY.match(say_hello(target, f"w{k}-{i}", ch))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a gRPC worker is stuck"
    assert not errors, f"{len(errors)} workers failed: {errors[0]!r}"

    # The example client, as a user runs it.
    out = subprocess.run(
        [sys.executable, str(GREETER_DIR / "client.py"), "--target", target, "--name", "cli",
         "--count", "5", "--new-channel-each-call"],
        env=greeter_env(greeter_code),
        capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"client.py failed: {out.stderr}"
    lines = out.stdout.splitlines()
    assert len(lines) == 5, out.stdout
    assert all(REPLY.match(line) and REPLY.match(line)["pod"] in names for line in lines), out.stdout


def test_client_exits_nonzero_on_rpc_error(greeter_code):
    dead = fmt_addr(LOOPBACK, free_port())
    out = subprocess.run(
        [sys.executable, str(GREETER_DIR / "client.py"), "--target", dead, "--count", "2",
         "--timeout", "1"],
        env=greeter_env(greeter_code), capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "UNAVAILABLE" in out.stderr or "DEADLINE_EXCEEDED" in out.stderr, out.stderr


def test_pod_reports_not_serving_on_sigterm_then_exits(greeter_pods):
    """A pod's health Watch stream turns NOT_SERVING at SIGTERM; the pod exits 0."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    [(name, addr, proc)] = greeter_pods(1, extra=["--shutdown-delay", "0.5", "--grace", "2"])
    assert REPLY.match(say_hello(addr, "x"))["pod"] == name
    statuses: list[int] = []
    with grpc.insecure_channel(addr) as ch:
        stream = health_pb2_grpc.HealthStub(ch).Watch(
            health_pb2.HealthCheckRequest(service="helloworld.Greeter"), timeout=10)
        first = next(stream)
        assert first.status == health_pb2.HealthCheckResponse.SERVING
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            for update in stream:
                statuses.append(update.status)
                if update.status == health_pb2.HealthCheckResponse.NOT_SERVING:
                    break
        except grpc.RpcError:
            pass
        took = time.monotonic() - t0
    assert health_pb2.HealthCheckResponse.NOT_SERVING in statuses, f"updates seen: {statuses}"
    assert took < 1.0, f"NOT_SERVING came {took:.2f}s after SIGTERM"
    status = proc.wait(10)
    assert status == 0, f"pod exit status {status}"
