"""Helpers for the integration tests: managed processes, loopback backends, clients.

Everything here is bounded: every wait has a deadline, every socket a timeout,
and every thread or process that is started has a way to be stopped.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import select
import signal
import socket
import struct
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

LOOPBACK = "127.0.0.1"

# ---------------------------------------------------------------------------
# Addresses and waiting


_handed_out: set[int] = set()
_handed_lock = threading.Lock()


def free_port(host: str = LOOPBACK) -> int:
    """A port that nothing listens on right now (never the same one twice per run)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(100):
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        with _handed_lock:
            if port not in _handed_out:
                _handed_out.add(port)
                return port
    raise RuntimeError("no free port found")


def fmt_addr(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.02,
               what: str = "condition") -> float:
    """Poll predicate until it is true; return the seconds it took. Raise on timeout."""
    start = time.monotonic()
    deadline = start + timeout
    while True:
        if predicate():
            return time.monotonic() - start
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what}: not true after {timeout:.1f}s")
        time.sleep(interval)


def connect(addr: tuple[str, int], timeout: float = 5.0) -> socket.socket:
    s = socket.create_connection(addr, timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def recv_exactly(s: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise EOFError(f"EOF after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def recv_until_eof(s: socket.socket, limit: int = 1 << 31) -> bytes:
    buf = bytearray()
    while True:
        chunk = s.recv(1 << 16)
        if not chunk:
            return bytes(buf)
        buf += chunk
        if len(buf) > limit:
            raise AssertionError(f"more than {limit} bytes received")


def wait_closed(s: socket.socket, timeout: float) -> tuple[str, float]:
    """Wait until the peer closes s (EOF or reset). Return (how, seconds waited).

    Data that arrives first is discarded. Raise TimeoutError if still open after timeout.
    """
    start = time.monotonic()
    deadline = start + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"connection still open after {timeout:.1f}s")
        r, _, _ = select.select([s], [], [], left)
        if not r:
            continue
        try:
            data = s.recv(1 << 16)
        except ConnectionResetError:
            return "reset", time.monotonic() - start
        if not data:
            return "eof", time.monotonic() - start


def is_open_and_quiet(s: socket.socket) -> bool:
    """True if s has nothing to read and is not closed (checked without blocking)."""
    r, _, _ = select.select([s], [], [], 0)
    return not r


def random_bytes(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n) if n else b""


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------
# Managed subprocesses (the daemon, greeter pods)


class ManagedProcess:
    """A subprocess whose output goes to a file, stopped with TERM then KILL."""

    def __init__(self, argv: list[str], label: str, log_path: Path, env: dict | None = None,
                 cwd: str | None = None) -> None:
        self.argv = argv
        self.label = label
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            env=env, cwd=cwd, start_new_session=True,
        )
        self.started_at = time.monotonic()
        self.exited_on_its_own: int | None = None  # exit status if it died before stop()
        self.stop_status: int | None = None
        self.killed = False
        self.stop_seconds: float | None = None
        self.stopped = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def output_tail(self, lines: int = 150) -> str:
        text = self.output().splitlines()
        head = f"$ {' '.join(self.argv)}\n"
        if len(text) > lines:
            head += f"[... {len(text) - lines} earlier lines ...]\n"
        return head + "\n".join(text[-lines:])

    def wait_for_output(self, pattern: str, timeout: float) -> re.Match:
        """Poll the output for a regex; fail early if the process exits."""
        rx = re.compile(pattern, re.M)
        deadline = time.monotonic() + timeout
        while True:
            m = rx.search(self.output())
            if m:
                return m
            if not self.alive():
                raise RuntimeError(
                    f"{self.label} exited with status {self.proc.returncode} before "
                    f"printing /{pattern}/:\n{self.output_tail()}")
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"{self.label} did not print /{pattern}/ within {timeout:.0f}s:\n"
                    f"{self.output_tail()}")
            time.sleep(0.02)

    def send_signal(self, sig: int) -> None:
        if self.alive():
            self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int | None:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout: float = 10.0, sig: int = signal.SIGTERM) -> int:
        """Stop it (sig, then SIGKILL after timeout). Idempotent. Returns the exit status."""
        if self.stopped:
            return self.proc.returncode
        self.stopped = True
        if not self.alive():
            self.exited_on_its_own = self.proc.returncode
        else:
            t0 = time.monotonic()
            self.proc.send_signal(sig)
            status = self.wait(timeout)
            if status is None:
                self.killed = True
                self.proc.kill()
                self.proc.wait(10)
            self.stop_seconds = time.monotonic() - t0
            self.stop_status = self.proc.returncode
        self._log.close()
        return self.proc.returncode

    def cpu_seconds(self) -> float:
        """User plus system CPU time the process has used so far (from /proc)."""
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks


# ---------------------------------------------------------------------------
# Loopback TCP backends


@dataclass
class ConnRecord:
    peer: tuple
    opened: float
    closed: float | None = None
    error: str | None = None


@dataclass
class DuplexResult:
    recv_len: int
    recv_sha: str
    sent_len: int
    sent_sha: str
    error: str | None = None


Handler = Callable[["TcpServer", socket.socket, ConnRecord], None]


class TcpServer:
    """A threaded TCP server on loopback: one thread per connection, running handler.

    It counts connections (accepted, active, peak) and records when each closed,
    so that tests can see what reached the backend through the balancer.
    """

    def __init__(self, handler: Handler, host: str = LOOPBACK, backlog: int = 4096,
                 name: str = "backend", port: int = 0) -> None:
        self.handler = handler
        self.name = name
        self.host = host
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.create_server((host, port), family=family, backlog=backlog)
        self.port = self.sock.getsockname()[1]
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.accepted = 0
        self.active = 0
        self.peak = 0
        self.records: list[ConnRecord] = []
        self.results: dict[bytes, DuplexResult] = {}
        self._conns: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._stopping = False
        self._acceptor = threading.Thread(target=self._accept_loop, name=f"{name}-accept", daemon=True)
        self._acceptor.start()

    @property
    def addr(self) -> str:
        return fmt_addr(self.host, self.port)

    def _accept_loop(self) -> None:
        while True:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                return  # listener closed by stop()
            with self.lock:
                if self._stopping:
                    conn.close()
                    return
                rec = ConnRecord(peer=peer, opened=time.monotonic())
                self.records.append(rec)
                self.accepted += 1
                self.active += 1
                self.peak = max(self.peak, self.active)
                self._conns.add(conn)
                self.cond.notify_all()
            t = threading.Thread(target=self._serve, args=(conn, rec), daemon=True,
                                 name=f"{self.name}-conn")
            with self.lock:
                self._threads.append(t)
            t.start()

    def _serve(self, conn: socket.socket, rec: ConnRecord) -> None:
        conn.settimeout(60)
        try:
            self.handler(self, conn, rec)
        except (OSError, EOFError) as exc:
            rec.error = f"{type(exc).__name__}: {exc}"
        finally:
            conn.close()
            with self.lock:
                self._conns.discard(conn)
                rec.closed = time.monotonic()
                self.active -= 1
                self.cond.notify_all()

    def wait_for(self, predicate: Callable[["TcpServer"], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not predicate(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"{self.name}: {what} not reached in {timeout:.1f}s "
                        f"(accepted={self.accepted} active={self.active})")
                self.cond.wait(left)

    def add_result(self, key: bytes, result: DuplexResult) -> None:
        with self.cond:
            self.results[key] = result
            self.cond.notify_all()

    def result(self, key: bytes, timeout: float) -> DuplexResult:
        self.wait_for(lambda s: key in s.results, timeout, f"result for {key.hex()}")
        return self.results[key]

    def stop(self) -> None:
        with self.lock:
            self._stopping = True
            conns = list(self._conns)
            threads = list(self._threads)
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        except OSError:
            pass
        self.sock.close()
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._acceptor.join(5)
        deadline = time.monotonic() + 10
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))


# Handlers -----------------------------------------------------------------


def echo_handler(server: TcpServer, conn: socket.socket, rec: ConnRecord) -> None:
    """Echo everything; on EOF, shut the write side and finish."""
    while True:
        data = conn.recv(1 << 16)
        if not data:
            conn.shutdown(socket.SHUT_WR)
            return
        conn.sendall(data)


DUPLEX_HEADER = struct.Struct(">16sQQ")  # token, bytes to send back, seed


def duplex_handler(server: TcpServer, conn: socket.socket, rec: ConnRecord) -> None:
    """Read a header (token, n, seed); then at once send n random bytes and
    read the client's stream to EOF, hashing both. Record the hashes by token."""
    token, n, seed = DUPLEX_HEADER.unpack(recv_exactly(conn, DUPLEX_HEADER.size))
    payload = random_bytes(n, seed)
    sent = {"error": None}

    def sender() -> None:
        try:
            conn.sendall(payload)
            conn.shutdown(socket.SHUT_WR)
        except OSError as exc:
            sent["error"] = f"send: {exc}"

    t = threading.Thread(target=sender, daemon=True)
    t.start()
    h = hashlib.sha256()
    got = 0
    err = None
    try:
        while True:
            chunk = conn.recv(1 << 18)
            if not chunk:
                break
            h.update(chunk)
            got += len(chunk)
    except OSError as exc:
        err = f"recv after {got} bytes: {exc}"
    t.join(120)
    server.add_result(token, DuplexResult(
        recv_len=got, recv_sha=h.hexdigest(), sent_len=n, sent_sha=sha256(payload),
        error=err or sent["error"]))


def make_sink_then_reply_handler(trailer: bytes) -> Handler:
    """Read to EOF, then reply b"<len> <sha256>\\n" + trailer and close.

    The reply is sent only after the client's EOF, so it tests half-close."""

    def handler(server: TcpServer, conn: socket.socket, rec: ConnRecord) -> None:
        data = recv_until_eof(conn)
        conn.sendall(f"{len(data)} {sha256(data)}\n".encode() + trailer)
        conn.shutdown(socket.SHUT_WR)

    return handler


def make_speak_first_handler(greeting: bytes) -> Handler:
    """Send greeting and shut the write side at once; then read to EOF and record
    what came in under the key b"speak-first". Tests half-close the other way."""

    def handler(server: TcpServer, conn: socket.socket, rec: ConnRecord) -> None:
        conn.sendall(greeting)
        conn.shutdown(socket.SHUT_WR)
        data = recv_until_eof(conn)
        server.add_result(b"speak-first", DuplexResult(
            recv_len=len(data), recv_sha=sha256(data), sent_len=len(greeting), sent_sha=sha256(greeting)))

    return handler


# ---------------------------------------------------------------------------
# Clients


@dataclass
class DuplexOutcome:
    token: bytes
    seed: int
    sent_len: int
    sent_sha: str
    recv_len: int
    recv_sha: str
    seconds: float
    error: str | None = None


def duplex_exchange(addr: tuple[str, int], send_len: int, recv_len: int, seed: int,
                    timeout: float = 60.0) -> DuplexOutcome:
    """Against duplex_handler: send send_len random bytes while receiving recv_len."""
    token = os.urandom(16)
    payload = random_bytes(send_len, seed)
    t0 = time.monotonic()
    s = connect(addr, timeout=timeout)
    errors: list[str] = []

    def sender() -> None:
        try:
            s.sendall(DUPLEX_HEADER.pack(token, recv_len, seed + 1) + payload)
            s.shutdown(socket.SHUT_WR)
        except OSError as exc:
            errors.append(f"client send: {exc}")

    t = threading.Thread(target=sender, daemon=True)
    t.start()
    h = hashlib.sha256()
    got = 0
    try:
        while True:
            chunk = s.recv(1 << 18)
            if not chunk:
                break
            h.update(chunk)
            got += len(chunk)
    except OSError as exc:
        errors.append(f"client recv after {got} bytes: {exc}")
    finally:
        t.join(timeout)
        s.close()
    return DuplexOutcome(token=token, seed=seed, sent_len=send_len, sent_sha=sha256(payload),
                         recv_len=got, recv_sha=h.hexdigest(), seconds=time.monotonic() - t0,
                         error="; ".join(errors) or None)


def echo_roundtrip(s: socket.socket, message: bytes, timeout: float = 5.0) -> None:
    """Send message and expect exactly it back."""
    s.settimeout(timeout)
    s.sendall(message)
    got = recv_exactly(s, len(message))
    assert got == message, f"echo mismatch: sent {message[:40]!r}, got {got[:40]!r}"


def echo_many(socks: Iterable[socket.socket], messages: list[bytes], timeout: float) -> None:
    """Send messages[i] on socks[i], then read all echoes with one poller, bounded."""
    socks = list(socks)
    for s, m in zip(socks, messages):
        s.setblocking(True)
        s.settimeout(timeout)
        s.sendall(m)
    pending = {s.fileno(): (s, m, bytearray()) for s, m in zip(socks, messages)}
    poller = select.poll()
    for fd in pending:
        poller.register(fd, select.POLLIN)
    deadline = time.monotonic() + timeout
    while pending:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"{len(pending)} of {len(socks)} echoes missing after {timeout:.0f}s")
        for fd, ev in poller.poll(left * 1000):
            s, m, buf = pending[fd]
            try:
                chunk = s.recv(len(m) - len(buf))
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                raise AssertionError(f"connection closed after {len(buf)} of {len(m)} echo bytes")
            buf += chunk
            if len(buf) == len(m):
                assert bytes(buf) == m, f"echo mismatch on one connection: {bytes(buf)[:40]!r} != {m[:40]!r}"
                poller.unregister(fd)
                del pending[fd]


def echo_bulk_all_at_once(socks: list[socket.socket], payloads: list[bytes], timeout: float) -> None:
    """Write payloads[i] to socks[i] and read its echo back, all connections at
    once (non-blocking, one poller), so that every connection has data in
    flight at the same time. Checks every echo byte for byte."""
    state = {}
    for s, p in zip(socks, payloads):
        s.setblocking(False)
        state[s.fileno()] = [s, memoryview(p), 0, bytearray(), p]  # sock, out, sent, got, payload
    poller = select.poll()
    for fd in state:
        poller.register(fd, select.POLLIN | select.POLLOUT)
    pending = set(state)
    deadline = time.monotonic() + timeout
    while pending:
        left = deadline - time.monotonic()
        if left <= 0:
            short = sorted(len(state[fd][3]) for fd in pending)[:5]
            raise TimeoutError(f"{len(pending)} of {len(socks)} connections incomplete after "
                               f"{timeout:.0f}s (fewest bytes echoed: {short})")
        for fd, ev in poller.poll(min(left, 1.0) * 1000):
            s, out, sent, got, payload = st = state[fd]
            if ev & select.POLLOUT and sent < len(out):
                try:
                    st[2] = sent = sent + s.send(out[sent:sent + (1 << 16)])
                except BlockingIOError:
                    pass
                if sent == len(out):
                    poller.modify(fd, select.POLLIN)
            if ev & (select.POLLIN | select.POLLHUP | select.POLLERR):
                try:
                    chunk = s.recv(1 << 16)
                except BlockingIOError:
                    continue
                except ConnectionResetError:
                    chunk = b""
                if not chunk:
                    raise AssertionError(f"connection closed after echoing {len(got)} of {len(payload)} bytes")
                got += chunk
                if len(got) >= len(payload):
                    assert bytes(got) == payload, "echoed bytes differ"
                    poller.unregister(fd)
                    pending.discard(fd)
