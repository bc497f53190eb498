"""The remote admin listener: the admin protocol over TCP with mutual TLS.

Certificates are made at test time with the openssl CLI: a CA that signs the
server's certificate and the clients', a client on the allow list by its
common name, one on it by its SHA-256 fingerprint, one the CA signed but the
list does not name, and one from another CA. Python's ssl module is the
client. Every refusal is checked against a daemon that goes on forwarding
traffic and serving its Unix admin socket.
"""

from __future__ import annotations

import json
import re
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from admin_support import AdminClient, admin, parse_fields, targets_by_address
from rollout_support import stickyctl_bin
from support import LOOPBACK, connect, echo_roundtrip, fmt_addr, free_port, wait_closed, wait_until
from test_cli import assert_refused, output, run
from test_upgrade import stop_pid

HANDSHAKE_TIMEOUT = 10.0  # AdminLimits.handshakeTimeoutMs


# ---------------------------------------------------------------------------
# Certificates


def openssl(*args: str, cwd: Path) -> str:
    p = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, f"openssl {' '.join(args)} failed:\n{p.stdout}{p.stderr}"
    return p.stdout


@dataclass
class Cert:
    crt: Path
    key: Path


class Pki:
    """CAs and certificates in one directory; EC P-256 keys, since they are quick to make."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(exist_ok=True)

    def ca(self, name: str) -> Cert:
        cert = Cert(self.dir / f"{name}.crt", self.dir / f"{name}.key")
        openssl("req", "-x509", "-new", "-nodes", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                "-keyout", str(cert.key), "-out", str(cert.crt), "-days", "2", "-subj", f"/CN={name}",
                "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=self.dir)
        return cert

    def leaf(self, name: str, ca: Cert, cn: str, server: bool = False) -> Cert:
        cert = Cert(self.dir / f"{name}.crt", self.dir / f"{name}.key")
        ext = self.dir / f"{name}.ext"
        usage = "serverAuth\nsubjectAltName=IP:127.0.0.1" if server else "clientAuth"
        ext.write_text(f"basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage={usage}\n")
        csr = self.dir / f"{name}.csr"
        openssl("req", "-new", "-nodes", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                "-keyout", str(cert.key), "-out", str(csr), "-subj", f"/O=stickyd tests/CN={cn}", cwd=self.dir)
        openssl("x509", "-req", "-in", str(csr), "-CA", str(ca.crt), "-CAkey", str(ca.key), "-CAcreateserial",
                "-days", "2", "-out", str(cert.crt), "-extfile", str(ext), cwd=self.dir)
        return cert

    def fingerprint(self, cert: Cert) -> str:
        """`sha256:AB:CD:...`, from what `openssl x509 -fingerprint` prints."""
        line = openssl("x509", "-in", str(cert.crt), "-noout", "-fingerprint", "-sha256", cwd=self.dir)
        return "sha256:" + line.strip().split("=", 1)[1]


@dataclass
class Certs:
    ca: Cert
    server: Cert
    by_cn: Cert  # allowed: CN=rollout-controller
    by_fingerprint: Cert  # allowed: its fingerprint
    unlisted: Cert  # signed by the CA, not on the list
    stranger: Cert  # CN=rollout-controller too, but from another CA
    fingerprint: str


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Certs:
    pki = Pki(tmp_path_factory.mktemp("pki"))
    ca = pki.ca("clients-ca")
    other = pki.ca("other-ca")
    by_fp = pki.leaf("by-fingerprint", ca, "ci-runner")
    return Certs(
        ca=ca,
        server=pki.leaf("server", ca, "stickyd admin", server=True),
        by_cn=pki.leaf("by-cn", ca, "rollout-controller"),
        by_fingerprint=by_fp,
        unlisted=pki.leaf("unlisted", ca, "intruder"),
        stranger=pki.leaf("stranger", other, "rollout-controller"),
        fingerprint=pki.fingerprint(by_fp),
    )


# ---------------------------------------------------------------------------
# The daemon and clients


def write_config(tmp_path: Path, listen: str, targets, remote: dict | None, name: str = "remote.yaml") -> Path:
    text = f"listeners:\n  - address: {listen}\npools:\n  - name: default\n    targets:\n"
    text += "".join(f"      - address: {t}\n" for t in targets)
    if remote is not None:
        text += "admin:\n  remote:\n"
        for key, value in remote.items():
            text += f"    {key}: {json.dumps(value)}\n"
    path = tmp_path / name
    path.write_text(text)
    return path


def remote_settings(certs: Certs, port: int, allow=None) -> dict:
    if allow is None:
        allow = ["CN=rollout-controller", certs.fingerprint]
    return {"listen": fmt_addr(LOOPBACK, port), "cert": str(certs.server.crt), "key": str(certs.server.key),
            "client_ca": str(certs.ca.crt), "allow": allow}


class TlsAdminClient(AdminClient):
    """An admin session over TLS: the same protocol as the Unix socket's."""

    def __init__(self, addr: tuple[str, int], certs: Certs, client: Cert | None, timeout: float = 10.0) -> None:
        self.path = fmt_addr(*addr)
        self.timeout = timeout
        self.buf = bytearray()
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(certs.ca.crt)
        if client is not None:
            ctx.load_cert_chain(client.crt, client.key)
        raw = socket.create_connection(addr, timeout=timeout)
        try:
            self.sock = ctx.wrap_socket(raw, server_hostname=addr[0])
        except BaseException:
            raw.close()
            raise


@dataclass
class Setup:
    daemon: object
    remote: tuple[str, int]
    sock: str
    backend: object


@pytest.fixture
def served(run_stickyd, backend, tmp_path, certs) -> Setup:
    b = backend()
    listen = fmt_addr(LOOPBACK, free_port())
    port = free_port()
    cfg = write_config(tmp_path, listen, [b.addr], remote_settings(certs, port))
    d = run_stickyd([], listen=[listen], args=["--config", str(cfg)])
    d.wait_for_output(r"remote admin listening", 10)
    return Setup(d, (LOOPBACK, port), d.argv[d.argv.index("--admin-socket") + 1], b)


def wait_logged(d, *fragments: str, timeout: float = 5.0) -> None:
    """Waits for a log line holding every fragment, in any order (swift-log
    prints the metadata before the message)."""
    d.wait_for_output("^" + "".join(f"(?=.*{re.escape(f)})" for f in fragments), timeout)


def assert_still_serving(s: Setup) -> None:
    """Traffic goes through, and the Unix admin socket answers."""
    with connect(s.daemon.addr) as c:
        echo_roundtrip(c, b"still forwarding")
    assert parse_fields(admin(s.sock, "show info"))["pid"] == str(s.daemon.pid)


def refusal(s: Setup, certs: Certs, client: Cert | None) -> str:
    """Tries a session; returns how it was refused. Fails if any command is
    answered. With TLS 1.3 the client's side of the handshake may complete
    before the server has checked its certificate: the refusal then arrives
    as an alert on the first read."""
    try:
        with TlsAdminClient(s.remote, certs, client) as c:
            answer = c.cmd("show info")
    except ssl.SSLError as e:
        return f"TLS: {e.reason or e}"
    except (ConnectionError, EOFError, BrokenPipeError) as e:
        return f"closed: {e!r}"
    raise AssertionError(f"a refused client got an answer: {answer!r}")


# ---------------------------------------------------------------------------
# Tests


def test_allowed_client_runs_commands_and_changes_targets(served, backend, certs):
    s = served
    with TlsAdminClient(s.remote, certs, certs.by_cn) as c:
        assert c.sock.version() in ("TLSv1.3", "TLSv1.2")
        info = parse_fields(c.cmd("show info"))
        assert info["pid"] == str(s.daemon.pid)
        assert str(json.loads(c.cmd("json show info"))["pid"]) == str(s.daemon.pid)
        # Several commands in one write are answered in order.
        c.send_raw(b"help\nshow info\n")
        assert c.read_answer().splitlines()[0] == "help"
        assert "pid: " in c.read_answer()
        assert c.error("frobnicate").startswith("error: ")
        new = backend(name="added-remotely")
        c.ok(f"add target {new.addr} name remote-1")
        assert new.addr in targets_by_address(c)
    # The change is the daemon's, so the Unix socket sees it too.
    with AdminClient(s.sock) as u:
        assert targets_by_address(u)[new.addr]["name"] == "remote-1"
    assert_still_serving(s)
    out = s.daemon.output()
    assert "remote admin session" in out and "rollout-controller" in out


def test_allowed_by_fingerprint_and_quit_ends_the_session(served, certs):
    with TlsAdminClient(served.remote, certs, certs.by_fingerprint) as c:
        assert parse_fields(c.cmd("show info"))["pid"] == str(served.daemon.pid)
        assert c.cmd("quit") == "bye"
        assert c.at_eof(5), "the session stayed open after quit"


def test_client_without_certificate_is_refused(served, certs):
    how = refusal(served, certs, None)
    # The alert says why (TLS 1.3: certificate required), since the daemon
    # lets it reach the client before it closes.
    assert "CERTIFICATE_REQUIRED" in how or "HANDSHAKE_FAILURE" in how, how
    wait_logged(served.daemon, "remote admin connection refused", "peer did not return a certificate")
    assert_still_serving(served)


def test_client_from_another_ca_is_refused(served, certs):
    """Its CN is on the allow list, but the CA did not sign it: the allow
    list only ever applies to verified certificates."""
    how = refusal(served, certs, certs.stranger)
    assert "UNKNOWN_CA" in how, how
    wait_logged(served.daemon, "remote admin connection refused", "certificate verify failed")
    assert_still_serving(served)


def test_trusted_but_unlisted_client_gets_an_error_and_is_closed(served, certs):
    with TlsAdminClient(served.remote, certs, certs.unlisted) as c:
        assert c.read_answer() == "error: certificate not allowed"
        assert c.at_eof(5), "a client not on the allow list was left connected"
    wait_logged(served.daemon, "remote admin connection refused", "CN=intruder", "not on admin.remote.allow")
    assert_still_serving(served)


def test_refusals_do_not_disturb_an_open_session(served, certs):
    """An allowed session stays usable while others are refused around it."""
    with TlsAdminClient(served.remote, certs, certs.by_cn) as good:
        assert "pid: " in good.cmd("show info")
        for _ in range(3):
            refusal(served, certs, None)
            refusal(served, certs, certs.stranger)
            with TlsAdminClient(served.remote, certs, certs.unlisted) as c:
                assert c.read_answer() == "error: certificate not allowed"
            assert "pid: " in good.cmd("show info")
    assert_still_serving(served)


def test_silent_client_is_closed_after_the_handshake_timeout(served, certs):
    """A TCP client that never starts TLS cannot hold a slot forever, and
    does not hold up anyone else meanwhile."""
    with socket.create_connection(served.remote, timeout=5) as silent:
        with TlsAdminClient(served.remote, certs, certs.by_cn) as c:
            assert "pid: " in c.cmd("show info")
        how, waited = wait_closed(silent, HANDSHAKE_TIMEOUT + 5)
        assert waited < HANDSHAKE_TIMEOUT + 3, f"closed after {waited:.1f}s"
    wait_logged(served.daemon, "remote admin connection refused", "no TLS handshake within 10 s")
    assert_still_serving(served)


def test_long_line_is_refused_and_the_session_goes_on(served, certs):
    with TlsAdminClient(served.remote, certs, certs.by_cn) as c:
        c.send_raw(b"x" * 5000 + b"\n")
        assert c.read_answer() == "error: line longer than 4096 bytes; discarded"
        assert "pid: " in c.cmd("show info")


def test_empty_allow_list_refuses_everyone(run_stickyd, backend, tmp_path, certs):
    b = backend()
    listen = fmt_addr(LOOPBACK, free_port())
    port = free_port()
    cfg = write_config(tmp_path, listen, [b.addr], remote_settings(certs, port, allow=[]))
    d = run_stickyd([], listen=[listen], args=["--config", str(cfg)])
    assert "admin.remote.allow is empty" in d.output()
    with TlsAdminClient((LOOPBACK, port), certs, certs.by_cn) as c:
        assert c.read_answer() == "error: certificate not allowed"


SESSIONS_MAX = 256  # AdminLimits.sessionsMax, per listener


@pytest.mark.parametrize("transport", ["unix", "tls"])
def test_session_limit_is_the_same_on_both_transports(served, certs, transport):
    """256 sessions per listener; the next one is told so, on the Unix
    socket and over TLS alike, and a freed slot takes a new session. The
    other listener is not affected."""
    s = served

    def session():
        return AdminClient(s.sock) if transport == "unix" else TlsAdminClient(s.remote, certs, certs.by_cn)

    other = (lambda: TlsAdminClient(s.remote, certs, certs.by_cn)) if transport == "unix" else (lambda: AdminClient(s.sock))
    held = []
    try:
        for _ in range(SESSIONS_MAX):
            c = session()
            held.append(c)
            # An answer means the daemon has accepted and counted it.
            assert c.cmd("help").startswith("help")
        with session() as extra:
            assert extra.read_answer() == "error: too many admin connections (256); try again"
            assert extra.at_eof(5), "a refused session was left open"
        with other() as c:
            assert "pid: " in c.cmd("show info")
        held.pop().close()

        def admitted() -> bool:
            """The daemon counts the closed session out once it sees the
            close; until then a new one is still told "too many"."""
            try:
                with session() as c:
                    return c.cmd("help").startswith("help")
            except (EOFError, ConnectionError, ssl.SSLError):
                return False

        wait_until(admitted, 10, interval=0.05, what="a session admitted once a slot is free")
    finally:
        for c in held:
            c.close()
    wait_logged(s.daemon, "connection refused", f"too many {'admin' if transport == 'unix' else 'remote admin'} connections")
    assert_still_serving(s)


# ---------------------------------------------------------------------------
# Config errors: the daemon does not start, and says which file and why


@pytest.mark.parametrize("case", ["missing cert", "missing key", "missing client_ca", "cert not PEM",
                                  "key of another cert"])
def test_bad_tls_files_stop_the_start(stickyd_path, tmp_path, certs, case):
    settings = remote_settings(certs, free_port())
    missing = str(tmp_path / "nowhere" / "admin.crt")
    garbage = tmp_path / "garbage.crt"
    garbage.write_text("this is not a certificate\n")
    if case == "missing cert":
        settings["cert"], want = missing, [missing, "admin.remote.cert", "No such file or directory"]
    elif case == "missing key":
        settings["key"], want = missing, [missing, "admin.remote.key", "No such file or directory"]
    elif case == "missing client_ca":
        settings["client_ca"], want = missing, [missing, "admin.remote.client_ca", "No such file or directory"]
    elif case == "cert not PEM":
        settings["cert"], want = str(garbage), [str(garbage), "admin.remote.cert", "cannot load a PEM certificate"]
    else:
        settings["key"] = str(certs.by_cn.key)
        want = [str(certs.by_cn.key), "is not the key of admin.remote.cert"]
    listen = fmt_addr(LOOPBACK, free_port())
    cfg = write_config(tmp_path, listen, ["127.0.0.1:9"], settings)
    p = run([stickyd_path, "--config", cfg, "--admin-socket", tmp_path / "a.sock", "--state-dir", tmp_path / "st"])
    assert_refused(p)
    for fragment in want:
        assert fragment in output(p), f"{fragment!r} not in:\n{output(p)}"


def test_check_config_reports_a_bad_allow_entry_with_its_line(stickyd_path, tmp_path, certs):
    settings = remote_settings(certs, free_port(), allow=["CN=ok", "sha256:12:34"])
    cfg = write_config(tmp_path, fmt_addr(LOOPBACK, free_port()), ["127.0.0.1:9"], settings)
    p = run([stickyd_path, "check-config", cfg])
    assert p.returncode == 1, output(p)
    line = next(i for i, text in enumerate(cfg.read_text().splitlines(), 1) if "allow:" in text)
    assert f"{cfg}:{line}:" in output(p), output(p)
    assert "admin.remote.allow[1] must be sha256:<fingerprint>" in output(p), output(p)


def test_remote_listener_port_in_use_stops_the_start(stickyd_path, tmp_path, certs):
    with socket.socket() as squatter:
        squatter.bind((LOOPBACK, 0))
        squatter.listen(1)
        port = squatter.getsockname()[1]
        cfg = write_config(tmp_path, fmt_addr(LOOPBACK, free_port()), ["127.0.0.1:9"], remote_settings(certs, port))
        p = run([stickyd_path, "--config", cfg, "--admin-socket", tmp_path / "a.sock", "--state-dir", tmp_path / "st"])
    assert_refused(p)
    assert f"admin.remote.listen 127.0.0.1:{port}" in output(p) and "in use" in output(p), output(p)


# ---------------------------------------------------------------------------
# stickyctl --remote: the same CLI over the TLS listener


def ctl(*args, timeout: float = 60.0) -> subprocess.CompletedProcess:
    return subprocess.run([str(stickyctl_bin()), *[str(a) for a in args]], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def remote_args(s: Setup, certs: Certs, client: Cert) -> list:
    return ["--remote", fmt_addr(*s.remote), "--cert", client.crt, "--key", client.key, "--ca", certs.ca.crt]


def test_stickyctl_remote_runs_every_admin_subcommand(served, backend, certs):
    """Every admin subcommand of stickyctl works over mutual TLS, and its
    changes are the daemon's: the Unix socket sees them."""
    s = served
    tls = remote_args(s, certs, certs.by_cn)

    def ok(*args) -> str:
        p = ctl(*args, *tls)
        assert p.returncode == 0, f"stickyctl {' '.join(map(str, args))} exited {p.returncode}:\n{p.stdout}{p.stderr}"
        return p.stdout

    assert parse_fields(ok("show", "info").strip())["pid"] == str(s.daemon.pid)
    assert json.loads(ok("show", "stats", "--json"))["connections_accepted"] >= 0
    new = backend(name="remote-new")
    assert ok("add", new.addr, "--name", "r1", "--weight", "2").startswith("ok: ")
    assert ok("set-weight", new.addr, "3").startswith("ok: ")
    assert ok("maint", new.addr).startswith("ok: ")
    assert ok("ready", new.addr).startswith("ok: ")
    drained = ok("drain", new.addr, "--mode", "sticky", "--timeout", "30s", "--wait", "--quiet")
    assert "drained " + new.addr in drained, drained
    assert ok("ready", new.addr).startswith("ok: ")
    assert new.addr in {t["address"] for t in json.loads(ok("show", "targets", "--json"))["targets"]}
    ok("show", "affinity")
    assert ok("clear-affinity", "--all").startswith("ok: ")
    assert ok("raw", "help").splitlines()[0] == "help"
    # A rollout: replace the configured backend with a fresh one.
    fresh = backend(name="remote-fresh")
    out = ok("replace", s.backend.addr, fresh.addr, "--timeout", "30s", "--quiet")
    assert f"drained {s.backend.addr}" in out, out
    assert ok("remove", new.addr, "--force").startswith("ok: ")
    with AdminClient(s.sock) as u:
        assert set(targets_by_address(u)) == {fresh.addr}
    assert_still_serving(Setup(s.daemon, s.remote, s.sock, fresh))


def test_stickyctl_remote_refusals_have_their_exit_status(served, certs, tmp_path):
    s = served
    # Not on the allow list: the daemon's answer, exit 1 (refused).
    p = ctl("show", "info", *remote_args(s, certs, certs.unlisted))
    assert p.returncode == 1, p
    assert "certificate not allowed" in p.stderr, p.stderr
    # Signed by another CA: the daemon's alert; exit 3 (unreachable).
    p = ctl("show", "info", *remote_args(s, certs, certs.stranger))
    assert p.returncode == 3, p
    assert "unknown ca" in p.stderr, p.stderr
    # The daemon's certificate does not verify against the CA given: exit 3.
    wrong_ca = ["--remote", fmt_addr(*s.remote), "--cert", certs.by_cn.crt, "--key", certs.by_cn.key,
                "--ca", certs.stranger.crt]
    p = ctl("show", "info", *wrong_ca)
    assert p.returncode == 3, p
    assert "certificate verify failed" in p.stderr, p.stderr
    # Nobody listening: exit 3, the address and errno's words.
    closed = fmt_addr(LOOPBACK, free_port())
    p = ctl("show", "info", "--remote", closed, "--cert", certs.by_cn.crt, "--key", certs.by_cn.key,
            "--ca", certs.ca.crt)
    assert p.returncode == 3, p
    assert f"cannot reach stickyd at {closed}: Connection refused" in p.stderr, p.stderr
    # Usage: exit 2, before any connection.
    for args, words in [(["--remote", fmt_addr(*s.remote)], "--remote needs --cert, --key and --ca"),
                        (["--cert", certs.by_cn.crt], "--cert, --key and --ca go with --remote"),
                        ([*remote_args(s, certs, certs.by_cn), "--remote", fmt_addr(*s.remote)], "named twice"),
                        (["--remote", "nowhere", "--cert", "a", "--key", "b", "--ca", "c"], "is not HOST:PORT")]:
        p = ctl("show", "info", *args)
        assert p.returncode == 2, p
        assert words in p.stderr, p.stderr
    missing = tmp_path / "missing.crt"
    p = ctl("show", "info", "--remote", fmt_addr(*s.remote), "--cert", missing, "--key", certs.by_cn.key,
            "--ca", certs.ca.crt)
    assert p.returncode == 2, p
    assert f"--cert {missing}: No such file or directory" in p.stderr, p.stderr
    assert_still_serving(s)


def test_stickyctl_several_instances_mixes_socket_and_remote(served, certs):
    """A repeated target list may mix transports (docs/ADMIN.md, "Several
    instances"): here one daemon through both, so both answers are its."""
    s = served
    p = ctl("show", "info", "--json", *remote_args(s, certs, certs.by_cn), "--socket", s.sock)
    assert p.returncode == 0, p
    docs = [json.loads(line) for line in p.stdout.splitlines()]
    assert [d["instance"] for d in docs] == [s.sock, fmt_addr(*s.remote)], p.stdout
    assert docs[0]["answer"]["pid"] == docs[1]["answer"]["pid"] == str(s.daemon.pid)
    assert_still_serving(s)


def test_stickyctl_remote_upgrade_answers_once_the_successor_serves(served, certs, request):
    """`upgrade` over TLS: the answer is pending until the hand-over is
    decided (as on the Unix socket), and the successor takes the remote
    port over; stickyctl then finds the new pid answering there."""
    s = served
    old = s.daemon
    p = ctl("upgrade", "--timeout", "60", *remote_args(s, certs, certs.by_cn), timeout=120)
    took = re.search(r"upgrade: pid (\d+) took over", p.stdout)
    if took:
        new_pid = int(took.group(1))
        request.addfinalizer(lambda: stop_pid(new_pid))
    old.expect_exit = True
    assert p.returncode == 0, f"{p.stdout}{p.stderr}\n{old.output_tail()}"
    assert took, p.stdout
    assert f"pid {new_pid} answers on {fmt_addr(*s.remote)}" in p.stdout, p.stdout
    assert old.wait(20) == 0, old.output_tail()
    with TlsAdminClient(s.remote, certs, certs.by_cn) as c:
        assert parse_fields(c.cmd("show info"))["pid"] == str(new_pid)
    with connect(old.addr) as c:
        echo_roundtrip(c, b"served by the successor")
