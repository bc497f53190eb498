"""Metrics endpoint, access log and log format, against the real daemon.

Traffic is real (loopback clients from several 127.0.0.x addresses, real
backends), the endpoint is scraped with a real HTTP client (urllib), and the
exposition is parsed and checked against what the test sent. Every wait polls
a condition with a bound.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import urllib.error
import urllib.request

import pytest

from support import (LOOPBACK, connect, echo_handler, free_port, make_sink_then_reply_handler, recv_until_eof,
                     sha256, wait_until)

SETTLE_TIMEOUT = 15.0  # seconds: workers publish at least every few ticks
TRAILER = b"bye\n"
handler = make_sink_then_reply_handler(TRAILER)


def reply_len(sent: bytes) -> int:
    """What make_sink_then_reply_handler sends back for `sent`."""
    return len(f"{len(sent)} {sha256(sent)}\n".encode()) + len(TRAILER)


def exchange(addr: tuple[str, int], source_ip: str, payload: bytes) -> tuple[int, bytes]:
    """One connection from source_ip: send payload, half-close, read the
    reply to EOF. Returns (client port, reply)."""
    s = socket.create_connection(addr, timeout=10, source_address=(source_ip, 0))
    try:
        port = s.getsockname()[1]
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        return port, recv_until_eof(s, limit=1 << 20)
    finally:
        s.close()


# ---------------------------------------------------------------------------
# The exposition


SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def scrape_raw(port: int, path: str = "/metrics"):
    with urllib.request.urlopen(f"http://{LOOPBACK}:{port}{path}", timeout=10) as r:
        return r.status, r.headers.get("Content-Type"), r.read().decode()


def parse(text: str) -> dict[tuple[str, frozenset], float]:
    """{(name, frozenset(labels)): value} for every sample line."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        assert m, f"not an exposition sample line: {line!r}"
        labels = frozenset(LABEL.findall(m.group(2) or ""))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


class Scrape:
    def __init__(self, port: int):
        status, ctype, text = scrape_raw(port)
        assert status == 200
        assert ctype.startswith("text/plain; version=0.0.4"), ctype
        self.text = text
        self.samples = parse(text)

    def sum(self, name: str, **match: str) -> float:
        """The sum of `name` over the samples whose labels include `match`."""
        want = set(match.items())
        return sum(v for (n, labels), v in self.samples.items() if n == name and want <= labels)

    def has(self, name: str, **match: str) -> bool:
        want = set(match.items())
        return any(n == name and want <= labels for (n, labels) in self.samples)


def settle(port: int, predicate, what: str) -> Scrape:
    """Scrapes until predicate(scrape) holds (bounded); returns that scrape."""
    last: list[Scrape] = []

    def check() -> bool:
        last[:] = [Scrape(port)]
        return predicate(last[0])

    try:
        wait_until(check, SETTLE_TIMEOUT, interval=0.1, what=what)
    except TimeoutError as exc:
        raise AssertionError(f"{exc}\nlast scrape:\n{last[0].text if last else '(none)'}") from None
    return last[0]


# ---------------------------------------------------------------------------
# Tests


CLIENT_IPS = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"]
PER_CLIENT = 3


def test_scrape_counts_the_traffic_sent(run_stickyd, backend):
    b1, b2 = backend(handler), backend(handler)
    mport = free_port()
    d = run_stickyd([b1.addr, b2.addr], args=["--metrics-listen", f"{LOOPBACK}:{mport}"])

    up_total = down_total = 0
    n = 0
    for k in range(PER_CLIENT):
        for i, ip in enumerate(CLIENT_IPS):
            payload = os.urandom(1000 + 37 * n)
            _, reply = exchange(d.addr, ip, payload)
            assert len(reply) == reply_len(payload)
            up_total += len(payload)
            down_total += len(reply)
            n += 1
    total = len(CLIENT_IPS) * PER_CLIENT

    # Bytes are counted when a connection closes: wait for all of them.
    s = settle(mport, lambda s: s.sum("stickyd_target_bytes_total", direction="target_to_client") == down_total,
               "bytes target_to_client settle")
    assert s.sum("stickyd_target_bytes_total", direction="client_to_target") == up_total
    assert s.sum("stickyd_target_connections_total") == total
    # Per target: what each backend actually saw.
    assert s.sum("stickyd_target_connections_total", target=b1.addr) == b1.accepted
    assert s.sum("stickyd_target_connections_total", target=b2.addr) == b2.accepted
    assert s.sum("stickyd_connections_accepted_total") == total
    assert s.sum("stickyd_connections_closed_total", reason="done") == total
    # Four client IPs: each first connection misses, the rest hit their pin.
    assert s.sum("stickyd_affinity_misses_total", pool="default") == len(CLIENT_IPS)
    assert s.sum("stickyd_affinity_hits_total", pool="default") == total - len(CLIENT_IPS)
    assert s.sum("stickyd_affinity_entries", pool="default") == len(CLIENT_IPS)
    assert s.sum("stickyd_target_connect_errors_total") == 0
    assert s.sum("stickyd_target_state", target=b1.addr, state="ready") == 1
    assert s.sum("stickyd_target_state", target=b1.addr, state="down") == 0
    assert s.sum("stickyd_target_weight", target=b2.addr) == 1
    assert s.sum("stickyd_loop_iterations_total") > 0
    assert s.sum("stickyd_loop_completions_total") > 0
    assert s.has("stickyd_build_info")

    # Held-open connections show as active, and go when they close.
    held = [connect(d.addr) for _ in range(2)]
    try:
        s = settle(mport, lambda s: s.sum("stickyd_target_connections_active") == 2, "2 active connections")
        assert s.sum("stickyd_connections_active") == 2
    finally:
        for h in held:
            h.close()
    s = settle(mport, lambda s: s.sum("stickyd_connections_active") == 0, "no active connections")
    assert s.sum("stickyd_target_connections_active") == 0
    # Counters stay monotonic across scrapes.
    assert s.sum("stickyd_target_connections_total") == total + 2


def test_bytes_of_open_connections_are_counted_before_they_close(run_stickyd, backend):
    """A long-lived connection (a gRPC channel) shows its bytes while it is
    open, and closing it neither adds them twice nor takes them away."""
    b = backend(echo_handler)
    mport = free_port()
    d = run_stickyd([b.addr], args=["--metrics-listen", f"{LOOPBACK}:{mport}"])
    payload = os.urandom(10_000)
    c = connect(d.addr)
    try:
        c.sendall(payload)
        got = b""
        while len(got) < len(payload):
            chunk = c.recv(65536)
            assert chunk, "echo ended early"
            got += chunk
        assert got == payload
        s = settle(mport, lambda s: s.sum("stickyd_target_bytes_total", direction="client_to_target") == len(payload)
                   and s.sum("stickyd_target_bytes_total", direction="target_to_client") == len(payload),
                   "bytes of the open connection counted")
        assert s.sum("stickyd_target_connections_active") == 1
    finally:
        c.close()
    s = settle(mport, lambda s: s.sum("stickyd_connections_active") == 0, "the connection closed")
    assert s.sum("stickyd_target_bytes_total", direction="client_to_target") == len(payload)
    assert s.sum("stickyd_target_bytes_total", direction="target_to_client") == len(payload)


def test_refused_connect_counts_against_the_dead_target(run_stickyd, backend):
    live = backend(handler)
    dead = f"{LOOPBACK}:{free_port()}"  # nothing listens there: connects are refused
    mport = free_port()
    d = run_stickyd([live.addr, dead], args=["--metrics-listen", f"{LOOPBACK}:{mport}"])
    # Maglev sends some client IPs to the dead target first; their connect
    # is refused and retried on the live one. Bounded: 40 client IPs.
    errors = 0.0
    for i in range(40):
        payload = b"x" * 100
        _, reply = exchange(d.addr, f"127.0.1.{i + 1}", payload)
        assert len(reply) == reply_len(payload), "the retry on the live target must serve the client"
        errors = Scrape(mport).sum("stickyd_target_connect_errors_total", target=dead)
        if errors >= 1:
            break
    assert errors >= 1, "no client was placed on the dead target first"
    s = Scrape(mport)
    assert s.sum("stickyd_target_connect_errors_total", target=live.addr) == 0
    assert s.sum("stickyd_connect_errors_total") == s.sum("stickyd_target_connect_errors_total", target=dead)
    assert s.sum("stickyd_target_connections_total", target=dead) == 0


def test_health_verdicts_show_in_target_state(run_stickyd, backend):
    """A dead target taken down by tcp checks reads as down on the endpoint,
    with its transition counted; the live one stays up and ready."""
    live = backend(handler)
    dead = f"{LOOPBACK}:{free_port()}"
    mport = free_port()
    run_stickyd([live.addr, dead], args=["--metrics-listen", f"{LOOPBACK}:{mport}", "--health", "tcp",
                                         "--health-interval", "200ms", "--health-timeout", "200ms",
                                         "--health-fall", "2"])
    s = settle(mport, lambda s: s.sum("stickyd_target_health_up", target=dead) == 0
               and s.has("stickyd_target_health_up", target=dead), "the dead target reported down")
    assert s.sum("stickyd_target_state", target=dead, state="down") == 1
    assert s.sum("stickyd_target_state", target=dead, state="ready") == 0
    assert s.sum("stickyd_target_health_transitions_total", target=dead) >= 1
    assert s.sum("stickyd_target_health_up", target=live.addr) == 1
    assert s.sum("stickyd_target_state", target=live.addr, state="ready") == 1
    assert s.sum("stickyd_target_health_transitions_total", target=live.addr) == 0


def test_proxy_rejections_are_counted_by_reason(run_stickyd, backend):
    b = backend(handler)
    mport = free_port()
    d = run_stickyd([b.addr], args=["--metrics-listen", f"{LOOPBACK}:{mport}", "--proxy-from", "127.0.0.0/8"])
    good = b"PROXY TCP4 198.51.100.7 127.0.0.1 4000 80\r\n" + b"x" * 100
    _, reply = exchange(d.addr, "127.0.0.2", good)
    assert len(reply) == reply_len(b"x" * 100)
    with connect(d.addr) as c:
        c.sendall(b"GET / HTTP/1.1\r\n\r\n")  # not a PROXY header
        assert recv_until_eof(c) == b""
    s = settle(mport, lambda s: s.sum("stickyd_proxy_rejected_total", reason="bad_signature") == 1,
               "one bad_signature rejection")
    assert s.sum("stickyd_proxy_headers_received_total") == 1
    assert s.sum("stickyd_proxy_rejected_total") == 1
    assert s.sum("stickyd_connections_closed_total", reason="proxy_header") == 1


def test_other_paths_are_not_found(run_stickyd, backend):
    b = backend(handler)
    mport = free_port()
    run_stickyd([b.addr], args=["--metrics-listen", f"{LOOPBACK}:{mport}"])
    with pytest.raises(urllib.error.HTTPError) as e:
        scrape_raw(mport, "/")
    assert e.value.code == 404
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(urllib.request.Request(f"http://{LOOPBACK}:{mport}/metrics", data=b"x", method="POST"),
                               timeout=10)
    assert e.value.code == 405


def test_oversized_request_is_cut(run_stickyd, backend):
    b = backend(handler)
    mport = free_port()
    run_stickyd([b.addr], args=["--metrics-listen", f"{LOOPBACK}:{mport}"])
    s = socket.create_connection((LOOPBACK, mport), timeout=10)
    try:
        request = b"GET /metrics HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: " + b"a" * 20000 + b"\r\n\r\n"
        try:
            s.sendall(request)
        except OSError:
            pass  # the server may close while we are still sending
        try:
            reply = recv_until_eof(s, limit=1 << 20)
        except ConnectionResetError:
            reply = b""
    finally:
        s.close()
    assert b"200 OK" not in reply
    # The endpoint still serves a normal scrape afterwards.
    assert Scrape(mport).has("stickyd_build_info")


def wait_exit(d, timeout: float = 20.0) -> int:
    d.expect_exit = True
    status = d.wait(timeout)
    assert status is not None, f"still running:\n{d.output_tail()}"
    d.stop()
    return status


def test_metrics_address_in_use_is_a_clear_start_error(run_stickyd, backend):
    b = backend(handler)
    taken = socket.create_server((LOOPBACK, 0))
    try:
        port = taken.getsockname()[1]
        d = run_stickyd([b.addr], args=["--metrics-listen", f"{LOOPBACK}:{port}"], wait_ready=False)
        status = wait_exit(d)
    finally:
        taken.close()
    assert status != 0
    out = d.output()
    assert f"metrics.listen {LOOPBACK}:{port}: cannot listen" in out, out
    assert "Address already in use" in out, out
    assert 'msg="ready"' not in out


def test_metrics_address_that_is_not_one_is_refused(run_stickyd, backend):
    b = backend(handler)
    d = run_stickyd([b.addr], args=["--metrics-listen", "localhost:9900"], wait_ready=False)
    assert wait_exit(d) == 1
    assert "--metrics-listen 'localhost:9900' is not an address" in d.output(), d.output()


def test_metrics_key_in_a_config_file(run_stickyd, backend, tmp_path, stickyd_path):
    b = backend(handler)
    mport, lport = free_port(), free_port()
    cfg = tmp_path / "stickyd.yaml"
    cfg.write_text(f"""\
listeners: [ {{ address: {LOOPBACK}:{lport} }} ]
pools: [ {{ name: web, targets: [ {{ address: {b.addr} }} ] }} ]
metrics:
  listen: {LOOPBACK}:{mport}
admin: {{ socket: none }}
state_dir: none
""")
    d = run_stickyd(args=["--config", str(cfg)], listen=[])
    d.listen = [(LOOPBACK, lport)]
    exchange(d.addr, "127.0.0.9", b"hello")
    s = settle(mport, lambda s: s.sum("stickyd_target_connections_total", pool="web") == 1, "one connection in pool web")
    assert s.sum("stickyd_affinity_misses_total", pool="web") == 1


# ---------------------------------------------------------------------------
# Access log

ACCESS_FIELDS = ["ts", "client", "target", "pool", "bytes_up", "bytes_down", "duration_ms", "reason"]
TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def access_lines(path) -> list[dict[str, str]]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    out = []
    for line in text.splitlines():
        fields = [f.split("=", 1) for f in line.split(" ")]
        keys = [k for k, _ in fields]
        # `placement` (log.access_placement) comes last, when asked for.
        assert keys in (ACCESS_FIELDS, ACCESS_FIELDS + ["placement"]), f"fields out of order or missing: {line!r}"
        out.append(dict(fields))
    return out


def test_access_log_writes_one_line_per_closed_connection(run_stickyd, backend, tmp_path):
    b = backend(handler)
    log = tmp_path / "access.log"
    d = run_stickyd([b.addr], args=["--access-log", str(log)])
    sent = {}
    for i, ip in enumerate(CLIENT_IPS + CLIENT_IPS[:1]):
        payload = os.urandom(500 + 111 * i)
        port, reply = exchange(d.addr, ip, payload)
        sent[f"{ip}:{port}"] = (len(payload), len(reply))
    wait_until(lambda: len(access_lines(log)) >= len(sent), SETTLE_TIMEOUT, interval=0.05,
               what=f"{len(sent)} access log lines")
    lines = access_lines(log)
    assert len(lines) == len(sent), lines
    for rec in lines:
        assert TS.match(rec["ts"]), rec
        assert rec["client"] in sent, rec
        up, down = sent[rec["client"]]
        assert int(rec["bytes_up"]) == up, rec
        assert int(rec["bytes_down"]) == down, rec
        assert rec["target"] == b.addr, rec
        assert rec["pool"] == "default", rec
        assert rec["reason"] == "done", rec
        assert int(rec["duration_ms"]) >= 0, rec

    # logrotate: move the file, SIGHUP, and new lines go to a new file.
    rotated = tmp_path / "access.log.1"
    log.rename(rotated)
    d.send_signal(signal.SIGHUP)
    d.wait_for_output(r"access log reopened", 10)
    port, reply = exchange(d.addr, "127.0.0.7", b"after rotation")
    wait_until(lambda: len(access_lines(log)) == 1, SETTLE_TIMEOUT, interval=0.05, what="a line in the new file")
    assert access_lines(log)[0]["client"] == f"127.0.0.7:{port}"
    assert len(access_lines(rotated)) == len(sent), "the rotated file must not get new lines"


def test_access_log_names_no_target_when_connect_fails(run_stickyd, tmp_path):
    dead = f"{LOOPBACK}:{free_port()}"
    log = tmp_path / "access.log"
    d = run_stickyd([dead], args=["--access-log", str(log)])
    s = socket.create_connection(d.addr, timeout=10, source_address=("127.0.0.8", 0))
    try:
        s.settimeout(10)
        try:
            recv_until_eof(s)
        except ConnectionResetError:
            pass
    finally:
        s.close()
    wait_until(lambda: len(access_lines(log)) == 1, SETTLE_TIMEOUT, interval=0.05, what="one access log line")
    rec = access_lines(log)[0]
    assert rec["reason"] in ("connect_failed", "no_target"), rec
    assert rec["bytes_up"] == "0" and rec["bytes_down"] == "0", rec


def test_access_log_placement_says_hit_miss_and_repin(stickyd_path, backend, tmp_path, request):
    """log.access_placement: a new client's line says miss, its return hit,
    and after its target is drained (strict) repin(target_drained)."""
    from admin_support import admin
    from conftest import REPO, Stickyd
    a, b = backend(handler), backend(handler)
    port = free_port()
    log = tmp_path / "access.log"
    sock = tmp_path / "admin.sock"
    cfg = tmp_path / "stickyd.yaml"
    cfg.write_text(f"listeners: [ {{ address: {LOOPBACK}:{port} }} ]\n"
                   f"pools: [ {{ name: web, targets: [ {{ address: {a.addr} }}, {{ address: {b.addr} }} ] }} ]\n"
                   f"admin: {{ socket: {sock} }}\nstate_dir: {tmp_path / 'state'}\n"
                   f"log: {{ access: {log}, access_placement: true }}\n")
    d = Stickyd([str(stickyd_path), "--config", str(cfg)], "stickyd(placement)", tmp_path / "stickyd.log",
                cwd=str(REPO))
    d.listen = [(LOOPBACK, port)]
    request.addfinalizer(d.stop)
    d.wait_for_output(r"\bready\b", 20)
    for _ in range(2):
        exchange(d.addr, "127.0.0.9", b"x")
    wait_until(lambda: len(access_lines(log)) == 2, SETTLE_TIMEOUT, interval=0.05, what="two access log lines")
    first, second = access_lines(log)
    assert (first["placement"], second["placement"]) == ("miss", "hit"), (first, second)
    assert first["target"] == second["target"]
    assert admin(sock, f"drain target {first['target']}").startswith("ok")
    exchange(d.addr, "127.0.0.9", b"x")
    wait_until(lambda: len(access_lines(log)) == 3, SETTLE_TIMEOUT, interval=0.05, what="a third line")
    third = access_lines(log)[2]
    assert third["placement"] == "repin(target_drained)", third
    assert third["target"] != first["target"]


def test_bad_access_log_path_is_refused(run_stickyd, backend):
    b = backend(handler)
    d = run_stickyd([b.addr], args=["--access-log", "relative.log"], wait_ready=False)
    assert wait_exit(d) == 1
    assert "--access-log must be none, stderr or an absolute file path, got 'relative.log'" in d.output()


# ---------------------------------------------------------------------------
# The daemon's own log lines


def test_text_log_lines_are_logfmt_with_a_timestamp(run_stickyd, backend):
    b = backend(handler)
    d = run_stickyd([b.addr])
    line = d.wait_for_output(r'^.*msg="ready".*$', 10).group(0)
    assert re.match(r'^ts=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z level=info msg="ready" ', line), line
    assert re.search(r"\blisteners=\S+", line), line


def test_json_log_lines_parse(run_stickyd, backend):
    b = backend(handler)
    d = run_stickyd([b.addr], args=["--log-format", "json"])
    line = d.wait_for_output(r'^\{.*"msg":"ready".*$', 10).group(0)
    obj = json.loads(line)
    assert obj["level"] == "info"
    assert obj["msg"] == "ready"
    assert "ts" in obj
    assert obj["workers"].isdigit()


def test_journal_stream_drops_the_timestamp(run_stickyd, backend, tmp_path, monkeypatch):
    b = backend(handler)
    # The daemon's stderr is this file (conftest names it stickyd-1.log);
    # JOURNAL_STREAM names a stream by device and inode, as systemd does.
    out = tmp_path / "stickyd-1.log"
    out.write_bytes(b"")
    st = os.stat(out)
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
    d = run_stickyd([b.addr])
    line = d.wait_for_output(r'^.*msg="ready".*$', 10).group(0)
    assert line.startswith('<6>level=info msg="ready" '), line
    assert "ts=" not in line
