"""The soak's clients: byte-exact echo streams (normal, slow, reset mid-stream),
bursts of held connections, and gRPC greeter calls.

Every socket has a deadline and every loop a bound (as in
Tests/integration/support.py): a stream that stops moving is given up as a
timeout, never waited on forever.
"""

from __future__ import annotations

import errno
import random
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

# A stream's payload: 1 B to 2 MiB, log-uniform, so that most are small and
# some are large enough to span many buffers and both engines' backpressure.
SIZE_MIN = 1
SIZE_MAX = 2 << 20
NAME_MAX = 64  # the echo target's name line
CONNECT_TIMEOUT = 5.0
# A stream that moves no byte for this long is a timeout: stickyd's connect
# timeout (2 s) and failover fit in it many times over.
STALL_TIMEOUT = 20.0
STREAM_DEADLINE = 60.0

# How a stream behaves, and how often.
MODES = (("normal", 80), ("slow_reader", 7), ("slow_writer", 7), ("reset", 6))


def pick_mode(rng: random.Random) -> str:
    r = rng.randrange(sum(w for _, w in MODES))
    for mode, w in MODES:
        if r < w:
            return mode
        r -= w
    return MODES[0][0]


def pick_size(rng: random.Random) -> int:
    return max(SIZE_MIN, min(SIZE_MAX, int(2 ** rng.uniform(0, 21))))


@dataclass
class StreamResult:
    ip: str
    seq: int  # this client's n-th stream: the client's own order
    mode: str
    size: int
    start: float  # wall clock, to meet the access log's ts
    end: float = 0.0
    port: int = 0
    target: str = ""  # the name the echo target announced
    sent: int = 0
    received: int = 0  # payload bytes echoed back and checked
    outcome: str = "ok"  # ok, reset_by_client (intended), or a failure cause
    corrupted: bool = False
    detail: str = ""


def _linger_reset(s: socket.socket) -> None:
    # SO_LINGER {on, 0}: close() sends RST instead of FIN.
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def run_stream(ip: str, seq: int, addr: tuple[str, int], rng: random.Random, stop: threading.Event) -> StreamResult:
    """One echo stream from source `ip`: send a random payload, check every
    byte that comes back, in order, against it."""
    mode = pick_mode(rng)
    size = pick_size(rng)
    if mode == "slow_writer":
        size = min(size, 64 << 10)
    elif mode == "slow_reader":
        size = min(size, 256 << 10)
    r = StreamResult(ip=ip, seq=seq, mode=mode, size=size, start=time.time())
    payload = rng.randbytes(size)
    reset_at = rng.randrange(size) if mode == "reset" else -1
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((ip, 0))
        r.port = s.getsockname()[1]
        s.settimeout(CONNECT_TIMEOUT)
        try:
            s.connect(addr)
        except ConnectionRefusedError:
            r.outcome = "refused"
            return r
        except (socket.timeout, TimeoutError):
            r.outcome = "connect_timeout"
            return r
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        _pump(s, r, payload, reset_at, stop)
        return r
    except ConnectionResetError as exc:
        r.outcome = "reset"
        r.detail = str(exc)
        return r
    except OSError as exc:
        r.outcome = f"os_error_{errno.errorcode.get(exc.errno, exc.errno)}"
        r.detail = str(exc)
        return r
    finally:
        r.end = time.time()
        s.close()


def _pump(s: socket.socket, r: StreamResult, payload: bytes, reset_at: int, stop: threading.Event) -> None:
    size = len(payload)
    view = memoryview(payload)
    name = bytearray()
    have_name = False
    shut = False
    deadline = time.monotonic() + STREAM_DEADLINE
    last_progress = time.monotonic()
    next_write = 0.0
    next_read = 0.0
    while True:
        now = time.monotonic()
        if now >= deadline or now - last_progress >= STALL_TIMEOUT:
            r.outcome = "timeout"
            r.detail = f"sent {r.sent}/{size}, got {r.received}, name={bytes(name)!r}"
            return
        if r.sent >= size and not shut:
            s.shutdown(socket.SHUT_WR)
            shut = True
        want_write = r.sent < size and now >= next_write
        want_read = now >= next_read
        wait = 0.5
        if not want_write and r.sent < size:
            wait = min(wait, next_write - now)
        if not want_read:
            wait = min(wait, next_read - now)
        # poll, not select: a burst can push this process's fds past 1024.
        p = select.poll()
        p.register(s, (select.POLLIN if want_read else 0) | (select.POLLOUT if want_write else 0))
        ev = p.poll(max(0.0, wait) * 1000)
        mask = ev[0][1] if ev else 0
        err = mask & (select.POLLERR | select.POLLHUP | select.POLLNVAL)
        rl = want_read and (mask & select.POLLIN or err)
        wl = want_write and (mask & select.POLLOUT or err) and not rl
        if wl:
            chunk = 65536
            if r.mode == "slow_writer":
                chunk = random.randint(1, 4096)
                next_write = time.monotonic() + random.uniform(0.005, 0.03)
            if reset_at >= 0:
                chunk = min(chunk, max(1, reset_at - r.sent))
            try:
                n = s.send(view[r.sent:r.sent + chunk])
            except BlockingIOError:
                n = 0
            if n:
                r.sent += n
                last_progress = time.monotonic()
            if reset_at >= 0 and r.sent >= reset_at:
                # Reset mid-stream on purpose: what came back so far must
                # still be right (checked as it arrived).
                _linger_reset(s)
                r.outcome = "reset_by_client"
                return
        if rl:
            limit = 4096 if r.mode == "slow_reader" else 1 << 18
            if r.mode == "slow_reader":
                next_read = time.monotonic() + random.uniform(0.005, 0.02)
            try:
                data = s.recv(limit)
            except BlockingIOError:
                continue
            if not data:
                if not have_name:
                    r.outcome = "closed_before_target"
                elif r.received < size:
                    r.outcome = "eof_early"
                    r.detail = f"got {r.received}/{size}"
                return
            last_progress = time.monotonic()
            if not have_name:
                name += data
                nl = name.find(b"\n")
                if nl < 0:
                    if len(name) > NAME_MAX:
                        r.corrupted = True
                        r.outcome = "corrupted"
                        r.detail = f"no name line: {bytes(name[:80])!r}"
                        return
                    continue
                data = bytes(name[nl + 1:])
                r.target = name[:nl].decode(errors="replace")
                have_name = True
            if data:
                end = r.received + len(data)
                if end > size or view[r.received:end] != data:
                    r.corrupted = True
                    r.outcome = "corrupted"
                    bad = next((k for k in range(min(len(data), size - r.received))
                                if data[k] != payload[r.received + k]), min(len(data), size - r.received))
                    r.detail = f"first bad byte at offset {r.received + bad} of {size}"
                    return
                r.received = end


@dataclass
class BurstResult:
    kind: str  # "limit" or "descriptors"
    start: float
    end: float = 0.0
    attempted: int = 0
    established: int = 0  # connect() returned
    served: int = 0  # got the target's name line: a slot and a target
    refused: int = 0
    closed: int = 0  # closed or reset by stickyd while held
    detail: dict = field(default_factory=dict)


def burst(kind: str, addr: tuple[str, int], count: int, hold: float, ip_base: int) -> BurstResult:
    """Open `count` connections at once from distinct 127.3.x.y addresses,
    hold them `hold` seconds (bounded), then close them all. Counts how many
    stickyd accepted and served, and how many it refused or closed."""
    b = BurstResult(kind=kind, start=time.time(), attempted=count)
    socks: list[socket.socket] = []
    try:
        for k in range(count):
            n = ip_base + k
            ip = f"127.3.{n // 250 % 250}.{1 + n % 250}"
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((ip, 0))
                s.connect_ex(addr)
            except OSError:
                s.close()
                b.refused += 1
                continue
            socks.append(s)
        names: dict[int, bytearray] = {id(s): bytearray() for s in socks}
        by_fd = {s.fileno(): s for s in socks}
        live = set(socks)
        p = select.poll()
        for s in socks:
            p.register(s, select.POLLIN)
        deadline = time.monotonic() + hold
        while live and time.monotonic() < deadline:
            for fd, _ in p.poll(200):
                s = by_fd[fd]
                if s not in live:
                    continue
                try:
                    data = s.recv(256)
                except ConnectionRefusedError:
                    b.refused += 1
                    live.discard(s)
                    p.unregister(s)
                    continue
                except OSError:
                    b.closed += 1
                    live.discard(s)
                    p.unregister(s)
                    continue
                if not data:
                    b.closed += 1
                    live.discard(s)
                    p.unregister(s)
                    continue
                names[id(s)] += data
        for s in socks:
            if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                b.established += 1
            if names[id(s)].endswith(b"\n") or b"\n" in names[id(s)]:
                b.served += 1
    finally:
        for s in socks:
            try:
                _linger_reset(s)
            except OSError:
                pass
            s.close()
        b.end = time.time()
    return b


@dataclass
class GreeterTally:
    ok: int = 0
    wrong: int = 0  # an answer that is not the greeting asked for: corruption
    failed: dict = field(default_factory=dict)


def greeter_loop(addr: str, tally: GreeterTally, lock: threading.Lock, stop: threading.Event,
                 calls_per_channel: int = 50) -> None:
    """gRPC SayHello through stickyd's h2c pool until stopped: a new channel
    (a new connection) every `calls_per_channel` calls. Every reply must
    greet the name sent."""
    import grpc

    import helloworld_pb2
    import helloworld_pb2_grpc

    n = 0
    while not stop.is_set():
        with grpc.insecure_channel(addr) as ch:
            stub = helloworld_pb2_grpc.GreeterStub(ch)
            for _ in range(calls_per_channel):
                if stop.is_set():
                    return
                n += 1
                name = f"soak-{n}"
                try:
                    reply = stub.SayHello(helloworld_pb2.HelloRequest(name=name), timeout=5)
                except grpc.RpcError as exc:
                    with lock:
                        code = exc.code().name.lower() if exc.code() else "unknown"
                        tally.failed[code] = tally.failed.get(code, 0) + 1
                    stop.wait(0.05)  # a failing pool is not hammered
                    break
                with lock:
                    if reply.message.startswith(f"Hello, {name}! (from pod-"):
                        tally.ok += 1
                    else:
                        tally.wrong += 1
