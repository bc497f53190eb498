"""PROXY protocol v1/v2 through the real daemon, on loopback.

Accept side: a listener with --proxy-from takes the client's address from
the header (affinity follows it), forwards what came after the header, and
closes, one by one and counted, connections whose header is bad, slow, cut
short or from a peer outside the allow-list, while good ones keep working.
Send side: --send-proxy v1/v2 writes a header that a backend parses.
"""

from __future__ import annotations

import ipaddress
import socket
import struct

import pytest

from admin_support import admin, parse_fields
from support import (LOOPBACK, ConnRecord, TcpServer, echo_handler, echo_roundtrip, recv_exactly, wait_closed,
                     wait_until)

V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"
WAIT = 10.0  # seconds: the bound on every wait for the daemon to act


def v1(src: str, sport: int, dst: str | None = None, dport: int = 80) -> bytes:
    fam = "TCP6" if ":" in src else "TCP4"
    dst = dst or ("::1" if fam == "TCP6" else "127.0.0.1")
    return f"PROXY {fam} {src} {dst} {sport} {dport}\r\n".encode()


def v2(src: str, sport: int, dst: str = "127.0.0.1", dport: int = 80, tlvs: bytes = b"") -> bytes:
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if s.version == 4 and d.version == 4:
        body = s.packed + d.packed + struct.pack(">HH", sport, dport) + tlvs
        return V2_SIG + bytes([0x21, 0x11]) + struct.pack(">H", len(body)) + body
    s6 = s if s.version == 6 else ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + s.packed)
    d6 = d if d.version == 6 else ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + d.packed)
    body = s6.packed + d6.packed + struct.pack(">HH", sport, dport) + tlvs
    return V2_SIG + bytes([0x21, 0x21]) + struct.pack(">H", len(body)) + body


def read_proxy_header(conn: socket.socket) -> str:
    """Parse a PROXY v1 or v2 header off conn, as 'SRC SPORT DST DPORT' or 'LOCAL'."""
    first = recv_exactly(conn, 12)
    if first == V2_SIG:
        ver_cmd, fam, length = struct.unpack(">BBH", recv_exactly(conn, 4))
        body = recv_exactly(conn, length)
        assert ver_cmd >> 4 == 2, f"version byte {ver_cmd:#x}"
        if ver_cmd & 0xF == 0:
            return "LOCAL"
        if fam == 0x11:
            src, dst = ipaddress.IPv4Address(body[0:4]), ipaddress.IPv4Address(body[4:8])
            sport, dport = struct.unpack(">HH", body[8:12])
        else:
            assert fam == 0x21, f"family byte {fam:#x}"
            src, dst = ipaddress.IPv6Address(body[0:16]), ipaddress.IPv6Address(body[16:32])
            sport, dport = struct.unpack(">HH", body[32:36])
        return f"v2 {src} {sport} {dst} {dport}"
    assert first.startswith(b"PROXY "), f"not a PROXY header: {first!r}"
    line = bytearray(first)
    while not line.endswith(b"\r\n"):
        assert len(line) <= 107, f"v1 line too long: {bytes(line)!r}"
        line += recv_exactly(conn, 1)
    words = line[:-2].decode().split(" ")
    assert len(words) == 6 and words[1] in ("TCP4", "TCP6"), f"v1 line {bytes(line)!r}"
    return f"v1 {words[2]} {words[4]} {words[3]} {words[5]}"


def named_echo(name: str, expect_header: bool = False):
    """A backend that says '<name>' (and the PROXY header it got) on a line, then echoes."""
    def handler(server: TcpServer, conn: socket.socket, rec: ConnRecord) -> None:
        header = read_proxy_header(conn) if expect_header else "-"
        conn.sendall(f"{name} {header}\n".encode())
        echo_handler(server, conn, rec)
    return handler


def read_line(s: socket.socket, limit: int = 256) -> str:
    buf = bytearray()
    while not buf.endswith(b"\n"):
        assert len(buf) < limit, f"no line in {bytes(buf)!r}"
        buf += recv_exactly(s, 1)
    return buf[:-1].decode()


def exchange(addr, preamble: bytes, payload: bytes, source: str | None = None) -> str:
    """Connect (from `source` if given), send preamble+payload in one segment,
    return the backend's line after checking the payload echoes back intact."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(WAIT)
    try:
        if source:
            s.bind((source, 0))
        s.connect(addr)
        s.sendall(preamble + payload)
        line = read_line(s)
        assert recv_exactly(s, len(payload)) == payload
        return line
    finally:
        s.close()


def stats(tmp_path, n: int = 1) -> dict:
    return {k: int(v) for k, v in parse_fields(admin(str(tmp_path / f"admin-{n}.sock"), "show stats")).items()}


@pytest.mark.parametrize("encode", [v1, v2], ids=["v1", "v2"])
def test_header_source_is_the_affinity_key(run_stickyd, backend, tmp_path, encode):
    targets = [backend(named_echo(f"t{i}"), name=f"t{i}") for i in range(3)]
    d = run_stickyd([t.addr for t in targets], args=["--proxy-from", "127.0.0.0/8"])

    # One client address in the header, many real connections (each from a
    # new ephemeral port): always the same target.
    for source in ["203.0.113.7", "2001:db8::7"]:
        seen = {exchange(d.addr, encode(source, 1000 + k), f"hello {k}".encode()).split()[0] for k in range(6)}
        assert len(seen) == 1, f"{source} moved between targets: {seen}"

    # Many client addresses in headers from one real peer: they spread.
    placed = {exchange(d.addr, encode(f"198.51.100.{k}", 5000), b"x").split()[0] for k in range(1, 31)}
    assert len(placed) >= 2, f"30 header sources all on {placed}"

    st = stats(tmp_path)
    assert st["proxy_headers_received"] == 12 + 30, st
    # Placement used the header's address, so each header source is one entry.
    assert st["affinity_misses"] == 2 + 30, st


@pytest.mark.parametrize("engine", ["copy", "splice"])
def test_payload_in_the_header_segment_arrives_first_and_intact(run_stickyd, backend, tmp_path, engine):
    t = backend(named_echo("t0"), name="t0")
    d = run_stickyd([t.addr], engine=engine, args=["--proxy-from", "127.0.0.1/32"])
    payload = bytes(range(256)) * 8
    for header in [v1("192.0.2.1", 4000), v2("192.0.2.1", 4000, tlvs=b"\x04\x00\x02ok"),
                   b"PROXY UNKNOWN\r\n", V2_SIG + b"\x20\x00\x00\x00"]:
        assert exchange(d.addr, header, payload) == "t0 -"
    assert stats(tmp_path)["proxy_headers_received"] == 4


def test_bad_headers_close_only_their_connection_and_are_counted(run_stickyd, backend, tmp_path):
    t = backend(named_echo("t0"), name="t0")
    # Good clients come from 127.0.0.2; 127.0.0.1 is not allowed to send headers.
    d = run_stickyd([t.addr], args=["--proxy-from", "127.0.0.2/32", "--proxy-timeout", "500ms"])

    good = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    good.settimeout(WAIT)
    good.bind(("127.0.0.2", 0))
    good.connect(d.addr)
    try:
        good.sendall(v1("192.0.2.50", 7000) + b"first")
        assert read_line(good) == "t0 -"
        assert recv_exactly(good, 5) == b"first"

        def bad(data: bytes, source: str = "127.0.0.2", half_close: bool = False) -> None:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.settimeout(WAIT)
            try:
                s.bind((source, 0))
                s.connect(d.addr)
                if data:
                    s.sendall(data)
                if half_close:
                    s.shutdown(socket.SHUT_WR)
                how, _ = wait_closed(s, WAIT)
                assert how in ("eof", "reset")
            finally:
                s.close()

        cases = [
            ("bad_signature", dict(data=b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")),
            ("bad_port", dict(data=b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 80\r\n")),
            ("bad_address", dict(data=b"PROXY TCP4 1.2.3.999 5.6.7.8 1 80\r\n")),
            ("bad_format", dict(data=b"PROXY TCP4 1.2.3.4  5.6.7.8 1 80\r\n")),
            ("bad_family", dict(data=V2_SIG + b"\x21\x31\x00\x0c" + b"\0" * 12)),
            ("bad_version", dict(data=V2_SIG + b"\x11\x11\x00\x0c" + b"\0" * 12)),
            ("oversized", dict(data=V2_SIG + b"\x21\x11\xff\xff")),
            ("oversized", dict(data=b"PROXY UNKNOWN " + b"x" * 120)),
            ("truncated", dict(data=b"PROXY TCP4 1.2.3.4 ", half_close=True)),
            ("timeout", dict(data=b"PROXY ")),
            ("timeout", dict(data=b"")),
            ("not_allowed", dict(data=v1("192.0.2.9", 1), source="127.0.0.1")),
        ]
        for _, kwargs in cases:
            bad(**kwargs)
            # The good connection is untouched by each bad one.
            echo_roundtrip(good, b"still here")

        want: dict[str, int] = {}
        for reason, _ in cases:
            want[reason] = want.get(reason, 0) + 1
        st = stats(tmp_path)
        for reason, count in want.items():
            assert st[f"proxy_rejected_{reason}"] == count, (reason, st)
        # Refused before a slot was taken: not a closed connection.
        assert st["closed_proxy_header"] == len(cases) - want["not_allowed"], st
        assert st["proxy_headers_received"] == 1, st
        assert t.accepted == 1, "a bad header reached the target"
    finally:
        good.close()
    assert d.alive()


@pytest.mark.parametrize("engine", ["copy", "splice"])
@pytest.mark.parametrize("version", ["v1", "v2"])
def test_send_proxy_tells_the_target_the_client(run_stickyd, backend, tmp_path, engine, version):
    t = backend(named_echo("t0", expect_header=True), name="t0")
    d = run_stickyd([t.addr], engine=engine, args=["--send-proxy", version])
    host, port = d.addr

    # Without a header from the client: its socket address, and the listener.
    s = socket.create_connection(d.addr, timeout=WAIT)
    try:
        s.sendall(b"ping")
        line = read_line(s)
        assert line == f"t0 {version} 127.0.0.1 {s.getsockname()[1]} {host} {port}"
        assert recv_exactly(s, 4) == b"ping"
    finally:
        s.close()
    assert stats(tmp_path)["proxy_headers_sent"] == 1


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_received_header_is_passed_on(run_stickyd, backend, tmp_path, version):
    t = backend(named_echo("t0", expect_header=True), name="t0")
    d = run_stickyd([t.addr], args=["--proxy-from", "127.0.0.1/32", "--send-proxy", version])
    line = exchange(d.addr, v1("2001:db8::42", 4242, "2001:db8::80", 443), b"payload")
    # The client and destination the first proxy named, not the socket's.
    assert line == f"t0 {version} 2001:db8::42 4242 2001:db8::80 443"
    line = exchange(d.addr, v2("192.0.2.77", 7777, "192.0.2.80", 8080), b"payload")
    assert line == f"t0 {version} 192.0.2.77 7777 192.0.2.80 8080"
    st = stats(tmp_path)
    assert st["proxy_headers_received"] == 2, st
    assert st["proxy_headers_sent"] == 2, st
