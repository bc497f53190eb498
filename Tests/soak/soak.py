#!/usr/bin/env python3
"""`make soak`: a chaos soak of the real stickyd (docs/SOAK.md).

The daemon (STICKYD_BIN) runs from a config file in front of byte-checking
echo targets (Tests/soak/echo_target.py, one process each) and greeter pods
(examples/greeter/server.py, gRPC over its h2c pool). For SOAK_SECONDS
(default 1800), all at once:
- SOAK_CLIENTS (48) clients, each from its own 127.1.x.y address, stream
  random payloads (1 B to 2 MiB) and check every byte that comes back; some
  read or write slowly, some reset mid-stream (SO_LINGER 0);
- gRPC greeter calls, each answer checked;
- targets are SIGKILLed and restarted, taken out of the config file and put
  back (SIGHUP), drained, put in maint, removed and added (admin socket);
- `stickyctl upgrade` every few minutes;
- bursts past limits.max_connections, and to descriptor exhaustion (the
  daemon's RLIMIT_NOFILE lowered with prlimit for the burst).

Then it reports (to SOAK_OUT, default .build/soak/: report.json, report.txt,
soak.png): streams completed, failed by cause, corrupted, misrouted (from the
access log's `placement=`), the daemon's RSS and descriptors. With SOAK_CI=1
it exits 1 unless 0 corrupted, 0 misrouted and the idle descriptors are back
to their baseline; RSS is reported, not asserted.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO / "Tests" / "integration"))
sys.path.insert(0, str(HERE))

from admin_support import admin  # noqa: E402
from support import LOOPBACK, ManagedProcess, fmt_addr, free_port, wait_until  # noqa: E402

import soak_clients as clients  # noqa: E402
import soak_report as judge  # noqa: E402

SECONDS = int(os.environ.get("SOAK_SECONDS", "1800"))
CI = os.environ.get("SOAK_CI", "") not in ("", "0")
CLIENTS = int(os.environ.get("SOAK_CLIENTS", "48"))
SEED = int(os.environ.get("SOAK_SEED", str(int(time.time()))))
OUT = Path(os.environ.get("SOAK_OUT", REPO / ".build" / "soak"))
STICKYD = Path(os.environ.get("STICKYD_BIN", REPO / ".build" / "debug" / "stickyd"))
STICKYCTL = Path(os.environ.get("STICKYCTL_BIN", STICKYD.parent / "stickyctl"))
ECHO_TARGETS = 4
GREETER_PODS = 3
MAX_CONNECTIONS = 400
AFFINITY_TIMEOUT_S = 3600
STREAMS_MAX = 5_000_000  # a bound on the load loop besides the clock
WARMUP_S = min(60.0, SECONDS / 4)
UPGRADE_EVERY_S = 180.0
GREETER_THREADS = 2


class Target:
    """One backend process; SIGKILLed and restarted on the same port."""

    def __init__(self, pool: str, name: str, env: dict) -> None:
        self.pool = pool
        self.name = name
        self.port = free_port()
        self.addr = fmt_addr(LOOPBACK, self.port)
        self.env = env
        self.proc: ManagedProcess | None = None
        self.incarnation = 0
        self.in_file = True
        self.busy = False  # under one disruption at a time

    def start(self) -> None:
        self.incarnation += 1
        if self.pool == "echo":
            argv = [sys.executable, str(HERE / "echo_target.py"), "--port", str(self.port), "--name", self.name]
        else:
            argv = [sys.executable, str(REPO / "examples" / "greeter" / "server.py"), "--port", str(self.port),
                    "--name", self.name, "--grace", "1"]
        self.proc = ManagedProcess(argv, self.name, OUT / "logs" / f"{self.name}.{self.incarnation}.log", env=self.env)
        if self.pool == "echo":
            self.proc.wait_for_output("listening", 20)
        else:
            from conftest import wait_serving
            wait_serving(self.addr, 30)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.stop(timeout=5, sig=signal.SIGKILL)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.alive()


def fd_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def fd_kinds(pid: int) -> dict:
    """The daemon's descriptors by kind (socket, pipe, eventfd, file...),
    so that a count above the baseline says what was left open."""
    kinds: Counter = Counter()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            kinds[re.sub(r"\[\d+\]$", "", link).rstrip(":")] += 1
    except OSError:
        pass
    return dict(kinds)


def rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            m = re.search(r"^VmRSS:\s+(\d+) kB", f.read(), re.M)
        return int(m.group(1)) if m else -1
    except OSError:
        return -1


def pid_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


class Soak:
    def __init__(self) -> None:
        self.rng = random.Random(SEED)
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.exclusive = threading.Lock()  # upgrades and bursts, one at a time
        self.results: list[clients.StreamResult] = []
        self.bursts: list[clients.BurstResult] = []
        self.greeter = clients.GreeterTally()
        self.events: list[tuple[float, str, str]] = []
        self.down_spans: dict[str, list[list[float]]] = {}
        self.fd_spans: list[tuple[float, float]] = []
        self.actions: Counter = Counter()
        self.samples: list[dict] = []
        self.opened = 0
        self.done = 0
        self.pids: list[int] = []
        self.daemon_pid = 0
        self.daemon: ManagedProcess | None = None
        self.scheduled: list[tuple[float, str, object]] = []
        self.marks: list[tuple[float, str]] = []
        self.problems: list[str] = []
        self.admin_errors: list[str] = []

    # -- setup ---------------------------------------------------------------

    def setup(self) -> None:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # bursts hold hundreds of sockets
        (OUT / "logs").mkdir(parents=True, exist_ok=True)
        for old in ("access.log", "report.json", "report.txt", "soak.png", "streams.jsonl.gz"):
            (OUT / old).unlink(missing_ok=True)
        # A fresh start: the last run's state file names the same targets
        # on other ports, which the daemon refuses.
        shutil.rmtree(OUT / "state", ignore_errors=True)
        for old in (OUT / "logs").glob("*.log"):
            old.unlink()
        pb = OUT / "greeter_pb"
        pb.mkdir(exist_ok=True)
        greeter = REPO / "examples" / "greeter"
        subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{greeter}", f"--python_out={pb}",
                        f"--grpc_python_out={pb}", str(greeter / "helloworld.proto")], check=True, timeout=60)
        sys.path.insert(0, str(pb))
        env = dict(os.environ, PYTHONPATH=str(pb), PYTHONUNBUFFERED="1")
        self.targets = [Target("echo", f"echo-{i + 1}", env) for i in range(ECHO_TARGETS)]
        self.targets += [Target("greeter", f"pod-{i + 1}", env) for i in range(GREETER_PODS)]
        for t in self.targets:
            t.start()
        self.by_name = {t.name: t.addr for t in self.targets}
        self.echo_port = free_port()
        self.grpc_port = free_port()
        self.sock = str(OUT / "admin.sock")
        self.config = OUT / "stickyd.yaml"
        self.write_config()
        self.daemon = ManagedProcess([str(STICKYD), "--config", str(self.config)], "stickyd",
                                     OUT / "logs" / "stickyd.log", cwd=str(REPO))
        self.daemon.wait_for_output(r"\bready\b", 30)
        self.daemon_pid = self.daemon.pid
        self.pids.append(self.daemon_pid)
        wait_until(self.all_healthy, 30, 0.2, "every target ready and up")
        # The idle baseline: the most descriptors seen over 2 s with no
        # client (health probes come and go).
        seen = []
        for _ in range(10):
            seen.append(fd_count(self.daemon_pid))
            time.sleep(0.2)
        self.fds_idle_baseline = max(seen)
        self.fd_kinds_baseline = fd_kinds(self.daemon_pid)

    def write_config(self) -> None:
        def pool_targets(pool: str) -> list[str]:
            return [f"      - {{ address: {t.addr}, name: {t.name} }}"
                    for t in self.targets if t.pool == pool and t.in_file]
        lines = [
            "# Written by Tests/soak/soak.py; rewritten for each reload.",
            "engine: copy",
            "workers: 2",
            "listeners:",
            f"  - {{ address: {fmt_addr(LOOPBACK, self.echo_port)}, pool: echo }}",
            f"  - {{ address: {fmt_addr(LOOPBACK, self.grpc_port)}, pool: greeter }}",
            "pools:",
            "  - name: echo",
            f"    affinity: {{ mode: idle, timeout: {AFFINITY_TIMEOUT_S}s, capacity: 65536, balance_factor: 1.25 }}",
            "    health: { type: tcp, interval: 1s, timeout: 500ms, rise: 2, fall: 2, passive: true }",
            "    targets:", *pool_targets("echo"),
            "  - name: greeter",
            "    protocol: h2c",
            f"    affinity: {{ mode: idle, timeout: {AFFINITY_TIMEOUT_S}s }}",
            '    health: { type: grpc, service: "", interval: 1s, timeout: 500ms, rise: 2, fall: 2, passive: true }',
            "    targets:", *pool_targets("greeter"),
            f"limits: {{ max_connections: {MAX_CONNECTIONS} }}",
            "timeouts: { connect: 2s, idle: 60s, shutdown: 10s }",
            "drain: { mode: strict, timeout: 10s, grace: 1s }",
            f"admin: {{ socket: {self.sock} }}",
            f"state_dir: {OUT / 'state'}",
            f"takeover_socket: {OUT / 'takeover.sock'}",
            f"log: {{ level: info, access: {OUT / 'access.log'}, access_placement: true }}",
        ]
        self.config.write_text("\n".join(lines) + "\n")

    def admin_json(self, line: str) -> dict:
        return json.loads(admin(self.sock, "json " + line, timeout=10))

    def all_healthy(self) -> bool:
        try:
            ts = self.admin_json("show targets")["targets"]
        except (OSError, EOFError, TimeoutError, ValueError):
            return False
        want = {t.addr for t in self.targets}
        got = {t["address"] for t in ts if t["state"] == "ready" and t.get("health", "up") == "up"}
        return want <= got

    # -- load ----------------------------------------------------------------

    def client(self, k: int) -> None:
        ip = f"127.1.{k // 250}.{1 + k % 250}"
        rng = random.Random(SEED * 1000 + k)
        seq = 0
        addr = (LOOPBACK, self.echo_port)
        while not self.stop.is_set() and len(self.results) < STREAMS_MAX:
            with self.lock:
                self.opened += 1
            r = clients.run_stream(ip, seq, addr, rng, self.stop)
            seq += 1
            with self.lock:
                self.results.append(r)
                if r.outcome == "ok":
                    self.done += 1
            if r.outcome not in ("ok", "reset_by_client"):
                self.stop.wait(0.1)  # a failing daemon is not hammered

    def monitor(self) -> None:
        last_opened, last_done, last_t = 0, 0, time.time()
        while not self.stop.wait(1.0):
            now = time.time()
            with self.lock:
                opened, done = self.opened, self.done
            dt = max(1e-3, now - last_t)
            pid = self.daemon_pid
            self.samples.append({"t": now, "pid": pid, "rss_kib": rss_kib(pid), "fds": fd_count(pid),
                                 "conn_rate": (opened - last_opened) / dt, "done_rate": (done - last_done) / dt})
            last_opened, last_done, last_t = opened, done, now

    # -- chaos ---------------------------------------------------------------

    def event(self, kind: str, target: str) -> None:
        with self.lock:
            self.events.append((time.time(), kind, target))
            self.actions[kind] += 1

    def later(self, seconds: float, what: str, arg) -> None:
        self.scheduled.append((time.monotonic() + seconds, what, arg))

    def hup(self) -> None:
        self.write_config()
        os.kill(self.daemon_pid, signal.SIGHUP)

    def act(self, what: str, t: Target | None) -> None:
        """One chaos step, or the undoing of one."""
        if what == "kill":
            t.busy = True
            t.kill()
            self.event("kill", t.addr)
            self.down_spans.setdefault(t.addr, []).append([time.time(), float("inf")])
            self.later(self.rng.uniform(0.3, 4.0), "restart", t)
        elif what == "restart":
            try:
                t.start()
            except (RuntimeError, TimeoutError) as exc:
                self.problems.append(f"restart of {t.name} failed: {exc}")
            self.down_spans[t.addr][-1][1] = time.time()
            self.event("restart", t.addr)
            t.busy = False
        elif what == "config_out":
            t.busy = True
            t.in_file = False
            self.hup()
            self.event("config_out", t.addr)
            self.later(self.rng.uniform(5, 20), "config_in", t)
        elif what == "config_in":
            t.in_file = True
            self.hup()
            self.event("config_in", t.addr)
            t.busy = False
        elif what in ("drain", "maint"):
            t.busy = True
            line = f"drain target {t.addr} timeout 10s" if what == "drain" else f"maint target {t.addr}"
            self.event(what, t.addr)
            self.admin_step(line)
            self.later(self.rng.uniform(3, 15), "ready", t)
        elif what == "ready":
            self.admin_step(f"ready target {t.addr}")
            self.event("ready", t.addr)
            t.busy = False
        elif what == "remove":
            t.busy = True
            self.event("drain", t.addr)
            self.admin_step(f"drain target {t.addr} timeout 2s")
            self.later(3.5, "remove_now", t)
        elif what == "remove_now":
            self.event("remove", t.addr)
            answer = self.admin_step(f"remove target {t.addr}")
            if "still has" in answer:
                self.admin_step(f"remove target {t.addr} force")
                self.actions["remove_forced"] += 1
            self.later(self.rng.uniform(3, 10), "add", t)
        elif what == "add":
            self.admin_step(f"add target {t.pool} {t.addr} name {t.name}")
            self.event("add", t.addr)
            t.busy = False

    def admin_step(self, line: str) -> str:
        try:
            answer = admin(self.sock, line, timeout=10)
        except (OSError, EOFError, TimeoutError) as exc:
            answer = f"error: {exc}"
        if not answer.startswith("ok"):
            self.actions["admin_error"] += 1
            if len(self.admin_errors) < 20:
                self.admin_errors.append(f"{line} -> {answer}")
        return answer

    def chaos(self) -> None:
        start = time.monotonic()
        next_step = start + 5
        next_upgrade = start + (UPGRADE_EVERY_S if SECONDS > UPGRADE_EVERY_S * 1.5 else SECONDS / 2)
        next_limit = start + min(30, SECONDS / 4)
        next_fd = start + min(45, SECONDS / 3)
        kinds = (("kill", 4), ("config_out", 2), ("drain", 2), ("maint", 1), ("remove", 1))
        while not self.stop.wait(0.2):
            now = time.monotonic()
            for item in [s for s in self.scheduled if s[0] <= now]:
                self.scheduled.remove(item)
                self.act(item[1], item[2])
            if now >= next_step:
                next_step = now + self.rng.uniform(2, 6)
                idle = [t for t in self.targets if not t.busy]
                pool = self.rng.choice(("echo", "echo", "greeter"))
                cands = [t for t in idle if t.pool == pool]
                # At least one target of the pool left alone, file-wise.
                in_file = sum(1 for t in self.targets if t.pool == pool and t.in_file)
                if cands:
                    what = self.rng.choices([k for k, _ in kinds], [w for _, w in kinds])[0]
                    if what == "config_out" and in_file < 2:
                        what = "kill"
                    self.act(what, self.rng.choice(cands))
            if now >= next_upgrade:
                next_upgrade = now + UPGRADE_EVERY_S
                threading.Thread(target=self.upgrade, daemon=True).start()
            if now >= next_limit:
                next_limit = now + self.rng.uniform(40, 80)
                threading.Thread(target=self.limit_burst, daemon=True).start()
            if now >= next_fd:
                next_fd = now + self.rng.uniform(50, 90)
                threading.Thread(target=self.fd_burst, daemon=True).start()

    def upgrade(self) -> None:
        with self.exclusive:
            self.marks.append((time.time(), "upgrade"))
            try:
                r = subprocess.run([str(STICKYCTL), "upgrade", "--socket", self.sock, "--timeout", "90"],
                                   capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
            except subprocess.TimeoutExpired:
                self.problems.append("stickyctl upgrade did not return within 120 s")
                return
            m = re.search(r"upgrade: pid (\d+) took over", r.stdout)
            if r.returncode != 0 or not m:
                self.problems.append(f"upgrade failed: {r.stdout.strip()} {r.stderr.strip()}")
                self.actions["upgrade_failed"] += 1
                return
            self.daemon_pid = int(m.group(1))
            self.pids.append(self.daemon_pid)
            self.actions["upgrade"] += 1

    def limit_burst(self) -> None:
        with self.exclusive:
            self.marks.append((time.time(), "burst"))
            b = clients.burst("limit", (LOOPBACK, self.echo_port), MAX_CONNECTIONS + 100, 2.0,
                              self.rng.randrange(60_000))
            with self.lock:
                self.opened += b.attempted
                self.bursts.append(b)

    def fd_burst(self) -> None:
        """Lower the daemon's soft RLIMIT_NOFILE to a little above what it
        holds, burst past it, then put the limit back."""
        with self.exclusive:
            pid = self.daemon_pid
            soft = self.soft_nofile(pid)
            held = fd_count(pid)
            if soft <= 0 or held <= 0:
                return
            self.marks.append((time.time(), "burst"))
            t0 = time.time()
            subprocess.run(["prlimit", "--pid", str(pid), f"--nofile={held + 60}:"], check=False, timeout=10)
            try:
                b = clients.burst("descriptors", (LOOPBACK, self.echo_port), 300, 2.0, self.rng.randrange(60_000))
                b.detail = {"limit": held + 60, "held_before": held}
            finally:
                subprocess.run(["prlimit", "--pid", str(pid), f"--nofile={soft}:"], check=False, timeout=10)
            with self.lock:
                self.opened += b.attempted
                self.bursts.append(b)
                self.fd_spans.append((t0, time.time()))

    @staticmethod
    def soft_nofile(pid: int) -> int:
        try:
            with open(f"/proc/{pid}/limits") as f:
                m = re.search(r"^Max open files\s+(\d+)", f.read(), re.M)
            return int(m.group(1)) if m else -1
        except OSError:
            return -1

    # -- the run -------------------------------------------------------------

    def run(self) -> int:
        started = time.time()
        threads = [threading.Thread(target=self.client, args=(k,), daemon=True) for k in range(CLIENTS)]
        threads.append(threading.Thread(target=self.monitor, daemon=True))
        addr = fmt_addr(LOOPBACK, self.grpc_port)
        for _ in range(GREETER_THREADS):
            threads.append(threading.Thread(target=clients.greeter_loop,
                                            args=(addr, self.greeter, self.lock, self.stop), daemon=True))
        chaos = threading.Thread(target=self.chaos, daemon=True)
        for th in threads:
            th.start()
        chaos.start()
        warm_at = time.time() + WARMUP_S
        self.stop.wait(SECONDS)
        load_end = time.time()
        self.stop.set()
        chaos.join(30)
        for th in threads:
            th.join(clients.STREAM_DEADLINE + 10)
        with self.exclusive:  # a burst or an upgrade under way finishes first
            pass
        self.restore()
        # Back at idle: the descriptors must come back to the baseline.
        try:
            wait_until(lambda: fd_count(self.daemon_pid) <= self.fds_idle_baseline, 30, 0.2,
                       "daemon descriptors back to the idle baseline")
        except TimeoutError:
            pass
        fds_idle_end = fd_count(self.daemon_pid)
        self.fd_kinds_end = fd_kinds(self.daemon_pid)
        self.stop_daemons()
        return self.judge(started, warm_at, load_end, fds_idle_end)

    def restore(self) -> None:
        """Undo every disruption: targets alive, in the file, ready, so the
        idle state matches the start."""
        for t in self.targets:
            if not t.alive():
                t.start()
            t.in_file = True
            t.busy = False
        self.scheduled.clear()
        self.hup()
        try:
            present = {t["address"] for t in self.admin_json("show targets")["targets"]}
        except (OSError, EOFError, TimeoutError, ValueError):
            present = set()
        for t in self.targets:
            if t.addr not in present:
                self.admin_step(f"add target {t.pool} {t.addr} name {t.name}")
            self.admin_step(f"ready target {t.addr}")
        try:
            wait_until(self.all_healthy, 30, 0.2, "every target ready and up after the run")
        except TimeoutError as exc:
            self.problems.append(f"{exc}: {admin(self.sock, 'show targets')}")

    def stop_daemons(self) -> None:
        for pid in self.pids:
            if not pid_gone(pid):
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for pid in self.pids:
            try:
                wait_until(lambda: pid_gone(pid), 30, 0.1, f"stickyd pid {pid} gone")
            except TimeoutError:
                self.problems.append(f"stickyd pid {pid} did not stop on SIGTERM; killed")
                os.kill(pid, signal.SIGKILL)
        if self.daemon is not None:
            self.daemon.stop(5)

    def cleanup(self) -> None:
        self.stop.set()
        for pid in self.pids:
            if not pid_gone(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if self.daemon is not None:
            self.daemon.stop(5)
        for t in getattr(self, "targets", []):
            if t.proc is not None:
                t.proc.stop(10)

    # -- the report ----------------------------------------------------------

    def judge(self, started: float, warm_at: float, load_end: float, fds_idle_end: int) -> int:
        access = judge.parse_access_log(OUT / "access.log")
        streams = list(self.results)
        joined = judge.join(streams, access)
        spans = {k: [(a, b if b != float("inf") else time.time()) for a, b in v] for k, v in self.down_spans.items()}
        downs = judge.health_downs(OUT / "logs" / "stickyd.log")
        tl = judge.Timeline(self.events + downs, spans, self.fd_spans)
        causes = judge.classify(streams, joined, tl, self.by_name, [t.addr for t in self.targets if t.pool == "echo"])
        misrouted, examples, placements = judge.misroutes(access, streams, joined, tl, AFFINITY_TIMEOUT_S)
        # The client saw its target announce itself: the access log must
        # name the same one.
        mismatched = sum(1 for r in streams if r.target and id(r) in joined
                         and joined[id(r)]["target"] != self.by_name.get(r.target))
        total = len(streams)
        ok = sum(1 for r in streams if r.outcome == "ok")
        intended = sum(1 for r in streams if r.outcome == "reset_by_client")
        killed = causes.get("in_flight_on_killed_target", 0)
        corrupted = sum(1 for r in streams if r.corrupted) + self.greeter.wrong

        def window(lo: float, hi: float, key: str) -> int:
            vals = sorted(s[key] for s in self.samples if lo <= s["t"] <= hi and s[key] >= 0)
            return vals[len(vals) // 2] if vals else -1

        # RSS growth within each daemon process (an upgrade starts a new
        # one, whose RSS starts low): the slope of a least-squares line
        # over its samples after warm-up and its own first 10 s.
        growth = {}
        for pid in self.pids:
            pts = [(s["t"], s["rss_kib"]) for s in self.samples if s["pid"] == pid and s["rss_kib"] > 0]
            pts = [p for p in pts if p[0] >= max(warm_at, pts[0][0] + 10)] if pts else []
            if len(pts) >= 10:
                mt = sum(t for t, _ in pts) / len(pts)
                mr = sum(r for _, r in pts) / len(pts)
                var = sum((t - mt) ** 2 for t, _ in pts)
                growth[str(pid)] = round(60 * sum((t - mt) * (r - mr) for t, r in pts) / var) if var else 0
        rss_warm = window(warm_at, warm_at + 10, "rss_kib")
        rss_end = window(load_end - 10, load_end, "rss_kib")
        report = {
            "seconds": SECONDS, "seed": SEED, "clients": CLIENTS, "ci": CI,
            "streams": {"total": total, "completed": ok, "reset_by_client": intended,
                        "completed_pct": 100.0 * (ok + intended) / max(1, total),
                        "completed_pct_excl_killed": 100.0 * (ok + intended) / max(1, total - killed),
                        **judge.stream_summary(streams)},
            "failed_by_cause": dict(causes),
            "corrupted": corrupted,
            "misrouted": misrouted, "misrouted_examples": examples,
            "access_log": {"lines": len(access), "joined_streams": len(joined), "target_mismatches": mismatched},
            "placements": dict(placements),
            "greeter": {"ok": self.greeter.ok, "wrong": self.greeter.wrong, "failed": self.greeter.failed},
            "bursts": [{k: v for k, v in vars(b).items()} for b in self.bursts],
            "actions": dict(self.actions),
            "daemon_health_downs": len(downs),
            "daemon_complaints": judge.daemon_complaints(OUT / "logs" / "stickyd.log"),
            "daemon": {"rss_warm_kib": rss_warm, "rss_end_kib": rss_end,
                       "rss_change_pct": 100.0 * (rss_end - rss_warm) / max(1, rss_warm),
                       "rss_growth_kib_per_min_by_pid": growth,
                       "fds_warm": window(warm_at, warm_at + 10, "fds"), "fds_end": window(load_end - 10, load_end, "fds"),
                       "fds_idle_baseline": self.fds_idle_baseline, "fds_idle_end": fds_idle_end,
                       "fd_kinds_idle_baseline": self.fd_kinds_baseline, "fd_kinds_idle_end": self.fd_kinds_end,
                       "upgrades": self.actions.get("upgrade", 0), "pids": self.pids},
            "admin_errors": self.admin_errors,
            "problems": self.problems,
            "marks": self.marks,
            # What the harness did, for judging a verdict again by hand.
            "timeline": {"events": self.events, "down_spans": spans, "fd_spans": self.fd_spans},
            "samples": self.samples,
            "wall_seconds": round(time.time() - started, 1),
        }
        failures = []
        if corrupted:
            failures.append(f"{corrupted} corrupted")
        if misrouted:
            failures.append(f"{misrouted} misrouted")
        if mismatched:
            failures.append(f"{mismatched} access log lines name another target than the client saw")
        if fds_idle_end > self.fds_idle_baseline:
            failures.append(f"idle descriptors {fds_idle_end} > baseline {self.fds_idle_baseline}")
        if not joined and total:
            failures.append("no stream found in the access log (no placement= to judge by)")
        report["ci_failures"] = failures
        # Every stream, for a second look at a verdict (`SOAK_SEED` repeats
        # the choices, not the timing).
        with gzip.open(OUT / "streams.jsonl.gz", "wt") as f:
            for r in streams:
                a = joined.get(id(r))
                f.write(json.dumps({**vars(r), "line": a}) + "\n")
        judge.write_report(OUT, report, self.samples)
        return 1 if CI and failures else 0


def main() -> int:
    if not (STICKYD.is_file() and os.access(STICKYD, os.X_OK)):
        print(f"soak: no stickyd at {STICKYD}: build it (make build-debug) or set STICKYD_BIN", file=sys.stderr)
        return 2
    print(f"soak: {SECONDS} s, {CLIENTS} clients, seed {SEED}, {STICKYD}; output in {OUT}", flush=True)
    soak = Soak()
    try:
        soak.setup()
        return soak.run()
    finally:
        soak.cleanup()


if __name__ == "__main__":
    sys.exit(main())
