"""Failures and limits: refused and silent backends, idle timeout, connection limit."""

from __future__ import annotations

import select
import socket
import time

import pytest

from support import (LOOPBACK, connect, echo_roundtrip, fmt_addr, free_port, wait_closed, wait_until)


def test_refused_backend_closes_client_promptly(run_stickyd, engine):
    """Nothing listens at the only target: each client connection is closed within 2 s."""
    dead = fmt_addr(LOOPBACK, free_port())
    d = run_stickyd([dead], engine=engine)
    for i in range(3):
        s = connect(d.addr)
        try:
            if i == 1:
                s.sendall(b"data sent before the connect fails\n")
            how, took = wait_closed(s, timeout=5)
            assert took < 2.0, f"connection {i} closed after {took:.2f}s ({how}); want < 2 s"
        finally:
            s.close()
    assert d.alive()


def test_silent_backend_hits_connect_timeout(run_stickyd):
    """A target whose accept queue is full drops our SYNs: --connect-timeout 500ms
    closes the client's connection instead of leaving it hanging."""
    # A listener with backlog 0 that never accepts: fill its queue, then SYNs are dropped.
    blackhole = socket.socket()
    fillers = []
    try:
        blackhole.bind((LOOPBACK, 0))
        blackhole.listen(0)
        port = blackhole.getsockname()[1]
        for _ in range(4):
            f = socket.socket()
            f.setblocking(False)
            f.connect_ex((LOOPBACK, port))
            fillers.append(f)
        # Precondition: the fillers have taken the queue and the target
        # really is silent (a probe's SYN goes unanswered), polled with a bound.
        def silent() -> bool:
            with socket.socket() as probe:
                probe.settimeout(0.3)
                try:
                    probe.connect((LOOPBACK, port))
                except OSError:
                    return True
                return False
        wait_until(silent, timeout=5, what="blackhole target silent")

        d = run_stickyd([fmt_addr(LOOPBACK, port)], args=["--connect-timeout", "500ms"])
        s = connect(d.addr)
        try:
            how, took = wait_closed(s, timeout=6)
            assert took < 3.0, f"closed after {took:.2f}s ({how}); connect timeout was 500ms"
        finally:
            s.close()
    finally:
        for f in fillers:
            f.close()
        blackhole.close()


def test_idle_timeout(run_stickyd, backend, engine):
    """--idle-timeout 1s closes an idle connection (both sides) within a bound,
    and leaves alone a connection that keeps talking."""
    srv = backend()
    d = run_stickyd([srv.addr], engine=engine, args=["--idle-timeout", "1s"])
    idle = connect(d.addr)
    active = connect(d.addr)
    try:
        echo_roundtrip(idle, b"once")
        echo_roundtrip(active, b"first")
        last_idle_activity = time.monotonic()
        idle_closed_after = None
        # Talk on the active connection every 200 ms for 3.2 s (over three timeouts).
        end = time.monotonic() + 3.2
        n = 0
        while time.monotonic() < end:
            echo_roundtrip(active, f"ping {n}".encode(), timeout=2)
            n += 1
            if idle_closed_after is None:
                r, _, _ = select.select([idle], [], [], 0)
                if r:
                    how, _ = wait_closed(idle, 1)
                    idle_closed_after = time.monotonic() - last_idle_activity
            time.sleep(0.2)
        if idle_closed_after is None:
            how, _ = wait_closed(idle, 1.0)
            idle_closed_after = time.monotonic() - last_idle_activity
        assert idle_closed_after >= 0.7, f"idle connection closed too early ({idle_closed_after:.2f}s)"
        assert idle_closed_after <= 3.0, f"idle connection closed only after {idle_closed_after:.2f}s"
        # The active one is still open and working.
        echo_roundtrip(active, b"still here")
        # Backend side: the idle connection's upstream half was closed too.
        srv.wait_for(lambda s: sum(r.closed is not None for r in s.records) >= 1, 3,
                     "backend side of the idle connection closed")
        assert srv.active == 1
    finally:
        idle.close()
        active.close()


def test_connection_limit_waits_then_serves(run_stickyd, backend, engine):
    """--max-connections 8 --workers 1: the 9th connection is not served while 8
    are open (and the daemon does not spin); it is served once one closes."""
    srv = backend()
    d = run_stickyd([srv.addr], engine=engine, args=["--max-connections", "8", "--workers", "1"])
    conns = []
    ninth = None
    try:
        for i in range(8):
            s = connect(d.addr)
            echo_roundtrip(s, f"conn {i}".encode())
            conns.append(s)
        srv.wait_for(lambda s: s.active == 8, 5, "8 backend connections")

        ninth = connect(d.addr)  # the kernel completes it; stickyd must not serve it yet
        ninth.sendall(b"ninth")
        cpu0 = d.cpu_seconds()
        r, _, _ = select.select([ninth], [], [], 1.5)
        cpu = d.cpu_seconds() - cpu0
        assert not r, "the 9th connection was answered (or closed) while 8 were open"
        assert srv.accepted == 8, f"backend saw {srv.accepted} connections with a limit of 8"
        assert cpu < 0.5, f"stickyd used {cpu:.2f}s CPU in 1.5s while at its limit: spinning?"

        conns.pop(0).close()
        ninth.settimeout(5)
        t0 = time.monotonic()
        got = b""
        while len(got) < 5:
            chunk = ninth.recv(5 - len(got))
            assert chunk, "the 9th connection was closed instead of served"
            got += chunk
        assert got == b"ninth"
        assert time.monotonic() - t0 < 5
        for i, s in enumerate(conns):
            echo_roundtrip(s, f"again {i}".encode())
        assert srv.accepted == 9
    finally:
        for s in conns:
            s.close()
        if ninth is not None:
            ninth.close()


def test_connect_failure_tries_next_target(run_stickyd, backend, engine):
    """One of two targets refuses: every client is still served (by the live one)."""
    srv = backend()
    dead = fmt_addr(LOOPBACK, free_port())
    d = run_stickyd([dead, srv.addr], engine=engine)
    for i in range(10):
        with connect(d.addr) as s:
            echo_roundtrip(s, f"client {i}".encode(), timeout=5)
    assert srv.accepted == 10
