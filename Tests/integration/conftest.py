"""Fixtures that run the real stickyd binary against real loopback backends.

STICKYD_BIN names the binary (default .build/debug/stickyd, from the repository
root). Every process a test starts is stopped at teardown (SIGTERM, then SIGKILL
after a bound), and its output is attached to the report of a failed test.
"""

from __future__ import annotations

import atexit
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from support import (LOOPBACK, ManagedProcess, TcpServer, echo_handler, fmt_addr, free_port,
                     wait_until)

REPO = Path(__file__).resolve().parents[2]
GREETER_DIR = REPO / "examples" / "greeter"
READY_TIMEOUT = 20.0  # a debug build starting its worker threads: seconds, not minutes
STOP_TIMEOUT = 10.0

_all_processes: list[ManagedProcess] = []


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 1 << 20
    want = min(want, 1 << 20)
    if soft == resource.RLIM_INFINITY or soft >= want:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    except (ValueError, OSError):
        pass


_raise_fd_limit()  # inherited by the daemon too


@atexit.register
def _kill_leftovers() -> None:
    for p in _all_processes:
        if p.alive():
            p.proc.kill()


def stickyd_bin() -> Path:
    path = Path(os.environ.get("STICKYD_BIN", REPO / ".build" / "debug" / "stickyd"))
    if not path.is_absolute():
        path = REPO / path
    return path


@pytest.fixture(scope="session")
def stickyd_path() -> Path:
    path = stickyd_bin()
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(f"stickyd binary not found at {path}: build it (`swift build`) or set STICKYD_BIN",
                    pytrace=False)
    return path


def _attach(item, proc: ManagedProcess) -> None:
    procs = item.__dict__.setdefault("_managed_processes", [])
    procs.append(proc)
    _all_processes.append(proc)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for p in item.__dict__.get("_managed_processes", []):
            report.sections.append((f"output of {p.label} (pid {p.pid})", p.output_tail()))


class Stickyd(ManagedProcess):
    """A running stickyd. .addr is the first listener as (host, port)."""

    listen: list[tuple[str, int]]

    @property
    def addr(self) -> tuple[str, int]:
        return self.listen[0]


def _split(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)


@pytest.fixture
def run_stickyd(request, stickyd_path, tmp_path):
    """Factory: run_stickyd(targets=[...], engine=None, args=[...]) -> Stickyd.

    Starts the daemon in quick mode on a free loopback port (or the given listen
    addresses), waits (bounded) for its `ready` line, and stops it at teardown.
    A daemon that died on its own during the test fails the test.
    """
    started: list[Stickyd] = []

    def start(targets=(), *, engine: str | None = None, args=(), listen=None,
              wait_ready: bool = True) -> Stickyd:
        if listen is None:
            listen = [fmt_addr(LOOPBACK, free_port())]
        argv = [str(stickyd_path)]
        for addr in listen:
            argv += ["--listen", addr]
        for t in targets:
            argv += ["--target", t]
        if engine:
            argv += ["--engine", engine]
        n = len(started) + 1
        # Each daemon gets its own admin socket and state directory, so tests
        # never share runtime state or collide on /run/stickyd.
        if "--admin-socket" not in args:
            argv += ["--admin-socket", str(tmp_path / f"admin-{n}.sock")]
        if "--state-dir" not in args:
            argv += ["--state-dir", str(tmp_path / f"state-{n}")]
        if "--takeover-socket" not in args:
            argv += ["--takeover-socket", str(tmp_path / f"takeover-{n}.sock")]
        argv += list(args)
        proc = Stickyd(argv, f"stickyd#{n}", tmp_path / f"stickyd-{n}.log", cwd=str(REPO))
        proc.listen = [_split(a) for a in listen]
        started.append(proc)
        _attach(request.node, proc)
        if wait_ready:
            proc.wait_for_output(r"\bready\b", READY_TIMEOUT)
        return proc

    yield start

    problems = []
    for p in started:
        if p.stopped:
            continue
        status = p.stop(STOP_TIMEOUT)
        if p.exited_on_its_own is not None and not getattr(p, "expect_exit", False):
            problems.append(f"{p.label} exited on its own during the test (status {status})")
        elif p.killed:
            problems.append(f"{p.label} did not exit within {STOP_TIMEOUT:.0f}s of SIGTERM; killed")
        elif status != 0:
            problems.append(f"{p.label} exited with status {status} after SIGTERM (want 0)")
    if problems:
        pytest.fail("; ".join(problems) + "\n" + "\n".join(p.output_tail(60) for p in started),
                    pytrace=False)


@pytest.fixture
def backend():
    """Factory: backend(handler=echo_handler, host=..., port=0) -> TcpServer; stopped at teardown."""
    servers: list[TcpServer] = []

    def start(handler=echo_handler, host: str = LOOPBACK, name: str | None = None, port: int = 0) -> TcpServer:
        s = TcpServer(handler, host=host, name=name or f"backend{len(servers) + 1}", port=port)
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.stop()


# ---------------------------------------------------------------------------
# Greeter pods (examples/greeter/server.py) as subprocesses


@pytest.fixture(scope="session")
def greeter_code(tmp_path_factory) -> Path:
    """Generate the helloworld Python gRPC code into a temporary directory.

    The same code `make proto` writes into examples/greeter; generated here so
    that the suite does not depend on that step. Returns the directory."""
    pytest.importorskip("grpc_tools", reason="grpcio-tools missing: run `make deps`")
    out = tmp_path_factory.mktemp("greeter_pb")
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{GREETER_DIR}", f"--python_out={out}",
         f"--grpc_python_out={out}", str(GREETER_DIR / "helloworld.proto")],
        check=True, timeout=60)
    sys.path.insert(0, str(out))
    return out


def greeter_env(code_dir: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(code_dir), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def wait_serving(addr: str, timeout: float) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    def check() -> bool:
        with grpc.insecure_channel(addr) as ch:
            try:
                resp = health_pb2_grpc.HealthStub(ch).Check(
                    health_pb2.HealthCheckRequest(service="helloworld.Greeter"), timeout=0.5)
            except grpc.RpcError:
                return False
            return resp.status == health_pb2.HealthCheckResponse.SERVING

    wait_until(check, timeout, interval=0.1, what=f"greeter at {addr} SERVING")


@pytest.fixture
def greeter_pods(request, greeter_code, tmp_path):
    """Factory: greeter_pods(n) -> list of (name, "127.0.0.1:port", ManagedProcess)."""
    pods: list[ManagedProcess] = []

    def start(n: int = 3, extra=()) -> list[tuple[str, str, ManagedProcess]]:
        out = []
        for i in range(1, n + 1):
            name = f"pod-{len(pods) + 1}"
            port = free_port()
            argv = [sys.executable, str(GREETER_DIR / "server.py"), "--port", str(port),
                    "--name", name, *extra]
            p = ManagedProcess(argv, name, tmp_path / f"{name}.log", env=greeter_env(greeter_code))
            pods.append(p)
            _attach(request.node, p)
            out.append((name, fmt_addr(LOOPBACK, port), p))
        for name, addr, p in out:
            try:
                wait_serving(addr, 20)
            except TimeoutError as exc:
                raise RuntimeError(f"{exc}\n{p.output_tail()}") from None
        return out

    yield start
    for p in pods:
        p.stop(15)


@pytest.fixture(params=["splice", "copy"])
def engine(request) -> str:
    return request.param


def pytest_report_header(config):
    path = stickyd_bin()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return [f"stickyd: {path} ({'present' if path.exists() else 'MISSING'}); "
            f"fd limit {soft}/{hard}; {os.cpu_count()} cpus"]
