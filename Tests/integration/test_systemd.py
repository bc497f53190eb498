"""systemd integration: readiness and the watchdog over the sd_notify
protocol, observed on a real datagram socket standing in for systemd's."""

from __future__ import annotations

import os
import signal
import socket
import time

from conftest import REPO, Stickyd
from support import LOOPBACK, echo_handler, fmt_addr, free_port


def recv_until(sock: socket.socket, want: str, timeout: float) -> list[str]:
    """Datagrams received until one contains `want` (bounded)."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            msg = sock.recv(4096).decode()
        except socket.timeout:
            break
        seen.append(msg)
        if want in msg:
            return seen
    raise AssertionError(f"no {want!r} within {timeout}s; got {seen}")


def test_ready_watchdog_and_stopping_are_notified(stickyd_path, backend, tmp_path, request):
    srv = backend(echo_handler)
    path = str(tmp_path / "notify.sock")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(path)
    request.addfinalizer(notify.close)

    port = free_port()
    env = dict(os.environ, NOTIFY_SOCKET=path, WATCHDOG_USEC="3000000")
    argv = [str(stickyd_path), "--listen", fmt_addr(LOOPBACK, port), "--target", srv.addr,
            "--admin-socket", str(tmp_path / "admin.sock"), "--state-dir", str(tmp_path / "state")]
    d = Stickyd(argv, "stickyd(notify)", tmp_path / "stickyd.log", env=env, cwd=str(REPO))
    d.listen = [(LOOPBACK, port)]
    request.addfinalizer(d.stop)

    ready = recv_until(notify, "READY=1", timeout=20)[-1]
    assert f"MAINPID={d.pid}" in ready, ready
    # Readiness means serving: a client is proxied right away.
    with socket.create_connection((LOOPBACK, port), timeout=5) as c:
        c.sendall(b"hi\n")
        assert c.recv(3) == b"hi\n"

    # WATCHDOG_USEC=3s: pets every 1.5 s while the workers tick.
    t0 = time.monotonic()
    recv_until(notify, "WATCHDOG=1", timeout=5)
    recv_until(notify, "WATCHDOG=1", timeout=5)
    assert time.monotonic() - t0 < 6

    d.send_signal(signal.SIGTERM)
    recv_until(notify, "STOPPING=1", timeout=10)
    assert d.stop() == 0
