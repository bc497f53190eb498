"""systemd integration: readiness and the watchdog over the sd_notify
protocol, observed on a real datagram socket standing in for systemd's."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
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


UNIT = REPO / "systemd" / "stickyd.service"


def unit_settings(text: str) -> dict[str, list[str]]:
    """Key -> every value it is given in the unit (keys may repeat)."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "[")) or "=" not in line:
            continue
        k, v = line.split("=", 1)
        out.setdefault(k, []).append(v)
    return out


def test_unit_passes_systemd_analyze_verify(stickyd_path, tmp_path):
    # The shipped unit names /usr/local/bin/stickyd; verify checks that the
    # binary exists, so point a copy at the one just built.
    text = UNIT.read_text().replace("/usr/local/bin/stickyd", str(stickyd_path))
    unit = tmp_path / "stickyd.service"
    unit.write_text(text)
    r = subprocess.run(["systemd-analyze", "verify", str(unit)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    # verify also warns (exit 0) about unknown keys and bad values.
    assert "stickyd.service" not in r.stderr, r.stderr

    s = unit_settings(text)
    assert s["Type"] == ["notify"]
    assert any("-HUP" in v for v in s["ExecReload"])
    assert s["RuntimeDirectory"] == ["stickyd"] and s["StateDirectory"] == ["stickyd"]
    assert int(s["LimitNOFILE"][0]) >= 65536
    for key in ("NoNewPrivileges", "PrivateTmp"):
        assert s[key] == ["yes"], key
    assert s["ProtectSystem"] == ["strict"]
    # CAP_NET_ADMIN and AF_NETLINK for `vip:` (adding the VIP over rtnetlink).
    assert set(s["CapabilityBoundingSet"][0].split()) == {"CAP_NET_BIND_SERVICE", "CAP_NET_ADMIN"}
    assert set(s["AmbientCapabilities"][0].split()) == {"CAP_NET_BIND_SERVICE", "CAP_NET_ADMIN"}
    assert set(s["RestrictAddressFamilies"][0].split()) == {"AF_INET", "AF_INET6", "AF_UNIX", "AF_NETLINK"}
    # After any exit, a crash included, the VIP comes off its interface, read
    # from the same config (test_ecmp runs this command where systemd would).
    config = s["ExecStart"][0].split("--config ", 1)[1]
    assert s["ExecStopPost"] == [f"-{stickyd_path} vip-release {config}"]


def expand_syscall_group(name: str, seen: set[str] | None = None) -> set[str]:
    """Every system call in a systemd group, nested groups included."""
    seen = set() if seen is None else seen
    if not name.startswith("@"):
        return {name}
    if name in seen:
        return set()
    seen.add(name)
    r = subprocess.run(["systemd-analyze", "syscall-filter", name],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    calls: set[str] = set()
    for line in r.stdout.splitlines()[1:]:  # the first line is the group's own name
        w = line.strip()
        if w and not w.startswith("#"):
            calls |= expand_syscall_group(w, seen)
    return calls


def test_unit_syscall_filter_allows_io_uring():
    """The filter must leave the ring's three system calls allowed: expand
    the allow-list and the deny-list with systemd's own tables."""
    s = unit_settings(UNIT.read_text())
    allowed: set[str] = set()
    denied: set[str] = set()
    for v in s["SystemCallFilter"]:
        target = denied if v.startswith("~") else allowed
        for group in v.lstrip("~").split():
            target |= expand_syscall_group(group)
    assert len(allowed) > 100, "the allow-list expanded to almost nothing"
    for call in ("io_uring_setup", "io_uring_enter", "io_uring_register",
                 "setsockopt", "sendmsg", "recvmsg", "setrlimit", "eventfd2"):
        assert call in allowed, call
        assert call not in denied, call
