"""Quick mode (--listen and --target, no file) keeps nothing on the host
unless a flag names it: two quick runs on one host both start and serve,
neither makes an admin socket, a takeover socket or a state file, and
--admin-socket / --state-dir still give them."""

from __future__ import annotations

import os
from pathlib import Path

from admin_support import admin, parse_fields
from conftest import Stickyd
from support import LOOPBACK, connect, echo_roundtrip, fmt_addr, free_port, wait_until

# What quick mode used before, and the service still uses by default.
GLOBAL_PATHS = [Path("/run/stickyd/admin.sock"), Path("/run/stickyd/admin.takeover.sock"),
                Path("/var/lib/stickyd/state.json")]


def snapshot() -> dict:
    """Each global path's inode and mtime, or None: a run that made or
    rewrote one changes this, whatever was there before the test."""
    out = {}
    for p in GLOBAL_PATHS:
        try:
            st = p.stat()
            out[str(p)] = (st.st_ino, st.st_mtime_ns)
        except FileNotFoundError:
            out[str(p)] = None
    return out


def bound_unix_sockets(pid: int) -> list[str]:
    """Paths of the Unix sockets process `pid` holds that are bound to a
    name (/proc/net/unix lists the path of every bound socket by inode)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue  # closed meanwhile
        if link.startswith("socket:["):
            inodes.add(link[len("socket:["):-1])
    paths = []
    with open("/proc/net/unix") as f:
        next(f)  # header
        for line in f:
            cells = line.split()
            if len(cells) >= 8 and cells[6] in inodes:
                paths.append(cells[7])
    return paths


def quick(stickyd_path, tmp_path, request, n: int, target: str, extra=()) -> Stickyd:
    port = free_port()
    argv = [str(stickyd_path), "--listen", fmt_addr(LOOPBACK, port), "--target", target, *extra]
    # Its own working directory: a relative default would show up there.
    cwd = tmp_path / f"cwd-{n}"
    cwd.mkdir()
    d = Stickyd(argv, f"stickyd(quick {n})", tmp_path / f"quick-{n}.log", cwd=str(cwd))
    d.listen = [(LOOPBACK, port)]
    request.addfinalizer(d.stop)
    return d


def test_two_quick_mode_runs_on_one_host_both_serve_and_keep_nothing(stickyd_path, backend, tmp_path, request):
    srv = backend()
    before = snapshot()
    runs = [quick(stickyd_path, tmp_path, request, n, srv.addr) for n in (1, 2)]
    for d in runs:
        d.wait_for_output(r'msg="ready"', timeout=20)
    for d in runs:
        assert d.alive(), d.output_tail()
        assert "takeover_socket=none" in d.output(), d.output_tail()
        assert "state file" not in d.output(), "quick mode read or wrote a state file:\n" + d.output_tail()
        assert bound_unix_sockets(d.pid) == [], "quick mode bound a Unix socket"
    # Both serve, at the same time.
    conns = [connect(d.addr) for d in runs]
    try:
        for i, s in enumerate(conns):
            echo_roundtrip(s, f"through quick run {i + 1}\n".encode())
    finally:
        for s in conns:
            s.close()
    wait_until(lambda: srv.accepted >= 2, 5, what="both connections reached the backend")
    assert snapshot() == before, "a quick run made or rewrote a global admin socket or state file"
    for n in (1, 2):
        assert os.listdir(tmp_path / f"cwd-{n}") == [], "a quick run left files in its working directory"


def test_quick_mode_with_named_admin_socket_and_state_dir(stickyd_path, backend, tmp_path, request):
    srv = backend()
    sock = tmp_path / "admin.sock"
    state = tmp_path / "state"
    d = quick(stickyd_path, tmp_path, request, 1, srv.addr,
              extra=["--admin-socket", str(sock), "--state-dir", str(state)])
    d.wait_for_output(r'msg="ready"', timeout=20)
    assert f"takeover_socket={tmp_path / 'admin.takeover.sock'}" in d.output(), d.output_tail()
    info = parse_fields(admin(sock, "show info"))
    assert info["state_file"] == str(state / "state.json")
    assert admin(sock, f"drain target {srv.addr}").startswith("ok: draining")
    wait_until(lambda: '"draining"' in (state / "state.json").read_text(), 5,
               what="the drain persisted to the named state directory")
    assert str(sock) in bound_unix_sockets(d.pid)
