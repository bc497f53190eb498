"""Bytes through stickyd: exact, both ways at once, with half-close, at scale."""

from __future__ import annotations

import random
import socket
import threading

import pytest

from support import (DuplexOutcome, TcpServer, connect, duplex_exchange, duplex_handler,
                     echo_bulk_all_at_once, echo_many, echo_roundtrip, fmt_addr, free_port, make_sink_then_reply_handler,
                     make_speak_first_handler, random_bytes, recv_until_eof, sha256, wait_closed)

MiB = 1 << 20


def check_duplex(server: TcpServer, out: DuplexOutcome) -> None:
    assert out.error is None, f"client: {out.error} (seed {out.seed})"
    got = server.result(out.token, timeout=60)
    assert got.error is None, f"backend: {got.error} (seed {out.seed})"
    # Client -> backend.
    assert got.recv_len == out.sent_len, (
        f"backend received {got.recv_len} of {out.sent_len} bytes (seed {out.seed})")
    assert got.recv_sha == out.sent_sha, f"client->backend bytes differ (seed {out.seed})"
    # Backend -> client.
    assert out.recv_len == got.sent_len, (
        f"client received {out.recv_len} of {got.sent_len} bytes (seed {out.seed})")
    assert out.recv_sha == got.sent_sha, f"backend->client bytes differ (seed {out.seed})"


@pytest.mark.parametrize("up,down", [
    (0, 0),
    (1, 0),
    (0, 1),
    (65537, 3),
    (3 * MiB + 5, 5 * MiB + 3),
    (64 * MiB, 64 * MiB),
], ids=lambda v: str(v))
def test_duplex_payload_byte_exact(run_stickyd, backend, engine, up, down):
    """Random payloads both ways at once arrive byte-exact (sha256), up to 64 MiB each way."""
    srv = backend(duplex_handler)
    d = run_stickyd([srv.addr], engine=engine)
    seed = random.randrange(1 << 30)
    check_duplex(srv, duplex_exchange(d.addr, up, down, seed, timeout=60))


def test_duplex_concurrent_connections(run_stickyd, backend, engine):
    """Eight connections at once, random sizes: no bytes cross between connections."""
    srv = backend(duplex_handler)
    d = run_stickyd([srv.addr], engine=engine)
    rng = random.Random()
    jobs = [(rng.randrange(4 * MiB), rng.randrange(4 * MiB), rng.randrange(1 << 30)) for _ in range(8)]
    outcomes: list[DuplexOutcome | BaseException] = [None] * len(jobs)  # type: ignore[list-item]

    def run(i: int) -> None:
        try:
            outcomes[i] = duplex_exchange(d.addr, *jobs[i], timeout=60)
        except BaseException as exc:  # reported below
            outcomes[i] = exc

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert not any(t.is_alive() for t in threads), "a client thread is stuck"
    for out in outcomes:
        if isinstance(out, BaseException):
            raise out
        check_duplex(srv, out)


def test_half_close_client_first(run_stickyd, backend, engine):
    """The client shuts its write side; the backend sees EOF, then replies; the
    client still receives the whole reply."""
    trailer = random_bytes(2 * MiB + 17, 7)
    srv = backend(make_sink_then_reply_handler(trailer))
    d = run_stickyd([srv.addr], engine=engine)
    request = random_bytes(MiB + 3, 8)
    s = connect(d.addr, timeout=20)
    try:
        s.sendall(request)
        s.shutdown(socket.SHUT_WR)
        reply = recv_until_eof(s)
    finally:
        s.close()
    head, _, rest = reply.partition(b"\n")
    assert head == f"{len(request)} {sha256(request)}".encode(), (
        f"backend saw a different request: {head[:100]!r}")
    assert len(rest) == len(trailer), f"reply after half-close: {len(rest)} of {len(trailer)} bytes"
    assert rest == trailer


def test_half_close_backend_first(run_stickyd, backend, engine):
    """The backend speaks and shuts its write side first; the client reads to EOF,
    then sends; the backend still receives everything the client sends."""
    greeting = random_bytes(300_001, 9)
    srv = backend(make_speak_first_handler(greeting))
    d = run_stickyd([srv.addr], engine=engine)
    body = random_bytes(2 * MiB + 1, 10)
    s = connect(d.addr, timeout=20)
    try:
        got = recv_until_eof(s)
        assert got == greeting, f"greeting: got {len(got)} of {len(greeting)} bytes"
        s.sendall(body)
        s.shutdown(socket.SHUT_WR)
        res = srv.result(b"speak-first", timeout=20)
        assert res.recv_len == len(body), f"backend received {res.recv_len} of {len(body)} bytes"
        assert res.recv_sha == sha256(body)
        # Both sides have now closed: the client sees the end too.
        how, _ = wait_closed(s, 5)
        assert how == "eof", f"expected a clean close, got {how}"
    finally:
        s.close()


def test_backend_reset_is_passed_on(run_stickyd, backend, engine):
    """A backend that resets the connection makes the client's connection end too."""

    def rst_handler(server, conn, rec):
        conn.recv(16)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        conn.close()  # SO_LINGER 0: RST

    srv = backend(rst_handler)
    d = run_stickyd([srv.addr], engine=engine)
    s = connect(d.addr)
    try:
        s.sendall(b"hello")
        how, took = wait_closed(s, 3)
        assert took < 3
    finally:
        s.close()


CONCURRENT = 1000


def test_many_concurrent_connections(run_stickyd, backend, engine):
    """1000 connections open at once through stickyd, each echoing its own message."""
    srv = backend()
    d = run_stickyd([srv.addr], engine=engine, args=["--max-connections", "4096"])
    socks: list[socket.socket] = []
    try:
        for i in range(CONCURRENT):
            socks.append(connect(d.addr, timeout=10))
        messages = [f"message {i} {'x' * (i % 97)}\n".encode() for i in range(CONCURRENT)]
        echo_many(socks, messages, timeout=60)
        # Every client connection has its own backend connection, all at once.
        srv.wait_for(lambda s: s.active >= CONCURRENT, 10, f"{CONCURRENT} backend connections open")
        assert srv.accepted == CONCURRENT, f"backend accepted {srv.accepted}, expected {CONCURRENT}"
        # A second round on the same connections still works.
        echo_many(socks, [m.upper() for m in messages], timeout=60)
    finally:
        for s in socks:
            s.close()
    # Closing the clients closes the backend side too.
    srv.wait_for(lambda s: s.active == 0, 20, "all backend connections closed")
    # And the daemon still serves.
    with connect(d.addr) as s:
        echo_roundtrip(s, b"still alive")


def test_many_connections_with_data_in_flight(run_stickyd, backend, engine):
    """512 connections each echoing 192 KiB at the same time: more than the
    default pipe pool and buffer ring hold at once. All bytes arrive, in order."""
    srv = backend()
    d = run_stickyd([srv.addr], engine=engine)
    n, size = 512, 192 * 1024
    socks: list[socket.socket] = []
    try:
        for i in range(n):
            socks.append(connect(d.addr, timeout=10))
        payloads = [random_bytes(size, 1000 + i) for i in range(n)]
        echo_bulk_all_at_once(socks, payloads, timeout=90)
    finally:
        for s in socks:
            s.close()
    srv.wait_for(lambda s: s.active == 0, 20, "all backend connections closed")


def test_ipv6_and_two_listeners(run_stickyd, backend):
    """IPv6 listener and target, plus a second (IPv4) listener on the same daemon."""
    srv = backend(host="::1")
    listen = [fmt_addr("::1", free_port("::1")), fmt_addr("127.0.0.1", free_port())]
    d = run_stickyd([srv.addr], listen=listen)
    for addr in d.listen:
        with connect(addr) as s:
            echo_roundtrip(s, f"via {addr}".encode())
    assert srv.accepted == 2
