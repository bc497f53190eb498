"""Helpers for the admin-socket tests: a small admin client, answer parsers,
backends that say who they are, and clients from chosen loopback addresses.

Every socket has a timeout and every wait a bound, as in support.py.
"""

from __future__ import annotations

import json
import select
import socket
import struct
import time

from support import ConnRecord, TcpServer, recv_exactly

ANSWER_END = b"\n\n"
TCP_CLOSE = 7
TCP_CLOSE_WAIT = 8


class AdminClient:
    """One session on the admin socket: many commands, one connection.

    The protocol is line based: a command ends with a newline, and every
    answer ends with an empty line, so an answer is everything up to the
    first "\\n\\n". Text answers have no empty lines inside; JSON answers are
    one line."""

    def __init__(self, path, timeout: float = 10.0) -> None:
        self.path = str(path)
        self.timeout = timeout
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(self.path)
        self.buf = bytearray()

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_answer(self, timeout: float | None = None) -> str:
        """The next answer, without its closing empty line. EOFError if the
        daemon closes the session first."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            end = self.buf.find(ANSWER_END)
            if end >= 0:
                answer = bytes(self.buf[:end])
                del self.buf[:end + len(ANSWER_END)]
                return answer.decode()
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no complete answer within the bound; have {bytes(self.buf)[:200]!r}")
            self.sock.settimeout(left)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(f"admin session closed; unread: {bytes(self.buf)[:200]!r}")
            self.buf += chunk

    def cmd(self, line: str) -> str:
        self.send_raw(line.encode() + b"\n")
        return self.read_answer()

    def json(self, line: str) -> dict:
        answer = self.cmd("json " + line)
        assert "\n" not in answer, f"JSON answer spans lines: {answer!r}"
        return json.loads(answer)

    def ok(self, line: str) -> str:
        """Run a command that must succeed; return its answer."""
        answer = self.cmd(line)
        assert answer.startswith("ok: "), f"{line!r} answered {answer!r}"
        return answer

    def error(self, line: str) -> str:
        """Run a command that must fail; return its one error line."""
        answer = self.cmd(line)
        assert answer.startswith("error: "), f"{line!r} should fail, answered {answer!r}"
        assert "\n" not in answer, f"error answer spans lines: {answer!r}"
        return answer

    def at_eof(self, timeout: float) -> bool:
        """True if the daemon closes the session within timeout (discarding data)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            r, _, _ = select.select([self.sock], [], [], left)
            if r:
                try:
                    if not self.sock.recv(65536):
                        return True
                except ConnectionResetError:
                    return True

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "AdminClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def admin(path, line: str, timeout: float = 10.0) -> str:
    """One command on a fresh session."""
    with AdminClient(path, timeout) as c:
        return c.cmd(line)


def parse_table(text: str) -> list[dict]:
    """A text table (header line, then rows) as dicts keyed by the header.
    No cell holds a blank, so splitting on blanks is exact."""
    lines = text.splitlines()
    header = lines[0].split()
    rows = []
    for line in lines[1:]:
        cells = line.split()
        assert len(cells) == len(header), f"row {line!r} does not match header {header}"
        rows.append(dict(zip(header, cells)))
    return rows


def parse_fields(text: str) -> dict:
    """`key: value` lines (show info, show stats) as a dict of strings."""
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition(": ")
        assert sep, f"not a 'key: value' line: {line!r}"
        out[key] = value
    return out


def targets_by_address(client: AdminClient, pool: str | None = None) -> dict:
    doc = client.json("show targets" + (f" {pool}" if pool else ""))
    return {t["address"]: t for t in doc["targets"]}


# ---------------------------------------------------------------------------
# Backends that identify themselves, and clients from chosen source addresses


def make_named_handler(name: str, hold_after_eof: float = 0.0):
    """Send b"<name>\\n", then echo. On EOF from the balancer, either finish
    (shut the write side) or, with hold_after_eof, keep the socket open up to
    that many seconds, until the balancer resets it; the reset is recorded as
    rec.error = "reset", so tests can see the balancer's RST arrive."""

    def handler(server: TcpServer, conn: socket.socket, rec: ConnRecord) -> None:
        conn.sendall(name.encode() + b"\n")
        while True:
            data = conn.recv(1 << 16)
            if not data:
                break
            conn.sendall(data)
        if hold_after_eof <= 0:
            conn.shutdown(socket.SHUT_WR)
            return
        deadline = time.monotonic() + hold_after_eof
        while time.monotonic() < deadline:
            if tcp_state(conn) == TCP_CLOSE:
                rec.error = "reset"
                return
            time.sleep(0.02)

    return handler


def tcp_state(s: socket.socket) -> int:
    """The kernel's TCP state of s (tcpi_state, the first byte of TCP_INFO):
    8 (CLOSE_WAIT) once the peer's FIN came, 7 (CLOSE) once a reset came."""
    info = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    return struct.unpack_from("B", info)[0]


def client_ip(n: int) -> str:
    """The n-th distinct loopback client address (127.0.1.0/24 upwards)."""
    assert 0 <= n < 250 * 250
    return f"127.0.{1 + n // 250}.{1 + n % 250}"


def connect_from(ip: str, addr: tuple[str, int], timeout: float = 5.0) -> tuple[socket.socket, str]:
    """Connect to addr from source ip; return the socket and the name the
    backend announced. The affinity key is the client IP, so each ip is one
    client."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((ip, 0))
        s.connect(addr)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        line = bytearray()
        while not line.endswith(b"\n"):
            chunk = s.recv(1)
            if not chunk:
                raise EOFError(f"client {ip}: closed before the backend's name (got {bytes(line)!r})")
            line += chunk
            if len(line) > 100:
                raise AssertionError(f"client {ip}: no name line: {bytes(line)!r}")
    except BaseException:
        s.close()
        raise
    return s, line.decode().strip()


def target_of(ip: str, addr: tuple[str, int]) -> str:
    """Which backend a new connection from ip reaches (the connection is closed)."""
    s, name = connect_from(ip, addr)
    s.close()
    return name


def echo_check(s: socket.socket, message: bytes, timeout: float = 5.0) -> None:
    s.settimeout(timeout)
    s.sendall(message)
    got = recv_exactly(s, len(message))
    assert got == message, f"echo mismatch: {got[:40]!r} != {message[:40]!r}"


def flag(d, name: str) -> str:
    """The value of a daemon's command-line flag (the fixture sets the admin
    socket and state directory)."""
    return d.argv[d.argv.index(name) + 1]


def sock_path(d) -> str:
    return flag(d, "--admin-socket")


class Clients:
    """Hands out fresh client IPs, so that no test reuses a pinned client by accident."""

    def __init__(self, start: int = 0) -> None:
        self.next = start

    def fresh(self) -> str:
        ip = client_ip(self.next)
        self.next += 1
        return ip


def landings(d, clients: Clients, n: int) -> list[str]:
    """Where n fresh clients land (each connection closed at once)."""
    return [target_of(clients.fresh(), d.addr) for _ in range(n)]
