"""Zero-downtime upgrade (docs/OPERATIONS.md, "Upgrade"): `stickyd --takeover`
takes the running daemon's listening sockets, targets, drains and affinity;
`stickyctl upgrade` (admin `upgrade [BINARY]`) has the daemon start that
successor itself.

Continuous connections from many client IPs run across the upgrade: none may
fail, and no client may change target. A failed or abandoned takeover leaves
the old daemon serving.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import struct
import subprocess
import threading
import time

import pytest

from admin_support import admin, client_ip, connect_from, echo_check, make_named_handler
from conftest import REPO, Stickyd
from rollout_support import stickyctl_bin
from support import LOOPBACK, TcpServer, fmt_addr, free_port, wait_until

CLIENTS = 96
THREADS = 8
LOAD_SECONDS_MAX = 60.0
CONNECTIONS_MAX = 20_000


def flag(d: Stickyd, name: str) -> str:
    return d.argv[d.argv.index(name) + 1]


def targets(sock: str) -> dict:
    return {t["address"]: t for t in json.loads(admin(sock, "json show targets"))["targets"]}


class Load:
    """THREADS threads cycling over CLIENTS client IPs, one short connection
    at a time (name line, one echo, close), until stopped; bounded in count
    and time. Records each IP's targets and every failure with its time."""

    def __init__(self, addr: tuple[str, int]) -> None:
        self.addr = addr
        self.lock = threading.Lock()
        self.seen: dict[str, list[tuple[float, str]]] = {}
        self.failures: list[tuple[float, str, str]] = []
        self.count = 0
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.run, args=(t,), daemon=True) for t in range(THREADS)]

    def run(self, t: int) -> None:
        deadline = time.monotonic() + LOAD_SECONDS_MAX
        n = t
        while not self.stop.is_set() and time.monotonic() < deadline:
            with self.lock:
                if self.count >= CONNECTIONS_MAX:
                    return
            ip = client_ip(n % CLIENTS)
            n += THREADS
            try:
                s, name = connect_from(ip, self.addr)
                try:
                    echo_check(s, b"ping\n")
                finally:
                    s.close()
            except (OSError, EOFError, AssertionError) as exc:
                with self.lock:
                    self.failures.append((time.monotonic(), ip, f"{type(exc).__name__}: {exc}"))
                continue
            with self.lock:
                self.seen.setdefault(ip, []).append((time.monotonic(), name))
                self.count += 1

    def start(self) -> "Load":
        for th in self.threads:
            th.start()
        return self

    def finish(self) -> None:
        self.stop.set()
        for th in self.threads:
            th.join(LOAD_SECONDS_MAX + 10)

    def wait_count(self, n: int, what: str) -> None:
        wait_until(lambda: self.count >= n or self.failures, 30, what=what)

    def violations(self) -> dict[str, set[str]]:
        with self.lock:
            return {ip: {n for _, n in v} for ip, v in self.seen.items() if len({n for _, n in v}) > 1}

    def after(self, t: float) -> int:
        with self.lock:
            return sum(1 for v in self.seen.values() for at, _ in v if at >= t)


def start_backends(n: int) -> list[TcpServer]:
    return [TcpServer(make_named_handler(f"pod-{i + 1}"), name=f"pod-{i + 1}") for i in range(n)]


def serving_two_pods(run_stickyd, request, clients: int):
    """Two pods behind a 2-worker daemon, `clients` client IPs pinned.
    Returns (pods, old daemon, its admin socket, {client IP: pod name})."""
    pods = start_backends(2)
    request.addfinalizer(lambda: [p.stop() for p in pods])
    old = run_stickyd([p.addr for p in pods], args=["--workers", "2"])
    pinned = {client_ip(i): connect_from(client_ip(i), old.addr)[1] for i in range(clients)}
    return pods, old, flag(old, "--admin-socket"), pinned


def successor(old: Stickyd, tmp_path, label: str, extra=()) -> Stickyd:
    """The same command line as the running daemon, plus --takeover."""
    argv = list(old.argv) + ["--takeover", *extra]
    p = Stickyd(argv, label, tmp_path / f"{label}.log", cwd=str(REPO))
    p.listen = old.listen
    return p


def test_takeover_keeps_every_connection_placement_and_drain(run_stickyd, tmp_path, request):
    pods = start_backends(3)
    request.addfinalizer(lambda: [p.stop() for p in pods])
    old = run_stickyd([p.addr for p in pods], args=["--workers", "2"])
    sock = flag(old, "--admin-socket")
    addr = old.addr

    # Every client pinned, then one target drained (sticky: its clients stay).
    first = {client_ip(i): connect_from(client_ip(i), addr)[1] for i in range(CLIENTS)}
    drained = pods[2]
    assert "pod-3" in first.values()
    assert admin(sock, f"drain target {drained.addr} mode sticky timeout 300s").startswith("ok")
    before = targets(sock)[drained.addr]
    assert before["state"] == "draining"

    # A long-lived connection through the old daemon.
    long_lived, long_name = connect_from(client_ip(CLIENTS + 1), addr)
    echo_check(long_lived, b"before\n")

    load = Load(addr).start()
    try:
        load.wait_count(300, "load running before the upgrade")
        t_start = time.monotonic()
        new = successor(old, tmp_path, "stickyd-successor")
        request.addfinalizer(new.stop)
        new.wait_for_output(r"took over; accepting", 30)
        t_took = time.monotonic()
        new.wait_for_output(r"\bready\b", 10)
        old.expect_exit = True
        # The long-lived connection still belongs to the old daemon.
        echo_check(long_lived, b"during\n")
        during = load.count
        load.wait_count(during + 300, "load running after the upgrade")
    finally:
        load.finish()
    long_lived.close()

    # The old daemon finishes its connections and exits 0.
    status = old.wait(20)
    assert status == 0, f"old daemon exit status {status}\n{old.output_tail()}"

    paused = re.search(r"accept_paused_ms=(\d+)", new.output())
    print(f"\nupgrade figures: connections={load.count} during_upgrade="
          f"{sum(1 for v in load.seen.values() for at, _ in v if t_start <= at <= t_took)} "
          f"after={load.after(t_took)} failed={len(load.failures)} violations={len(load.violations())} "
          f"accept_paused_ms={paused.group(1) if paused else '?'}")
    assert load.failures == [], load.failures[:5]
    assert load.violations() == {}
    assert load.after(t_took) >= 300
    # Every client kept the target it had before the upgrade.
    moved = {ip: (first[ip], names) for ip, names in
             ((ip, {n for _, n in v}) for ip, v in load.seen.items()) if names != {first[ip]}}
    assert moved == {}
    assert long_name in {"pod-1", "pod-2", "pod-3"}

    # The successor answers on the same admin socket, with the drain intact.
    info = admin(sock, "json show info")
    assert json.loads(info)["pid"] == str(new.pid)
    after = targets(sock)[drained.addr]
    assert after["state"] == "draining"
    assert after["drain_mode"] == "sticky"
    assert 0 < after["drain_remaining_ms"] <= before["drain_remaining_ms"]
    # Its clients are still sent to it (sticky drain), new ones are not.
    pinned_to_drained = [ip for ip, n in first.items() if n == "pod-3"]
    assert connect_from(pinned_to_drained[0], addr)[1] == "pod-3"


def proxied_name(addr: tuple[str, int], source_ip: str, header_client: str) -> str:
    """One connection carrying a PROXY v1 header for header_client: the
    name of the pod that answers."""
    s = socket.create_connection(addr, timeout=10, source_address=(source_ip, 0))
    try:
        s.sendall(f"PROXY TCP4 {header_client} 127.0.0.1 40000 {addr[1]}\r\nping\n".encode())
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            reply += chunk
        return reply.decode().split()[0] if reply else ""
    finally:
        s.close()


def test_takeover_keeps_proxy_protocol_listeners(run_stickyd, tmp_path, request):
    """A successor takes PROXY listeners as PROXY listeners: the header is
    still required and parsed (not forwarded as payload), and its client
    keeps its target."""
    pods = start_backends(3)
    request.addfinalizer(lambda: [p.stop() for p in pods])
    old = run_stickyd([p.addr for p in pods], args=["--proxy-from", "127.0.0.0/8"])
    addr = old.addr
    before = {f"198.51.100.{k}": proxied_name(addr, "127.0.0.2", f"198.51.100.{k}") for k in range(1, 21)}
    assert all(n.startswith("pod-") for n in before.values()), before

    new = successor(old, tmp_path, "stickyd-proxy-successor")
    request.addfinalizer(new.stop)
    new.wait_for_output(r"took over; accepting", 30)
    old.expect_exit = True
    assert old.wait(20) == 0

    # Through the successor, from another socket source: same pods.
    after = {c: proxied_name(addr, "127.0.0.3", c) for c in before}
    assert after == before
    # A connection without a header is still refused.
    with socket.create_connection(addr, timeout=10) as c:
        c.sendall(b"ping\n")
        c.settimeout(10)
        try:
            assert c.recv(100) == b"", "bytes without a PROXY header were forwarded"
        except ConnectionResetError:
            pass


def fake_successor(path: str) -> tuple[socket.socket, list[int]]:
    """Speaks the successor's side of the protocol up to (not including)
    ready: hello, then the sockets and state. Returns the connection and the
    received descriptors."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(15)
    s.connect(path)
    hello = json.dumps({"version": 1, "pid": os.getpid()}).encode()
    s.sendall(struct.pack(">IB", len(hello) + 1, 1) + hello)
    fds: list[int] = []
    buf = b""
    frames = []
    while not any(t == 3 for t, _ in frames):
        data, got, _, _ = socket.recv_fds(s, 1 << 16, 253)
        assert data, "old daemon closed the takeover connection"
        fds += got
        buf += data
        while len(buf) >= 5:
            length, typ = struct.unpack(">IB", buf[:5])
            if len(buf) < 4 + length:
                break
            frames.append((typ, buf[5:4 + length]))
            buf = buf[4 + length:]
    state = json.loads(dict(frames)[3])
    assert state["workers"] == 2
    assert len(fds) == 2 * len(state["listeners"])
    return s, fds


def test_abandoned_takeover_rolls_back_and_no_client_is_refused(run_stickyd, tmp_path, request):
    """A successor that takes the sockets and goes away before ready: the
    old daemon resumes accepting; a client that connected while accepting
    was paused waited in the queue and is served."""
    pods, old, sock, pinned = serving_two_pods(run_stickyd, request, 16)

    conn, fds = fake_successor(flag(old, "--takeover-socket"))
    for fd in fds:
        os.close(fd)
    old.wait_for_output("accepting paused for the hand-over", 10)
    # Paused: the handshake completes in the kernel's queue, the name line
    # (sent by the backend once the daemon accepted and connected) waits.
    queued = socket.create_connection(old.addr, timeout=10)
    queued.settimeout(0.3)
    with pytest.raises(socket.timeout):
        queued.recv(1)
    # Admin changes wait for the hand-over to end; so does an upgrade.
    assert "upgrade is handing over" in admin(sock, f"set target {pods[0].addr} weight 2")
    assert admin(sock, "upgrade") == "error: an upgrade is handing over; try again in a moment"
    conn.close()
    old.wait_for_output("upgrade rolled back; accepting again", 10)
    queued.settimeout(10)
    assert queued.recv(16).startswith(b"pod-")
    queued.close()
    for ip, name in pinned.items():
        assert connect_from(ip, old.addr)[1] == name
    assert admin(sock, f"set target {pods[0].addr} weight 2").startswith("ok")


def test_failed_successor_leaves_the_old_daemon_serving(run_stickyd, tmp_path, request):
    """The successor cannot bind a listener its config adds: it exits non-zero
    with a clear message, and the old daemon serves on, placements and admin
    socket intact, with no failed connection meanwhile."""
    blocker = socket.create_server((LOOPBACK, 0))
    request.addfinalizer(blocker.close)
    pods, old, sock, pinned = serving_two_pods(run_stickyd, request, CLIENTS)

    load = Load(old.addr).start()
    try:
        load.wait_count(100, "load before the failed upgrade")
        bad = successor(old, tmp_path, "stickyd-bad-successor",
                        extra=["--listen", fmt_addr(LOOPBACK, blocker.getsockname()[1])])
        request.addfinalizer(bad.stop)
        status = bad.wait(30)
        assert status not in (None, 0), f"successor exit status {status}"
        assert "cannot start" in bad.output()
        assert "Address already in use" in bad.output()
        old.wait_for_output("upgrade rolled back; accepting again", 10)
        mark = load.count
        load.wait_count(mark + 100, "load after the rollback")
    finally:
        load.finish()
    assert load.failures == [], load.failures[:5]
    assert load.violations() == {}
    for ip, name in list(pinned.items())[:16]:
        assert connect_from(ip, old.addr)[1] == name
    assert json.loads(admin(sock, "json show info"))["pid"] == str(old.pid)
    assert old.alive()


# ---------------------------------------------------------------------------
# stickyctl upgrade: the daemon spawns its successor
# ---------------------------------------------------------------------------

UPGRADE_TIMEOUT_S = 90


def gone(pid: int) -> bool:
    """No such process, or a zombie waiting for its (new) parent to reap it."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):
        return True


def stop_pid(pid: int) -> None:
    """Stops a successor the test did not start (the old daemon's child, since
    reparented): SIGTERM, then SIGKILL, each wait bounded."""
    for sig, seconds in ((signal.SIGTERM, 20), (signal.SIGKILL, 5)):
        if gone(pid):
            return
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        try:
            wait_until(lambda: gone(pid), seconds, what=f"pid {pid} gone after signal {sig}")
            return
        except TimeoutError:
            continue
    assert gone(pid), f"pid {pid} survived SIGKILL"


def ctl(*args: str, timeout: float = UPGRADE_TIMEOUT_S + 30) -> subprocess.CompletedProcess:
    return subprocess.run([str(stickyctl_bin()), *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def script(tmp_path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


def test_stickyctl_upgrade_under_load(run_stickyd, tmp_path, request):
    """`stickyctl upgrade`: the daemon starts its own successor, which takes
    over with no failed connection and no client moved; the admin socket then
    answers from the new pid and the old daemon exits 0."""
    pods = start_backends(3)
    request.addfinalizer(lambda: [p.stop() for p in pods])
    old = run_stickyd([p.addr for p in pods], args=["--workers", "2"])
    sock = flag(old, "--admin-socket")
    first = {client_ip(i): connect_from(client_ip(i), old.addr)[1] for i in range(CLIENTS)}

    load = Load(old.addr).start()
    try:
        load.wait_count(300, "load running before the upgrade")
        t_start = time.monotonic()
        result = ctl("upgrade", "--socket", sock, "--timeout", str(UPGRADE_TIMEOUT_S))
        t_took = time.monotonic()
        took = re.search(r"upgrade: pid (\d+) took over; this process \(pid (\d+)\) is finishing its connections",
                         result.stdout)
        if took:
            new_pid = int(took.group(1))
            request.addfinalizer(lambda: stop_pid(new_pid))
        old.expect_exit = True
        assert result.returncode == 0, f"{result.stdout}{result.stderr}\n{old.output_tail()}"
        assert took, result.stdout
        assert int(took.group(2)) == old.pid
        assert f"pid {new_pid} answers on {sock}" in result.stdout
        during = load.count
        load.wait_count(during + 300, "load running after the upgrade")
    finally:
        load.finish()

    status = old.wait(20)
    assert status == 0, f"old daemon exit status {status}\n{old.output_tail()}"
    assert not gone(new_pid)
    # The successor is the old daemon's child: its log lines went where the
    # old daemon's go (journald under systemd).
    paused = re.search(r"took over; accepting.*accept_paused_ms=(\d+)", old.output())
    assert paused, old.output_tail()
    print(f"\nstickyctl upgrade figures: connections={load.count} during_upgrade="
          f"{sum(1 for v in load.seen.values() for at, _ in v if t_start <= at <= t_took)} "
          f"after={load.after(t_took)} failed={len(load.failures)} violations={len(load.violations())} "
          f"accept_paused_ms={paused.group(1)}")
    assert load.failures == [], load.failures[:5]
    assert load.violations() == {}
    moved = {ip: names for ip, names in
             ((ip, {n for _, n in v}) for ip, v in load.seen.items()) if names != {first[ip]}}
    assert moved == {}
    info = json.loads(admin(sock, "json show info"))
    assert info["pid"] == str(new_pid)
    assert connect_from(client_ip(0), old.addr)[1] == first[client_ip(0)]


def assert_still_serving(old: Stickyd, sock: str, pinned: dict[str, str]) -> None:
    assert old.alive()
    assert json.loads(admin(sock, "json show info"))["pid"] == str(old.pid)
    for ip, name in list(pinned.items())[:8]:
        assert connect_from(ip, old.addr)[1] == name


def test_upgrade_to_a_missing_or_unusable_binary_is_refused(run_stickyd, tmp_path, request):
    pods, old, sock, pinned = serving_two_pods(run_stickyd, request, 16)
    not_executable = tmp_path / "stickyd-not-executable"
    not_executable.write_text("#!/bin/sh\nexit 0\n")

    assert admin(sock, "upgrade /nonexistent") == \
        "error: upgrade failed: cannot use /nonexistent: No such file or directory; still serving"
    assert admin(sock, f"upgrade {tmp_path}") == f"error: upgrade failed: {tmp_path} is not a regular file; still serving"
    assert admin(sock, f"upgrade {not_executable}") == \
        f"error: upgrade failed: {not_executable} is not executable by this daemon's user; still serving"
    assert "'stickyd' is not an absolute path" in admin(sock, "upgrade stickyd")
    assert json.loads(admin(sock, "json upgrade /nonexistent"))["error"].startswith("upgrade failed: cannot use /nonexistent")

    result = ctl("upgrade", "/nonexistent", "--socket", sock)
    assert result.returncode == 1, result
    assert "upgrade failed: cannot use /nonexistent" in result.stderr
    result = ctl("upgrade", "relative/stickyd", "--socket", sock)
    assert result.returncode == 2, result
    assert "must be an absolute path" in result.stderr
    assert_still_serving(old, sock, pinned)


def test_upgrade_to_a_successor_that_fails_reports_it_and_keeps_serving(run_stickyd, tmp_path, request):
    """Two failing successors under load: one that exits before it connects,
    and the real binary whose extra listener cannot be bound (it takes the
    sockets, then fails: the hand-over is rolled back). Each answer gives the
    exit status; the old daemon serves on with no failed connection."""
    blocker = socket.create_server((LOOPBACK, 0))
    request.addfinalizer(blocker.close)
    pods, old, sock, pinned = serving_two_pods(run_stickyd, request, CLIENTS)
    exits_at_once = script(tmp_path, "stickyd-exit1", "exit 1\n")
    cannot_bind = script(tmp_path, "stickyd-cannot-bind",
                         f'exec "{old.argv[0]}" "$@" --listen {fmt_addr(LOOPBACK, blocker.getsockname()[1])}\n')

    load = Load(old.addr).start()
    try:
        load.wait_count(100, "load before the failed upgrades")
        answer = admin(sock, f"upgrade {exits_at_once}", timeout=UPGRADE_TIMEOUT_S)
        assert re.fullmatch(r"error: upgrade failed: the successor \(pid \d+\) exited with status 1; still serving",
                            answer), answer
        result = ctl("upgrade", cannot_bind, "--socket", sock)
        assert result.returncode == 1, result
        assert re.search(r"upgrade failed: the successor \(pid \d+\) exited with status 1 "
                         r"\(hand-over rolled back: .*the successor failed: .*Address already in use", result.stderr), \
            result.stderr
        assert result.stderr.rstrip().endswith("still serving"), result.stderr
        mark = load.count
        load.wait_count(mark + 100, "load after the failed upgrades")
    finally:
        load.finish()
    assert load.failures == [], load.failures[:5]
    assert load.violations() == {}
    assert_still_serving(old, sock, pinned)
    # Both successors were reaped: the daemon has no child left.
    children = subprocess.run(["pgrep", "-P", str(old.pid)], capture_output=True, text=True)
    assert children.stdout.strip() == ""


def test_second_concurrent_upgrade_is_refused(run_stickyd, tmp_path, request):
    pods = start_backends(1)
    request.addfinalizer(lambda: [p.stop() for p in pods])
    old = run_stickyd([p.addr for p in pods])
    sock = flag(old, "--admin-socket")
    release = tmp_path / "release"
    # A successor that waits (bounded) for the test, then fails.
    waits = script(tmp_path, "stickyd-waits",
                   f'i=0\nwhile [ ! -e "{release}" ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done\nexit 2\n')
    request.addfinalizer(lambda: release.touch())

    first: list[str] = []
    t = threading.Thread(target=lambda: first.append(admin(sock, f"upgrade {waits}", timeout=UPGRADE_TIMEOUT_S)))
    t.start()
    try:
        old.wait_for_output(r"upgrade: started the successor", 10)
        assert admin(sock, "upgrade") == "error: an upgrade is already running"
        result = ctl("upgrade", "--socket", sock)
        assert result.returncode == 1, result
        assert "an upgrade is already running" in result.stderr
        # The admin socket serves other sessions while one waits.
        assert json.loads(admin(sock, "json show info"))["pid"] == str(old.pid)
    finally:
        release.touch()
        t.join(UPGRADE_TIMEOUT_S + 10)
    assert not t.is_alive()
    assert len(first) == 1
    assert re.fullmatch(r"error: upgrade failed: the successor \(pid \d+\) exited with status 2; still serving",
                        first[0]), first
    # Over: the next upgrade is judged on its own.
    assert admin(sock, "upgrade /nonexistent").startswith("error: upgrade failed: cannot use /nonexistent")


# ---------------------------------------------------------------------------
# The commit (docs/OPERATIONS.md, "Commit"): no lost message leaves both
# daemons stopped. STICKYD_TEST_TAKEOVER_DROP makes a process skip sending
# the named frame; both daemons get it, and only one of them sends each.
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("dropped", ["ready", "commit", "serving"])
def test_a_lost_takeover_message_leaves_one_daemon_serving(run_stickyd, tmp_path, request, monkeypatch, dropped):
    monkeypatch.setenv("STICKYD_TEST_TAKEOVER_DROP", dropped)
    pods, old, sock, pinned = serving_two_pods(run_stickyd, request, 16)
    new = successor(old, tmp_path, f"stickyd-drop-{dropped}")
    request.addfinalizer(new.stop)
    # The sockets and state are exported once every worker of the old
    # daemon has stopped accepting (its "paused" line comes just before).
    new.wait_for_output("received the running daemon's sockets and state", 20)
    # Arrives while nobody accepts: it waits in the queue, and is served by
    # whichever daemon serves once the commit is settled.
    queued = socket.create_connection(old.addr, timeout=40)
    request.addfinalizer(queued.close)
    new.wait_for_output(r"took over; accepting", 40)
    assert queued.recv(16).startswith(b"pod-")
    queued.close()
    old.expect_exit = True
    assert old.wait(40) == 0, old.output_tail()
    assert new.alive(), new.output_tail()
    assert f"not sending {dropped}" in old.output() + new.output()
    assert json.loads(admin(sock, "json show info"))["pid"] == str(new.pid)
    for ip, name in pinned.items():
        assert connect_from(ip, old.addr)[1] == name


def test_a_successor_that_ends_after_taking_over_is_reaped(run_stickyd, tmp_path, request):
    """The successor `upgrade` started is the old daemon's child: if it dies
    while the old one still finishes its connections, the old one reaps it
    (no zombie) and says so."""
    pods, old, sock, pinned = serving_two_pods(run_stickyd, request, 4)
    # A connection through the old daemon keeps it finishing after the hand-over.
    held, _ = connect_from(client_ip(CLIENTS + 2), old.addr)
    request.addfinalizer(held.close)
    result = ctl("upgrade", "--socket", sock, "--timeout", str(UPGRADE_TIMEOUT_S))
    took = re.search(r"upgrade: pid (\d+) took over", result.stdout)
    assert took, f"{result.stdout}{result.stderr}"
    new_pid = int(took.group(1))
    request.addfinalizer(lambda: stop_pid(new_pid))
    old.expect_exit = True
    os.kill(new_pid, signal.SIGKILL)
    wait_until(lambda: not os.path.exists(f"/proc/{new_pid}"), 10, what=f"successor pid {new_pid} reaped")
    assert old.alive()
    old.wait_for_output("the successor that took over has ended", 10)
    held.close()
    assert old.wait(20) == 0


def test_health_crosses_an_upgrade(run_stickyd, tmp_path, request):
    """A target passive detection took down stays down in the successor,
    with its reason and the time it has been down (revive_after counts on
    from there), instead of being put back in service for its first
    failures."""
    pods = start_backends(3)
    request.addfinalizer(lambda: [p.stop() for p in pods])
    old = run_stickyd([p.addr for p in pods], args=["--workers", "2", "--health-revive-after", "120s"])
    sock = flag(old, "--admin-socket")
    dead = pods[2]
    dead.stop()
    ips = iter(range(10_000))

    def down() -> bool:
        # Clients Maglev sends to the dead target fail over; each failed
        # connect counts toward `fall`.
        connect_from(client_ip(next(ips)), old.addr)[0].close()
        return targets(sock)[dead.addr]["health"] == "down"
    wait_until(down, 30, what="the stopped target down")
    before = targets(sock)[dead.addr]

    new = successor(old, tmp_path, "stickyd-health-successor")
    request.addfinalizer(new.stop)
    new.wait_for_output(r"took over; accepting", 30)
    old.expect_exit = True
    assert old.wait(20) == 0
    assert json.loads(admin(sock, "json show info"))["pid"] == str(new.pid)
    after = targets(sock)[dead.addr]
    assert after["health"] == "down", after
    assert after["health_reason"] == before["health_reason"]
    assert after["health_transitions"] == before["health_transitions"]
    assert re.search(r"health carried over.*down=1", new.output()), new.output_tail()
    # New clients go to the live targets only.
    for i in range(20):
        s, name = connect_from(client_ip(20_000 + i), old.addr)
        s.close()
        assert name in {"pod-1", "pod-2"}


def test_bounded_load_counts_the_old_daemons_connections(run_stickyd, tmp_path, request):
    """After an upgrade the old daemon still holds its connections: the
    successor's bounded load counts them until the old one exits, so new
    clients are not piled onto the target the old daemon still loads."""
    pods = start_backends(2)
    request.addfinalizer(lambda: [p.stop() for p in pods])
    old = run_stickyd([p.addr for p in pods], args=["--workers", "2"])
    held: list[socket.socket] = []
    request.addfinalizer(lambda: [s.close() for s in held])
    # Pins first, one connection at a time (no load), then connections held
    # open from the clients pinned to pod-1: a pin is kept whatever the load.
    pinned = {}
    for i in range(120):
        s, pinned[client_ip(i)] = connect_from(client_ip(i), old.addr)
        s.close()
    for ip in [ip for ip, name in pinned.items() if name == "pod-1"][:30]:
        s, name = connect_from(ip, old.addr)
        assert name == "pod-1"
        held.append(s)
    assert len(held) == 30, f"only {len(held)} of 120 clients pinned to pod-1"

    new = successor(old, tmp_path, "stickyd-loads-successor")
    request.addfinalizer(new.stop)
    new.wait_for_output(r"took over; accepting", 30)
    old.expect_exit = True
    new.wait_for_output(r"old daemon's open connections count toward bounded load.*connections=30", 10)
    assert old.alive()

    # 20 new clients, held: pod-1 is over its bound (30 of 30 + k, against
    # 1.25 x the mean) for nearly all of them.
    fresh = []
    for i in range(20):
        s, name = connect_from(client_ip(1000 + i), old.addr)
        held.append(s)
        fresh.append(name)
    assert fresh.count("pod-1") <= 3, fresh

    for s in held[:30]:
        s.close()
    assert old.wait(20) == 0
    new.wait_for_output(r"old daemon's connections are gone", 15)


def test_the_successor_keeps_no_descriptor_of_the_old_daemon(run_stickyd, tmp_path, request):
    """Once the old daemon has exited, the successor holds what a daemon
    started fresh holds: the chaos soak found one socket more after each
    upgrade, the successor's end of the hand-over connection."""
    # No client: the count below is the daemon's own.
    pods, old, sock, _ = serving_two_pods(run_stickyd, request, 0)

    def fds(pid: int) -> int:
        return len(os.listdir(f"/proc/{pid}/fd"))
    fresh = fds(old.proc.pid)
    result = ctl("upgrade", "--socket", sock, "--timeout", str(UPGRADE_TIMEOUT_S))
    took = re.search(r"upgrade: pid (\d+) took over", result.stdout)
    assert took, f"{result.stdout}{result.stderr}"
    new_pid = int(took.group(1))
    request.addfinalizer(lambda: stop_pid(new_pid))
    old.expect_exit = True
    assert old.wait(30) == 0
    wait_until(lambda: fds(new_pid) <= fresh, 15,
               what=f"the successor back to a fresh daemon's {fresh} descriptors (has {fds(new_pid)})")
