"""The command line: check-config, bad input, signals, a busy port."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import tempfile
import time

import pytest

from conftest import REPO
from support import LOOPBACK, connect, echo_roundtrip, fmt_addr, free_port

DEFAULT_CONFIG = REPO / "config" / "stickyd.yaml"


def run(argv, timeout: float = 15.0) -> subprocess.CompletedProcess:
    """Run stickyd expecting it to exit by itself. If it says `ready` (it took
    the input and started serving) or is still running after timeout, it is
    stopped and the result has returncode None, with its output."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([str(a) for a in argv], stdout=out, stderr=err,
                                stdin=subprocess.DEVNULL, cwd=REPO)
        deadline = time.monotonic() + timeout
        status = None
        try:
            while time.monotonic() < deadline:
                status = proc.poll()
                if status is not None:
                    break
                err.seek(0)
                if re.search(rb"\bready\b", err.read()):
                    break
                time.sleep(0.02)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(argv, status, out.read().decode(errors="replace"),
                                           err.read().decode(errors="replace"))


def output(p: subprocess.CompletedProcess) -> str:
    return p.stdout + p.stderr


def assert_refused(p: subprocess.CompletedProcess) -> None:
    """It exited by itself with a non-zero status (and did not start serving)."""
    assert p.returncode is not None, f"stickyd started instead of exiting with an error:\n{output(p)}"
    assert p.returncode != 0, f"exit status 0:\n{output(p)}"


@pytest.fixture
def good_config(tmp_path):
    assert DEFAULT_CONFIG.is_file(), f"{DEFAULT_CONFIG} is missing"
    text = DEFAULT_CONFIG.read_text()
    path = tmp_path / "good.yaml"
    path.write_text(text)
    return path, text


def test_check_config_default_file_ok(stickyd_path):
    p = run([stickyd_path, "check-config", "config/stickyd.yaml"])
    assert p.returncode == 0, output(p)
    assert "config/stickyd.yaml: OK" in p.stdout, output(p)


def test_check_config_good_copy_ok(stickyd_path, good_config):
    path, _ = good_config
    p = run([stickyd_path, "check-config", path])
    assert p.returncode == 0, output(p)
    assert f"{path}: OK" in p.stdout, output(p)


def line_of(text: str, needle: str) -> int:
    for i, line in enumerate(text.splitlines(), 1):
        if needle in line:
            return i
    raise AssertionError(f"{needle!r} not in the default config")


def test_check_config_bad_port_names_file_and_line(stickyd_path, good_config, tmp_path):
    _, text = good_config
    line = line_of(text, "50062")
    bad = tmp_path / "bad-port.yaml"
    bad.write_text(text.replace("50062", "99999", 1))
    p = run([stickyd_path, "check-config", bad])
    assert p.returncode == 1, f"exit {p.returncode}: {output(p)}"
    assert re.search(rf"^(?:stickyd: )?{re.escape(str(bad))}:{line}:\d+: \S", output(p), re.M), (
        f"expected '{bad}:{line}:COL: message', got:\n{output(p)}")
    assert ": OK" not in p.stdout


def test_check_config_bad_address_names_file_and_line(stickyd_path, good_config, tmp_path):
    _, text = good_config
    line = line_of(text, "127.0.0.1:50051")
    bad = tmp_path / "bad-addr.yaml"
    bad.write_text(text.replace("127.0.0.1:50051", "127.0.0.300:50051", 1))
    p = run([stickyd_path, "check-config", bad])
    assert p.returncode == 1, f"exit {p.returncode}: {output(p)}"
    assert re.search(rf"^(?:stickyd: )?{re.escape(str(bad))}:{line}:\d+: \S", output(p), re.M), output(p)


def test_check_config_yaml_syntax_error(stickyd_path, good_config, tmp_path):
    _, text = good_config
    bad = tmp_path / "bad-syntax.yaml"
    bad.write_text(text + "\nthis is: [not closed\n")
    p = run([stickyd_path, "check-config", bad])
    assert p.returncode == 1, f"exit {p.returncode}: {output(p)}"
    assert re.search(rf"^(?:stickyd: )?{re.escape(str(bad))}:\d+:\d+: \S", output(p), re.M), output(p)


def test_check_config_missing_file(stickyd_path, tmp_path):
    missing = tmp_path / "nope.yaml"
    p = run([stickyd_path, "check-config", missing])
    assert_refused(p)
    assert str(missing) in output(p), output(p)


def test_vip_release_without_vip_is_a_no_op(stickyd_path, good_config):
    # The unit runs it after every stop: a config without vip: must pass.
    path, _ = good_config
    p = run([stickyd_path, "vip-release", path])
    assert p.returncode == 0, output(p)
    assert "no vip: configured" in p.stdout, output(p)


def test_vip_release_says_why_it_failed(stickyd_path, good_config, tmp_path):
    # An interface that does not exist: nothing on the host is touched.
    _, text = good_config
    path = tmp_path / "vip.yaml"
    path.write_text(text + "\nvip:\n  address: 198.51.100.10\n  interface: nosuchvip0\n")
    p = run([stickyd_path, "vip-release", path])
    assert p.returncode == 1, output(p)
    assert "198.51.100.10" in output(p) and "nosuchvip0" in output(p), output(p)
    missing = tmp_path / "nope.yaml"
    p = run([stickyd_path, "vip-release", missing])
    assert_refused(p)
    assert str(missing) in output(p), output(p)


def test_daemon_refuses_bad_config(stickyd_path, good_config, tmp_path):
    _, text = good_config
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("50062", "99999", 1))
    p = run([stickyd_path, "--config", bad])
    assert_refused(p)
    assert str(bad) in output(p), output(p)


@pytest.mark.parametrize("args,mention", [
    (["--engine", "bogus"], "bogus"),
    (["--listen", "127.0.0.1:notaport"], "notaport"),
    (["--listen", "nohost"], "nohost"),
    (["--idle-timeout", "soon"], "soon"),
    (["--connect-timeout", "5parsecs"], "5parsecs"),
    (["--frobnicate"], "frobnicate"),
], ids=["engine", "port", "address", "idle-timeout", "connect-timeout", "unknown-flag"])
def test_bad_cli_input(stickyd_path, args, mention):
    """Bad flags: non-zero exit, an error that names the bad value, no `ready`."""
    base = ["--listen", fmt_addr(LOOPBACK, free_port()), "--target", "127.0.0.1:9"]
    # Later flags win for --listen: put the bad one last.
    p = run([stickyd_path, *base, *args])
    assert_refused(p)
    assert mention in output(p), f"the error does not name {mention!r}:\n{output(p)}"


def test_listen_address_in_use(stickyd_path):
    with socket.create_server((LOOPBACK, 0)) as busy:
        port = busy.getsockname()[1]
        p = run([stickyd_path, "--listen", fmt_addr(LOOPBACK, port), "--target", "127.0.0.1:9"])
    assert_refused(p)
    assert str(port) in output(p), f"the error does not name the address:\n{output(p)}"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_exits_zero(run_stickyd, backend, sig):
    srv = backend()
    d = run_stickyd([srv.addr])
    with connect(d.addr) as s:
        echo_roundtrip(s, b"before the signal")
    status = d.stop(timeout=5, sig=sig)
    assert not d.killed, f"no exit within 5 s of {sig.name}"
    assert status == 0, f"exit status {status} after {sig.name}"


def test_sigterm_drains_open_connection(run_stickyd, backend):
    """SIGTERM: new connections are no longer served, an open one keeps working
    until its client closes it, and then the daemon exits 0."""
    srv = backend()
    d = run_stickyd([srv.addr])
    s = connect(d.addr)
    try:
        echo_roundtrip(s, b"before")
        d.expect_exit = True
        d.send_signal(signal.SIGTERM)
        # New connections: refused, or closed without being served, within 2 s.
        deadline = time.monotonic() + 2
        refused = False
        while time.monotonic() < deadline and not refused:
            try:
                with socket.create_connection(d.addr, timeout=1) as n:
                    n.settimeout(1)
                    try:
                        n.sendall(b"late")
                        refused = n.recv(4) == b""
                    except (ConnectionResetError, BrokenPipeError, socket.timeout):
                        refused = True
            except ConnectionRefusedError:
                refused = True
            if not refused:
                time.sleep(0.05)
        assert refused, "new connections were still served 2 s after SIGTERM"
        assert d.alive(), "exited at once, although a connection was open"
        echo_roundtrip(s, b"after the signal")
    finally:
        s.close()
    status = d.wait(10)
    assert status is not None, "still running 10 s after its last connection closed"
    assert status == 0, f"exit status {status}"


def test_config_file_with_flag_overrides(run_stickyd, backend, tmp_path):
    """--config config/stickyd.yaml with --listen/--target/--admin-socket overriding it."""
    srv = backend()
    d = run_stickyd([srv.addr], args=["--config", str(DEFAULT_CONFIG),
                                      "--admin-socket", str(tmp_path / "admin.sock")])
    with connect(d.addr) as s:
        echo_roundtrip(s, b"overridden")
    assert srv.accepted == 1
