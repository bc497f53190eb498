"""SIGHUP reload: targets diffed (added, drained then removed, reweighted),
timeouts applied, and a bad file leaves the running config in place."""

from __future__ import annotations

import json
import signal
import socket

from conftest import REPO, Stickyd
from admin_support import Clients, admin, landings, make_named_handler
from support import LOOPBACK, echo_handler, fmt_addr, free_port, wait_until


def targets(path) -> dict:
    return {t["address"]: t for t in json.loads(admin(path, "json show targets"))["targets"]}


def config(port: int, targets_: list[tuple[str, int]], idle: str = "300s",
           drain: str = "timeout: 2s, grace: 1s") -> str:
    lines = [f"listeners: [ {{ address: {fmt_addr(LOOPBACK, port)}, pool: web }} ]",
             "pools:", "  - name: web", "    targets:"]
    lines += [f"      - {{ address: {a}, weight: {w} }}" for a, w in targets_]
    lines += [f"drain: {{ {drain} }}", f"timeouts: {{ idle: {idle} }}"]
    return "\n".join(lines) + "\n"


def test_sighup_applies_target_changes_and_survives_a_bad_file(stickyd_path, backend, tmp_path, request):
    a, b, c = (backend(echo_handler) for _ in range(3))
    port = free_port()
    cfg = tmp_path / "stickyd.yaml"
    cfg.write_text(config(port, [(a.addr, 1), (b.addr, 1)]))
    sock = tmp_path / "admin.sock"
    argv = [str(stickyd_path), "--config", str(cfg), "--admin-socket", str(sock),
            "--state-dir", str(tmp_path / "state")]
    d = Stickyd(argv, "stickyd(reload)", tmp_path / "stickyd.log", cwd=str(REPO))
    d.listen = [(LOOPBACK, port)]
    request.addfinalizer(d.stop)
    d.wait_for_output("ready", timeout=20)
    assert set(targets(sock)) == {a.addr, b.addr}

    # Drop b, add c, reweight a, shorten the idle timeout.
    cfg.write_text(config(port, [(a.addr, 2), (c.addr, 1)], idle="60s"))
    d.send_signal(signal.SIGHUP)
    d.wait_for_output("reloaded", timeout=10)
    t = targets(sock)
    assert t[c.addr]["state"] == "ready"
    assert t[a.addr]["weight"] == 2
    assert t[b.addr]["state"] == "draining", t[b.addr]

    # b leaves the pool after its drain deadline (2 s) and grace (1 s).
    wait_until(lambda: b.addr not in targets(sock), timeout=10, what="dropped target removed after its drain")

    # A broken file is refused; the running config stays and traffic flows.
    cfg.write_text("listeners: [ oops\n")
    d.send_signal(signal.SIGHUP)
    d.wait_for_output("reload refused", timeout=10)
    assert set(targets(sock)) == {a.addr, c.addr}
    with socket.create_connection((LOOPBACK, port), timeout=5) as s:
        s.sendall(b"still here\n")
        assert s.recv(11) == b"still here\n"

    # Adding a pool needs a restart: refused as a whole, nothing applied.
    cfg.write_text(config(port, [(a.addr, 3), (c.addr, 1)]).replace(
        "drain:", f"  - name: other\n    targets: [ {{ address: {b.addr} }} ]\ndrain:"))
    d.send_signal(signal.SIGHUP)
    wait_until(lambda: d.output().count("reload refused") >= 2, timeout=10, what="second refusal")
    assert "adding or removing a pool needs a restart" in d.output()
    assert targets(sock)[a.addr]["weight"] == 2
    assert d.alive()


def test_sighup_applies_max_connections_and_connect_retries(stickyd_path, backend, tmp_path, request):
    """A lower max_connections holds new clients back (they are served as
    others close, none is cut); one above the start value needs a restart."""
    a = backend(echo_handler)
    port = free_port()
    cfg = tmp_path / "stickyd.yaml"

    def write(max_conns: int, retries: int) -> None:
        cfg.write_text(config(port, [(a.addr, 1)]) + "workers: 1\n"
                       + f"limits: {{ max_connections: {max_conns} }}\nconnect_retries: {retries}\n")

    write(4, 2)
    sock = tmp_path / "admin.sock"
    argv = [str(stickyd_path), "--config", str(cfg), "--admin-socket", str(sock), "--state-dir", "none"]
    d = Stickyd(argv, "stickyd(reload-limits)", tmp_path / "stickyd.log", cwd=str(REPO))
    d.listen = [(LOOPBACK, port)]
    request.addfinalizer(d.stop)
    d.wait_for_output("ready", timeout=20)

    write(2, 0)
    d.send_signal(signal.SIGHUP)
    d.wait_for_output("reloaded", timeout=10)
    assert "max_connections and connect_retries applied" in d.output()

    held = [socket.create_connection((LOOPBACK, port), timeout=5) for _ in range(2)]
    try:
        for s in held:
            s.sendall(b"x")
            assert s.recv(1) == b"x"
        third = socket.create_connection((LOOPBACK, port), timeout=5)
        try:
            third.sendall(b"y")
            third.settimeout(0.5)
            try:
                early = third.recv(1)
            except socket.timeout:
                early = b""
            assert early == b"", "a third connection was served over max_connections 2"
            # One closes: the waiting client is served, not dropped.
            held.pop().close()
            third.settimeout(5)
            assert third.recv(1) == b"y"
        finally:
            third.close()
    finally:
        for s in held:
            s.close()

    write(8, 0)
    d.send_signal(signal.SIGHUP)
    wait_until(lambda: d.output().count("reloaded") >= 2, timeout=10, what="second reload")
    assert "max_connections above 4, the value at start" in d.output()


def test_a_target_put_back_is_ready_and_an_admin_drain_stays(stickyd_path, backend, tmp_path, request):
    """The file is the desired set (docs/CONFIG.md, "Reload and restart:
    the rules"): a target a reload dropped and the next reload puts back is
    ready and takes new clients; one an admin command drained stays
    drained, through reloads and a restart."""
    servers = {n: backend(make_named_handler(n), name=n) for n in "abc"}
    addr = {n: s.addr for n, s in servers.items()}
    port = free_port()
    cfg = tmp_path / "stickyd.yaml"
    sock = tmp_path / "admin.sock"
    argv = [str(stickyd_path), "--config", str(cfg), "--admin-socket", str(sock),
            "--state-dir", str(tmp_path / "state")]

    def write(names: str) -> None:
        # A drain long enough that a dropped target is still leaving when it is put back.
        cfg.write_text(config(port, [(addr[n], 1) for n in names], drain="timeout: 60s, grace: 1s"))

    def start(label: str) -> Stickyd:
        d = Stickyd(argv, f"stickyd({label})", tmp_path / f"{label}.log", cwd=str(REPO))
        d.listen = [(LOOPBACK, port)]
        request.addfinalizer(d.stop)
        # The ready line itself: a restart's warning also says "it is ready".
        d.wait_for_output(r'msg="ready"', timeout=20)
        return d

    def reload(d: Stickyd, names: str) -> str:
        """Reloads with `names` in the file; returns the reload's log line."""
        before = d.output().count("msg=\"reloaded\"")
        write(names)
        d.send_signal(signal.SIGHUP)
        wait_until(lambda: d.output().count("msg=\"reloaded\"") > before, 10, what="the reload's log line")
        return [line for line in d.output().splitlines() if "msg=\"reloaded\"" in line][-1]

    def states() -> dict:
        return {n: targets(sock)[addr[n]]["state"] for n in "abc" if addr[n] in targets(sock)}

    clients = Clients()
    write("abc")
    d = start("first")
    assert admin(sock, f"drain target {addr['b']} timeout 10m").startswith("ok: draining")

    line = reload(d, "ab")
    assert "draining 1," in line, line
    assert states() == {"a": "ready", "b": "draining", "c": "draining"}
    t = targets(sock)
    assert (t[addr["b"]]["drain_by"], t[addr["c"]]["drain_by"]) == ("admin", "reload")
    assert "leaving" not in t[addr["b"]] and t[addr["c"]]["leaving"] is True
    assert "is leaving pool 'web'" in admin(sock, f"ready target {addr['c']}")

    line = reload(d, "abc")
    assert "restored 1" in line, line
    assert states() == {"a": "ready", "b": "draining", "c": "ready"}, "c is back; b is the operator's"
    landed = landings(d, clients, 24)
    assert "c" in landed and "b" not in landed, landed

    # Dropped again, then a restart with c back in the file: ready, and b
    # still drained by the operator.
    assert "draining 1," in reload(d, "ab")
    assert states()["c"] == "draining"
    assert d.stop() == 0
    write("abc")
    d = start("restarted")
    assert f"{addr['c']} is in the config again" in d.output(), d.output_tail()
    assert states() == {"a": "ready", "b": "draining", "c": "ready"}
    landed = landings(d, clients, 24)
    assert "c" in landed and "b" not in landed, landed
    # And b stays drained through one more reload that lists it.
    assert "restored 0" in reload(d, "abc")
    assert states()["b"] == "draining"
