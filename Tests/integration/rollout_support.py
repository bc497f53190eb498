"""Helpers for the rollout test (test_rollout.py): per-client source-IP relays,
a continuous gRPC load of long-lived greeter clients, a direct admin-socket
client, and the analysis of the recorded calls (moves, phases, spread).

Everything is bounded: every wait has a deadline, every thread a way to stop.
"""

from __future__ import annotations

import errno
import json
import os
import random
import re
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from support import LOOPBACK

REPO = Path(__file__).resolve().parents[2]
REPLY = re.compile(r"^Hello, (?P<name>.+)! \(from (?P<pod>pod-\d+)\)$")


def stickyctl_bin() -> Path:
    path = Path(os.environ.get("STICKYCTL_BIN", REPO / ".build" / "debug" / "stickyctl"))
    return path if path.is_absolute() else REPO / path


def start_replace(old: str, new: str, new_name: str, sock: str, timeout_s: int, log_path: Path):
    """`stickyctl replace OLD NEW` (strict drain) in the background, its
    output to `log_path`; returns the Popen. The caller waits, bounded."""
    import subprocess
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            [str(stickyctl_bin()), "replace", old, new, "--name", new_name, "--mode", "strict",
             "--timeout", f"{timeout_s}s", "--socket", sock],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


# ---------------------------------------------------------------------------
# Source-IP relays
#
# stickyd pins a client by its source IP. Every gRPC client of this test runs
# on 127.0.0.1, so without help all of them would be ONE client to the daemon
# (one pin, one pod), and the test could say nothing about spread or moves.
# gRPC Python cannot bind a channel's source address, so each client talks to
# its own relay on 127.0.0.1:<port>, and the relay opens the upstream
# connection to stickyd from 127.0.1.<i> (all of 127.0.0.0/8 is loopback on
# Linux). The relay is a transparent byte pipe: one upstream connection per
# accepted connection, bytes copied unchanged, a FIN passed on as a FIN
# (half-close, both ways), and a reset passed on as a reset.


class _Pipe:
    """One relayed connection: two pump threads, one per direction."""

    def __init__(self, relay: "Relay", down: socket.socket, up: socket.socket) -> None:
        self.relay = relay
        self.down = down  # the gRPC client's side
        self.up = up      # stickyd's side
        self.lock = threading.Lock()
        self.done = 0
        self.aborted = False
        self.threads = [
            threading.Thread(target=self._pump, args=(down, up, "client->stickyd"), daemon=True,
                             name=f"{relay.name}-up"),
            threading.Thread(target=self._pump, args=(up, down, "stickyd->client"), daemon=True,
                             name=f"{relay.name}-down"),
        ]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def _pump(self, src: socket.socket, dst: socket.socket, direction: str) -> None:
        op = "recv"
        try:
            while True:
                op = "recv"
                data = src.recv(1 << 16)
                if not data:
                    # EOF: pass the half-close on and keep the other direction going.
                    op = "shutdown(SHUT_WR)"
                    dst.shutdown(socket.SHUT_WR)
                    break
                op = "send"
                dst.sendall(data)
        except OSError as exc:
            # A peer reset its connection (ECONNRESET, EPIPE, or ENOTCONN from
            # shutdown once the reset has arrived): pass the reset on.
            with self.lock:
                self.aborted = True
            self.relay.note_reset(f"{direction} {op}: {errno.errorcode.get(exc.errno, exc.errno)}")
            # Wake the other pump; the reset is passed on when both are done.
            for s in (self.down, self.up):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        with self.lock:
            self.done += 1
            last = self.done == 2
        if last:
            self._close()

    def _close(self) -> None:
        for s in (self.down, self.up):
            if self.aborted:
                try:  # close with RST, as the side that failed did
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                except OSError:
                    pass
            s.close()
        self.relay.forget(self)

    def shutdown(self) -> None:
        for s in (self.down, self.up):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def join(self, deadline: float) -> None:
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))


class Relay:
    """Listens on 127.0.0.1:<port>; relays each connection to `upstream` from `source_ip`."""

    def __init__(self, upstream: tuple[str, int], source_ip: str, name: str) -> None:
        self.upstream = upstream
        self.source_ip = source_ip
        self.name = name
        self.sock = socket.create_server((LOOPBACK, 0), backlog=64)
        self.port = self.sock.getsockname()[1]
        self.lock = threading.Lock()
        self.pipes: set[_Pipe] = set()
        self.accepted = 0
        self.connect_failures = 0
        self.errors: list[str] = []
        self.resets: dict[str, int] = {}  # resets passed on, by where they were seen
        self._stopping = False
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True, name=f"{name}-accept")
        self._acceptor.start()

    @property
    def target(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def note_error(self, text: str) -> None:
        with self.lock:
            if len(self.errors) < 20:
                self.errors.append(text)

    def note_reset(self, kind: str) -> None:
        with self.lock:
            self.resets[kind] = self.resets.get(kind, 0) + 1

    def forget(self, pipe: _Pipe) -> None:
        with self.lock:
            self.pipes.discard(pipe)

    def _accept_loop(self) -> None:
        while True:
            try:
                down, _ = self.sock.accept()
            except OSError:
                return  # listener closed by stop()
            try:
                up = socket.create_connection(self.upstream, timeout=5.0, source_address=(self.source_ip, 0))
            except OSError as exc:
                # Refuse the client the same way: it sees a failed connect.
                with self.lock:
                    self.connect_failures += 1
                self.note_error(f"upstream connect: {exc}")
                down.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                down.close()
                continue
            for s in (down, up):
                s.settimeout(None)  # long-lived and mostly idle; stop() wakes them
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pipe = _Pipe(self, down, up)
            with self.lock:
                if self._stopping:
                    down.close()
                    up.close()
                    return
                self.accepted += 1
                self.pipes.add(pipe)
            pipe.start()

    def stop(self, timeout: float = 5.0) -> None:
        with self.lock:
            self._stopping = True
            pipes = list(self.pipes)
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        except OSError:
            pass
        self.sock.close()
        for p in pipes:
            p.shutdown()
        deadline = time.monotonic() + timeout
        self._acceptor.join(max(0.0, deadline - time.monotonic()))
        for p in pipes:
            p.join(deadline)


def steering_worker(ip: str, workers: int) -> int:
    """The worker stickyd's reuseport BPF program steers an IPv4 client to
    (Sources/CURingShim/shim.c, /32 prefix); for the diagnostic tables only."""
    a = struct.unpack(">I", socket.inet_aton(ip))[0]
    a = (a * 0x9E3779B1) & 0xFFFFFFFF
    return (a >> 16) % workers


# ---------------------------------------------------------------------------
# The admin socket, spoken directly (cheap enough to poll every few ms)


class AdminClient:
    """One connection to the admin socket; one command a line, answers end with a blank line."""

    def __init__(self, path: str, timeout: float = 5.0) -> None:
        self.path = path
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self.buf = b""

    def _connect(self) -> socket.socket:
        if self.sock is None:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(self.timeout)
            s.connect(self.path)
            self.sock = s
            self.buf = b""
        return self.sock

    def command(self, line: str) -> str:
        s = self._connect()
        try:
            s.sendall(line.encode() + b"\n")
            deadline = time.monotonic() + self.timeout
            while b"\n\n" not in self.buf:
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"admin: no answer to {line!r} within {self.timeout:.0f}s")
                chunk = s.recv(1 << 16)
                if not chunk:
                    raise EOFError(f"admin socket closed while answering {line!r}")
                self.buf += chunk
        except (OSError, EOFError):
            self.close()
            raise
        answer, _, self.buf = self.buf.partition(b"\n\n")
        return answer.decode()

    def json(self, line: str) -> dict:
        return json.loads(self.command("json " + line))

    def targets(self) -> list[dict]:
        return self.json("show targets")["targets"]

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


# ---------------------------------------------------------------------------
# The gRPC load


@dataclass
class Call:
    client: int
    start: float
    end: float
    pod: str | None       # from the reply; None when the call failed
    code: str | None = None  # status code name of a failed call
    detail: str | None = None
    # Set when a first attempt failed with CANCELLED and was retried (see
    # GreeterLoad): that attempt's (start, end). The rest is the retry's.
    cancelled: tuple[float, float] | None = None


class ClientThreads:
    """One daemon thread per client running `self._run(i)` until stop():
    the start and the bounded stop that every load generator here shares."""

    def __init__(self, n: int, name: str) -> None:
        self.stop_event = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True, name=f"{name}-{i}")
                        for i in range(n)]

    def _run(self, i: int) -> None:
        raise NotImplementedError

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def stop(self, timeout: float) -> list[str]:
        """Stop the clients; returns the names of threads still running after `timeout`."""
        self.stop_event.set()
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))
        return [t.name for t in self.threads if t.is_alive()]


class GreeterLoad(ClientThreads):
    """`n` greeter clients, each a thread with one long-lived channel through
    its own relay, calling SayHello every 20-50 ms with a per-call deadline."""

    def __init__(self, relays: list[Relay], *, deadline_s: float = 5.0, wait_for_ready: bool = False,
                 retries: bool = True, retry_cancelled: bool = True, interval_s: tuple[float, float] = (0.02, 0.05),
                 seed: int = 7) -> None:
        self.relays = relays
        self.deadline_s = deadline_s
        self.wait_for_ready = wait_for_ready
        self.retries = retries
        self.retry_cancelled = retry_cancelled
        self.interval_s = interval_s
        self.seed = seed
        self.lock = threading.Lock()
        self.calls: list[Call] = []
        self.crashes: list[str] = []
        super().__init__(len(relays), "greeter-client")

    def _run(self, i: int) -> None:
        import grpc
        import helloworld_pb2
        import helloworld_pb2_grpc

        rng = random.Random(self.seed * 1000 + i)
        options = [
            # Each client has its own target (its relay), so no subchannel is
            # shared anyway; a local pool makes that explicit.
            ("grpc.use_local_subchannel_pool", 1),
            ("grpc.enable_retries", 1 if self.retries else 0),
        ]
        try:
            with grpc.insecure_channel(self.relays[i].target, options=options) as channel:
                stub = helloworld_pb2_grpc.GreeterStub(channel)
                n = 0
                def attempt(name: str, t0: float) -> Call:
                    try:
                        reply = stub.SayHello(helloworld_pb2.HelloRequest(name=name),
                                              timeout=self.deadline_s, wait_for_ready=self.wait_for_ready)
                    except grpc.RpcError as exc:
                        return Call(i, t0, time.monotonic(), None, exc.code().name, (exc.details() or "")[:200])
                    m = REPLY.match(reply.message)
                    if m and m["name"] == name:
                        return Call(i, t0, time.monotonic(), m["pod"])
                    return Call(i, t0, time.monotonic(), None, "BAD_REPLY", reply.message[:80])

                while not self.stop_event.is_set():
                    n += 1
                    t0 = time.monotonic()
                    call = attempt(f"client-{i}-{n}", t0)
                    if call.code == "CANCELLED" and self.retry_cancelled:
                        # See test_rollout.py: the pod's gRPC server cancels
                        # RPCs that race its shutdown; SayHello is idempotent,
                        # so the client retries once. Recorded, and checked.
                        first = (call.start, call.end)
                        call = attempt(f"client-{i}-{n}", time.monotonic())
                        call.cancelled = first
                    with self.lock:
                        self.calls.append(call)
                    self.stop_event.wait(rng.uniform(*self.interval_s))
        except Exception as exc:  # a bug in the test itself: make it visible
            with self.lock:
                self.crashes.append(f"client {i}: {type(exc).__name__}: {exc}")

    def snapshot(self) -> list[Call]:
        with self.lock:
            return list(self.calls)

    def successes_since(self, t: float) -> dict[int, int]:
        counts = {i: 0 for i in range(len(self.relays))}
        for c in self.snapshot():
            if c.pod is not None and c.start >= t:
                counts[c.client] += 1
        return counts

    def wait_each_succeeded(self, since: float, at_least: int, timeout: float, what: str) -> None:
        """Wait (bounded) until every client has `at_least` successful calls started after `since`."""
        deadline = time.monotonic() + timeout
        while True:
            counts = self.successes_since(since)
            if min(counts.values()) >= at_least:
                return
            if self.crashes:
                raise AssertionError(f"a load client crashed: {self.crashes}")
            if time.monotonic() >= deadline:
                slow = {i: n for i, n in counts.items() if n < at_least}
                raise TimeoutError(f"{what}: clients with fewer than {at_least} successful calls "
                                   f"after {timeout:.0f}s: {slow}")
            time.sleep(0.05)



# ---------------------------------------------------------------------------
# Analysis


@dataclass
class Phase:
    name: str
    start: float
    end: float = float("inf")


@dataclass
class Move:
    client: int
    at: float          # start of the first call answered by the new pod
    prev_end: float    # end of the last call answered by the old pod
    old: str
    new: str
    needed: bool       # the old pod was draining or stopped at `at`
    into_retiring: bool  # the new pod was itself draining or stopped at `at`


@dataclass
class Timeline:
    """When each pod began to drain (first seen draining), was stopped (SIGTERM)
    and was removed; the phases of the test."""

    drained: dict[str, float] = field(default_factory=dict)
    stopped: dict[str, float] = field(default_factory=dict)
    removed: dict[str, float] = field(default_factory=dict)
    phases: list[Phase] = field(default_factory=list)

    def retiring_since(self, pod: str) -> float:
        return min(self.drained.get(pod, float("inf")), self.stopped.get(pod, float("inf")))

    def begin(self, name: str, t: float) -> None:
        if self.phases and self.phases[-1].end == float("inf"):
            self.phases[-1].end = t
        self.phases.append(Phase(name, t))

    def finish(self, t: float) -> None:
        if self.phases and self.phases[-1].end == float("inf"):
            self.phases[-1].end = t


def find_moves(calls: list[Call], timeline: Timeline) -> list[Move]:
    """Every change of pod between a client's consecutive successful calls."""
    moves = []
    by_client: dict[int, list[Call]] = {}
    for c in calls:
        if c.pod is not None:
            by_client.setdefault(c.client, []).append(c)
    for client, cs in by_client.items():
        cs.sort(key=lambda c: c.start)
        for prev, cur in zip(cs, cs[1:]):
            if cur.pod != prev.pod:
                moves.append(Move(
                    client=client, at=cur.start, prev_end=prev.end, old=prev.pod, new=cur.pod,
                    needed=timeline.retiring_since(prev.pod) <= cur.start,
                    into_retiring=timeline.retiring_since(cur.pod) <= cur.start))
    moves.sort(key=lambda m: m.at)
    return moves


def last_pods(calls: list[Call]) -> dict[int, str]:
    last: dict[int, Call] = {}
    for c in calls:
        if c.pod is not None and (c.client not in last or c.start > last[c.client].start):
            last[c.client] = c
    return {i: c.pod for i, c in last.items()}


def spread(pods_by_client: dict[int, str], pods: list[str]) -> dict[str, int]:
    counts = {p: 0 for p in pods}
    for p in pods_by_client.values():
        counts[p] = counts.get(p, 0) + 1
    return counts


def progress(calls: list[Call], phase: Phase, clients: int) -> dict[int, int]:
    """Successful calls per client that started and ended within the phase."""
    counts = {i: 0 for i in range(clients)}
    for c in calls:
        if c.pod is not None and c.start >= phase.start and c.end <= phase.end:
            counts[c.client] += 1
    return counts


def phase_table(calls: list[Call], timeline: Timeline, clients: int, t0: float,
                workers: dict[int, int] | None = None, sources: dict[int, str] | None = None) -> str:
    """Per phase and client: the pods that answered, in order (a>b is a move),
    successful calls in (), failed calls as !n."""
    cols = []
    for ph in timeline.phases:
        per: dict[int, list] = {i: [] for i in range(clients)}
        ok = {i: 0 for i in range(clients)}
        bad = {i: 0 for i in range(clients)}
        for c in sorted(calls, key=lambda c: c.start):
            if not (ph.start <= c.start < ph.end):
                continue
            if c.pod is None:
                bad[c.client] += 1
                continue
            ok[c.client] += 1
            if not per[c.client] or per[c.client][-1] != c.pod:
                per[c.client].append(c.pod)
        cells = {i: (">".join(per[i]) or "-") + f" ({ok[i]})" + (f" !{bad[i]}" if bad[i] else "")
                 for i in range(clients)}
        cols.append((f"{ph.name} [{ph.start - t0:.1f}s..{ph.end - t0:.1f}s]", cells))
    header = ["client", "src", "worker"] + [c[0] for c in cols]
    rows = []
    for i in range(clients):
        rows.append([str(i), (sources or {}).get(i, "?"), str((workers or {}).get(i, "?"))]
                    + [c[1][i] for c in cols])
    widths = [max(len(r[k]) for r in [header] + rows) for k in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in [header] + rows)


def events_text(timeline: Timeline, t0: float) -> str:
    ev = []
    for kind, d in (("drain seen", timeline.drained), ("SIGTERM", timeline.stopped), ("removed", timeline.removed)):
        ev += [(t, f"{t - t0:7.2f}s {kind} {pod}") for pod, t in d.items()]
    return "\n".join(text for _, text in sorted(ev))
