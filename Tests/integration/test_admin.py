"""The admin socket against a real daemon: every command and its visible
effect on traffic, bad input, many clients and permissions (persistence is
in test_admin_persistence.py).

Clients are told apart by their source address: the affinity key is the
client IP, and every 127.0.0.0/8 address is local, so a socket bound to
127.0.x.y before connect is a client of its own. Backends announce their
name on connect, so a test can see where each connection went.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import stat
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from admin_support import (TCP_CLOSE, AdminClient, Clients, admin, connect_from, echo_check, flag,
                           landings, make_named_handler, parse_fields, parse_table, sock_path, target_of,
                           targets_by_address, tcp_state)
from support import LOOPBACK, fmt_addr, free_port, wait_closed, wait_until

SYNOPSIS = [
    "help",
    "show info",
    "show stats",
    "show targets [<pool>]",
    "add target [<pool>] <addr:port> [weight <n>] [name <name>]",
    "set target [<pool>] <addr:port> weight <n>",
    "drain target [<pool>] <addr:port> [mode strict|sticky] [timeout <duration>]",
    "ready target [<pool>] <addr:port>",
    "maint target [<pool>] <addr:port>",
    "remove target [<pool>] <addr:port> [force]",
    "show affinity [<pool>] [<ip>] [limit <n>]",
    "clear affinity [<pool>] <ip> | target <addr:port> | all",
    "upgrade [<binary>]",
    "quit",
]

SEARCH_MAX = 60  # fresh clients tried when looking for one that lands on a given target


def start_named(run_stickyd, backend, names, hold_after_eof: float = 0.0, **kw):
    """Backends that announce their names, behind one daemon.
    Returns (daemon, {name: server}, {name: "ip:port"})."""
    servers = {n: backend(make_named_handler(n, hold_after_eof), name=n) for n in names}
    d = run_stickyd([s.addr for s in servers.values()], **kw)
    return d, servers, {n: s.addr for n, s in servers.items()}


def find_client_on(name: str, d, clients: Clients, keep_open: bool = False):
    """A fresh client whose first connection lands on backend `name`
    (bounded search). Returns (ip, open socket or None)."""
    seen = []
    for _ in range(SEARCH_MAX):
        ip = clients.fresh()
        s, got = connect_from(ip, d.addr)
        if got == name:
            if keep_open:
                return ip, s
            s.close()
            return ip, None
        s.close()
        seen.append(got)
    raise AssertionError(f"no new client landed on {name} in {SEARCH_MAX} tries: {seen}")


def duration_ms(text: str) -> int:
    """The daemon's duration text ("1996ms", "2s", "10m") in milliseconds."""
    for unit, scale in [("ms", 1), ("s", 1000), ("m", 60_000), ("h", 3_600_000), ("d", 86_400_000)]:
        if text.endswith(unit) and text[:-len(unit)].isdigit():
            return int(text[:-len(unit)]) * scale
    raise AssertionError(f"not a duration: {text!r}")


def wait_connections(c: AdminClient, address: str, want: int, timeout: float = 5.0) -> None:
    wait_until(lambda: targets_by_address(c)[address]["connections"] == want, timeout,
               interval=0.05, what=f"{address} has {want} open connection(s)")


# ---------------------------------------------------------------------------
# Every command


def test_help_info_stats_targets(run_stickyd, backend):
    d, servers, addr = start_named(run_stickyd, backend, ["a", "b"])
    clients = Clients()
    for _ in range(3):
        s, _name = connect_from(clients.fresh(), d.addr)
        with s:
            echo_check(s, b"x" * 1000)
    with AdminClient(sock_path(d)) as c:
        assert c.cmd("help").splitlines() == SYNOPSIS
        assert c.json("help") == {"commands": SYNOPSIS}

        info = parse_fields(c.cmd("show info"))
        assert info["pid"] == str(d.pid)
        assert info["targets"] == "2" and info["pools"] == "1"
        assert info["state_file"] == os.path.join(flag(d, "--state-dir"), "state.json")
        assert info["state_file_error"] == "none"
        assert int(info["workers"]) >= 1
        jinfo = c.json("show info")
        assert set(jinfo) == set(info), "text and JSON show info differ in fields"
        assert jinfo["pid"] == str(d.pid)

        def stats_settled() -> bool:
            st = parse_fields(c.cmd("show stats"))
            return (int(st["connections_accepted"]) == 3 and int(st["connections_active"]) == 0
                    and int(st["bytes_client_to_target"]) == 3000)

        wait_until(stats_settled, 5, interval=0.05, what="show stats counts the 3 connections")
        jstats = c.json("show stats")
        assert jstats["connections_accepted"] == 3
        assert jstats["affinity_entries"] == 3
        assert jstats["affinity_misses"] == 3
        assert all(isinstance(v, int) for v in jstats.values())

        rows = parse_table(c.cmd("show targets"))
        assert list(rows[0]) == ["POOL", "ADDRESS", "NAME", "STATE", "WEIGHT", "CONNS", "AFFINITY",
                                 "TOTAL", "BYTES_IN", "BYTES_OUT", "DRAIN_LEFT", "HEALTH", "HEALTH_CHANGES"]
        # No checks in quick mode by default, and nothing failed: all up.
        assert all(r["HEALTH"] == "up" and r["HEALTH_CHANGES"] == "0" for r in rows)
        assert {r["ADDRESS"] for r in rows} == set(addr.values())
        assert all(r["STATE"] == "ready" and r["WEIGHT"] == "1" and r["DRAIN_LEFT"] == "-" for r in rows)
        assert sum(int(r["TOTAL"]) for r in rows) == 3
        assert sum(int(r["AFFINITY"]) for r in rows) == 3
        assert {r["ADDRESS"] for r in parse_table(c.cmd("show targets default"))} == set(addr.values())
        targets = c.json("show targets")["targets"]
        assert {t["address"] for t in targets} == set(addr.values())
        for t in targets:
            assert t["pool"] == "default" and t["state"] == "ready" and t["weight"] == 1
            assert t["origin"] == "config"
            assert "drain_mode" not in t
        assert sum(t["bytes_in"] for t in targets) == 3000
        assert sum(t["bytes_out"] for t in targets) == 3000 + sum(len(n) + 1 for n in ["a"] * 3)


def test_add_target_takes_new_clients(run_stickyd, backend):
    d, servers, addr = start_named(run_stickyd, backend, ["a"])
    b = backend(make_named_handler("b"), name="b")
    clients = Clients()
    pinned = [clients.fresh() for _ in range(5)]
    assert [target_of(ip, d.addr) for ip in pinned] == ["a"] * 5
    with AdminClient(sock_path(d)) as c:
        assert c.ok(f"add target {b.addr} weight 1 name b") == f"ok: added {b.addr}"
        t = targets_by_address(c)[b.addr]
        assert (t["name"], t["weight"], t["state"], t["origin"]) == ("b", 1, "ready", "runtime")
        # Clients already pinned stay where they are: adding is no reason to move.
        assert [target_of(ip, d.addr) for ip in pinned] == ["a"] * 5
        # New clients reach the new target.
        _ip, _ = find_client_on("b", d, clients)
        assert "already in pool" in c.error(f"add target {b.addr}")
        assert "already in pool" in c.error(f"add target {addr['a']} name x")
        assert "named 'b'" in c.error("add target 127.0.0.1:9 name b")
        assert "no pool named" in c.error("add target other 127.0.0.1:9")
        ok = c.json("add target default 127.0.0.1:9 weight 0 name spare")
        assert ok == {"result": "ok", "message": "added 127.0.0.1:9"}
        assert targets_by_address(c, "default")["127.0.0.1:9"]["weight"] == 0


def test_set_weight_steers_new_clients(run_stickyd, backend):
    d, servers, addr = start_named(run_stickyd, backend, ["a", "b"])
    clients = Clients()
    with AdminClient(sock_path(d)) as c:
        on_b, _ = find_client_on("b", d, clients)
        assert c.ok(f"set target {addr['b']} weight 0") == f"ok: weight of {addr['b']} set to 0"
        assert targets_by_address(c)[addr["b"]]["weight"] == 0
        assert landings(d, clients, 15) == ["a"] * 15
        # Weight 0 takes no new clients; a client already pinned there stays.
        assert target_of(on_b, d.addr) == "b"
        # The last target with weight cannot go to 0.
        assert "refusing weight 0" in c.error(f"set target {addr['a']} weight 0")
        c.ok(f"set target default {addr['b']} weight 5")
        c.ok(f"set target {addr['a']} weight 0")
        assert landings(d, clients, 15) == ["b"] * 15
        for bad in ["weight 10001", "weight -1", "weight x", "weight", "wait 3"]:
            c.error(f"set target {addr['a']} {bad}")
        assert "no target 127.0.0.1:9" in c.error("set target 127.0.0.1:9 weight 2")


def drain_config(tmp_path: Path, listen: str, targets: dict, grace: str) -> Path:
    lines = [f"listeners:\n  - address: {listen}\n", "pools:\n  - name: default\n    targets:\n"]
    for name, address in targets.items():
        lines.append(f"      - {{ address: {address}, name: {name} }}\n")
    lines.append(f"drain: {{ grace: {grace} }}\n")
    path = tmp_path / "drain.yaml"
    path.write_text("".join(lines))
    return path


def test_drain_strict_repins_then_closes_at_deadline(run_stickyd, backend, tmp_path):
    """Strict drain: no new clients; a pinned client moves on its next
    connection; its open connection runs until the deadline, then gets a FIN,
    and a reset after drain.grace (1 s here) if it is still open."""
    # Backend a holds its side open after the FIN, so the reset is visible.
    a = backend(make_named_handler("a", hold_after_eof=15), name="a")
    b = backend(make_named_handler("b"), name="b")
    listen = fmt_addr(LOOPBACK, free_port())
    cfg = drain_config(tmp_path, listen, {"a": a.addr, "b": b.addr}, grace="1s")
    d = run_stickyd([], listen=[listen], args=["--config", str(cfg)])
    clients = Clients()
    x, conn = find_client_on("a", d, clients, keep_open=True)
    with conn, AdminClient(sock_path(d)) as c:
        echo_check(conn, b"before the drain")
        t0 = time.monotonic()
        answer = c.ok(f"drain target {a.addr} mode strict timeout 2s")
        assert answer == f"ok: draining {a.addr} (mode strict, deadline in 2s)"
        t = targets_by_address(c)[a.addr]
        assert t["state"] == "draining" and t["drain_mode"] == "strict"
        assert 0 < t["drain_remaining_ms"] <= 2000 and t["drain_expired"] is False
        assert t["connections"] == 1
        row = {r["ADDRESS"]: r for r in parse_table(c.cmd("show targets"))}[a.addr]
        assert row["STATE"] == "draining(strict)" and 0 < duration_ms(row["DRAIN_LEFT"]) <= 2000

        # The open connection keeps working; the pinned client's next
        # connection goes elsewhere and it is pinned there now.
        echo_check(conn, b"during the drain")
        assert target_of(x, d.addr) == "b"
        pins = c.json(f"show affinity {x}")["entries"]
        assert [(p["client"], p["target"]) for p in pins] == [(x, b.addr)]
        assert landings(d, clients, 10) == ["b"] * 10
        assert time.monotonic() - t0 < 1.8, "the checks before the deadline took too long to mean anything"
        echo_check(conn, b"still before the deadline")

        # At the deadline: FIN (EOF for the client), then a reset after the grace.
        how, _ = wait_closed(conn, timeout=6)
        fin_at = time.monotonic() - t0
        assert how == "eof", f"the deadline closed the connection with a {how}, not a FIN"
        assert fin_at >= 1.8, f"closed {fin_at:.2f}s after a 2s drain started"
        wait_until(lambda: tcp_state(conn) == TCP_CLOSE, 5, what="reset after the grace")
        rst_after_fin = time.monotonic() - t0 - fin_at
        assert 0.7 <= rst_after_fin <= 3.5, f"reset {rst_after_fin:.2f}s after the FIN (grace 1s)"
        a.wait_for(lambda s: any(r.error == "reset" for r in s.records), 5, "the backend side reset too")

        t = targets_by_address(c)[a.addr]
        assert t["drain_expired"] is True and t["drain_remaining_ms"] == 0
        assert {r["ADDRESS"]: r for r in parse_table(c.cmd("show targets"))}[a.addr]["DRAIN_LEFT"] == "expired"
        wait_connections(c, a.addr, 0)
        st = c.json("show stats")
        assert st["drain_deadline_cuts"] == 1, st
        assert st["affinity_moves_target_drained"] >= 1, st
        # Drained and empty: it can go without force.
        assert c.ok(f"remove target {a.addr}") == f"ok: removed {a.addr}"


def test_drain_sticky_keeps_pinned_clients_then_ready(run_stickyd, backend):
    d, servers, addr = start_named(run_stickyd, backend, ["a", "b"])
    clients = Clients()
    with AdminClient(sock_path(d)) as c:
        x, _ = find_client_on("a", d, clients)
        y, conn = find_client_on("a", d, clients, keep_open=True)
        with conn:
            answer = c.ok(f"drain target {addr['a']} mode sticky timeout 10m")
            assert answer == f"ok: draining {addr['a']} (mode sticky, deadline in 10m)"
            # Pinned clients still go there; new clients do not.
            assert [target_of(x, d.addr) for _ in range(3)] == ["a"] * 3
            assert target_of(y, d.addr) == "a"
            assert landings(d, clients, 10) == ["b"] * 10
            echo_check(conn, b"sticky drain leaves this alone")
            t = targets_by_address(c)[addr["a"]]
            assert t["state"] == "draining" and t["drain_mode"] == "sticky"
            assert 590_000 < t["drain_remaining_ms"] <= 600_000
            row = {r["ADDRESS"]: r for r in parse_table(c.cmd("show targets"))}[addr["a"]]
            assert row["STATE"] == "draining(sticky)"
            assert 590_000 < duration_ms(row["DRAIN_LEFT"]) <= 600_000

            # ready ends the drain: the target takes new clients again.
            assert c.ok(f"ready target {addr['a']}") == f"ok: {addr['a']} is ready"
            t = targets_by_address(c)[addr["a"]]
            assert t["state"] == "ready" and "drain_mode" not in t and "drain_remaining_ms" not in t
            find_client_on("a", d, clients)
            assert target_of(x, d.addr) == "a"
            echo_check(conn, b"after ready")
        # Drain with the defaults: strict, 60 s (the seed's NLB timeout).
        assert c.ok(f"drain target {addr['b']}") == f"ok: draining {addr['b']} (mode strict, deadline in 1m)"
        for bad in ["mode gentle", "timeout 30", "timeout 0s", "timeout", "mode", "now"]:
            c.error(f"drain target {addr['b']} {bad}")
        assert "no target" in c.error("drain target 127.0.0.1:9")


def test_maint_moves_pinned_clients_and_ready_restores(run_stickyd, backend):
    d, servers, addr = start_named(run_stickyd, backend, ["a", "b"])
    clients = Clients()
    with AdminClient(sock_path(d)) as c:
        x, conn = find_client_on("a", d, clients, keep_open=True)
        with conn:
            assert c.ok(f"maint target {addr['a']}") == f"ok: {addr['a']} is in maintenance"
            assert targets_by_address(c)[addr["a"]]["state"] == "maint"
            assert {r["ADDRESS"]: r for r in parse_table(c.cmd("show targets"))}[addr["a"]]["STATE"] == "maint"
            # Open connections are left alone; new ones, pinned or not, go elsewhere.
            echo_check(conn, b"maint does not cut")
            assert target_of(x, d.addr) == "b"
            assert landings(d, clients, 10) == ["b"] * 10
            st = c.json("show stats")
            assert st["affinity_moves_target_maint"] >= 1, st
            c.ok(f"ready target default {addr['a']}")
            assert targets_by_address(c)[addr["a"]]["state"] == "ready"
            find_client_on("a", d, clients)
            # x was re-pinned to b, and b is fine: it stays there.
            assert target_of(x, d.addr) == "b"
        assert "no target" in c.error("maint target 127.0.0.1:9")
        assert "no target" in c.error("ready target 127.0.0.1:9")


def test_remove_refused_while_connections_open(run_stickyd, backend):
    d, servers, addr = start_named(run_stickyd, backend, ["a", "b", "c"])
    clients = Clients()
    with AdminClient(sock_path(d)) as c:
        x, conn = find_client_on("a", d, clients, keep_open=True)
        with conn:
            err = c.error(f"remove target {addr['a']}")
            assert "1 connection" in err and "force" in err, err
            echo_check(conn, b"refused remove leaves it alone")
            assert addr["a"] in targets_by_address(c)
        wait_connections(c, addr["a"], 0)
        assert c.ok(f"remove target {addr['a']}") == f"ok: removed {addr['a']}"
        assert addr["a"] not in targets_by_address(c)
        assert target_of(x, d.addr) in ("b", "c")
        assert all(t != "a" for t in landings(d, clients, 10))

        y, conn = find_client_on("b", d, clients, keep_open=True)
        with conn:
            answer = c.ok(f"remove target default {addr['b']} force")
            assert answer == f"ok: removed {addr['b']}; 1 connection(s) reset"
            wait_closed(conn, timeout=5)
        assert target_of(y, d.addr) == "c"
        assert list(targets_by_address(c)) == [addr["c"]]
        assert "no target" in c.error(f"remove target {addr['a']}")
        c.error(f"remove target {addr['c']} now")


def test_show_and_clear_affinity(run_stickyd, backend):
    d, servers, addr = start_named(run_stickyd, backend, ["a", "b"])
    clients = Clients()
    placed = {}
    for _ in range(6):
        ip = clients.fresh()
        placed[ip] = addr[target_of(ip, d.addr)]
    held_ip = clients.fresh()
    held, held_name = connect_from(held_ip, d.addr)
    placed[held_ip] = addr[held_name]
    with held, AdminClient(sock_path(d)) as c:
        def entries(arg: str = "") -> dict:
            return {e["client"]: e for e in c.json(f"show affinity {arg}".strip())["entries"]}

        def settled() -> bool:
            e = entries()
            return e.keys() == placed.keys() and all(v["connections"] == (k == held_ip) for k, v in e.items())

        wait_until(settled, 5, interval=0.05, what="show affinity lists every client, connections settled")
        assert {k: v["target"] for k, v in entries().items()} == placed
        rows = parse_table(c.cmd("show affinity"))
        assert list(rows[0]) == ["POOL", "CLIENT", "TARGET", "CONNS", "IDLE_S", "WORKER"]
        assert {r["CLIENT"]: r["TARGET"] for r in rows} == placed
        first = next(iter(placed))
        assert list(entries(first)) == [first]
        assert list(entries(f"default {first}")) == [first]
        assert len(parse_table(c.cmd("show affinity limit 3"))) == 3
        assert len(entries("default limit 2")) == 2
        assert entries("127.9.9.9") == {}
        assert "no pool named" in c.error("show affinity nopool")
        c.error("show affinity limit 0")
        c.error(f"show affinity {first} {first}x")

        # One client. The answer counts what it removed.
        assert c.ok(f"clear affinity {first}") == (
            "ok: affinity cleared: 1 entry removed (entries with open connections stay until they close)")
        assert first not in entries() and len(entries()) == 6
        # One target: its pins go, except one with a connection open, which
        # is not counted.
        gone_target = placed[held_ip]
        pinned = {ip for ip, t in placed.items() if ip not in (first, held_ip) and t == gone_target}
        answer = c.json(f"clear affinity target {gone_target}")
        assert answer["removed"] == len(pinned), answer
        want = {ip for ip, t in placed.items() if ip != first and (t != gone_target or ip == held_ip)}
        assert set(entries()) == want
        # All: only the pin with an open connection stays; every other pinned
        # client is counted.
        answer = c.json("clear affinity all")
        assert answer["result"] == "ok" and "workers_late" not in answer, answer
        assert answer["removed"] == len(want) - 1, answer
        assert list(entries()) == [held_ip]
        assert c.json("clear affinity all")["removed"] == 0
        held.close()
        wait_until(lambda: c.cmd("clear affinity default all").startswith("ok") and entries() == {}, 5,
                   interval=0.05, what="the last pin cleared once its connection closed")
        c.error("clear affinity")
        c.error("clear affinity target")
        c.error("clear affinity target 127.0.0.1")
        c.error("clear affinity some.where")
        assert "no pool named" in c.error("clear affinity nopool all")


def test_session_many_commands_and_quit(run_stickyd, backend):
    d, servers, addr = start_named(run_stickyd, backend, ["a"])
    with AdminClient(sock_path(d)) as c:
        # Several commands in one write; blank lines get no answer; CRLF is fine.
        c.send_raw(b"show info\n\n   \nfrobnicate\r\njson show targets\r\nhelp\n")
        assert c.read_answer().startswith("version: ")
        assert c.read_answer() == "error: unknown command 'frobnicate'; try 'help'"
        assert json.loads(c.read_answer())["targets"][0]["address"] == addr["a"]
        assert c.read_answer().splitlines() == SYNOPSIS
        # quit: "bye", then the session ends; what follows it is not run.
        c.send_raw(b"quit\nadd target 127.0.0.1:9\n")
        assert c.read_answer() == "bye"
        assert c.at_eof(5), "session still open after quit"
    with AdminClient(sock_path(d)) as c:
        assert c.json("exit") == {"result": "bye"}
        assert c.at_eof(5)
    assert "127.0.0.1:9" not in admin(sock_path(d), "show targets")
    # A client that half-closes after its command (socat at EOF) still gets the answer.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(sock_path(d))
        s.sendall(b"show info\n")
        s.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := s.recv(4096):
            data += chunk
        assert data.startswith(b"version: ") and data.endswith(b"\n\n")


# ---------------------------------------------------------------------------
# Bad input, slow and many clients: each gets its answer; nothing else is disturbed


BAD_ADDRESSES = ["127.0.0.1", "127.0.0.1:0", "127.0.0.1:70000", "300.1.1.1:80", "localhost:80",
                 "::1:80", "[::1]", "010.0.0.1:80", "127.0.0.1:-1", "127.0.0.1:80x"]


def bad_address_lines(bad: str) -> list[str]:
    return [f"add target {bad}", f"add target {bad} weight 2", f"set target {bad} weight 1",
            f"drain target {bad}", f"drain target {bad} mode sticky", f"ready target {bad}",
            f"maint target {bad}", f"remove target {bad}", f"remove target {bad} force",
            f"clear affinity target {bad}"]


def test_bad_address_is_named_in_the_error(run_stickyd, backend):
    """An address that does not parse is called that, by name: not taken for
    a pool name (a pool name cannot hold ':'), and not blamed on the next word."""
    d, servers, addr = start_named(run_stickyd, backend, ["a"])
    wrong = []
    with AdminClient(sock_path(d)) as c:
        for bad in BAD_ADDRESSES:
            for line in bad_address_lines(bad)[:-1]:  # not 'clear affinity target': it says "takes an address"
                err = c.error(line)
                if f"'{bad}'" not in err or "not an address" not in err:
                    wrong.append(f"{line!r} -> {err!r}")
    assert not wrong, f"{len(wrong)} misleading errors, e.g.:\n" + "\n".join(wrong[:8])


def test_bad_input_is_answered_and_disturbs_nothing(run_stickyd, backend):
    d, servers, addr = start_named(run_stickyd, backend, ["a", "b"])
    clients = Clients()
    keep_ip, keep = find_client_on("a", d, clients, keep_open=True)
    path = sock_path(d)
    with keep, AdminClient(path) as c:
        echo_check(keep, b"before")
        # Unknown commands.
        assert c.error("frobnicate") == "error: unknown command 'frobnicate'; try 'help'"
        c.error("show nothing")
        c.error("add")
        c.error("add targets 127.0.0.1:9")
        c.error("show info extra")
        assert c.json("frobnicate") == {"error": "unknown command 'frobnicate'; try 'help'"}
        assert c.json("") == {"error": "'json' must be followed by a command"}
        # Bad addresses, in every command that takes one (the wording is
        # checked in test_bad_address_is_named_in_the_error).
        for bad in BAD_ADDRESSES:
            for line in bad_address_lines(bad):
                c.error(line)
        assert "error" in c.json(f"add target {BAD_ADDRESSES[0]}")
        # The wrong pool, in every command that takes one.
        for line in ["show targets nopool", "add target nopool 127.0.0.1:9",
                     f"set target nopool {addr['a']} weight 2", f"drain target nopool {addr['a']}",
                     f"ready target nopool {addr['a']}", f"maint target nopool {addr['a']}",
                     f"remove target nopool {addr['a']}", "show affinity nopool",
                     "clear affinity nopool all"]:
            assert c.error(line) == "error: no pool named 'nopool'; pools: default", line
        assert "not a pool name" in c.error("show targets bad/pool")

        # Lines over 4 KiB: one error each, discarded to the newline; the session goes on.
        assert c.cmd("show info" + " " * (4096 - 9)).startswith("version: "), "a 4096-byte line is allowed"
        assert c.cmd("x" * 4097) == "error: line longer than 4096 bytes; discarded"
        c.send_raw(b"y" * 100_000)  # no newline yet: one long line in pieces
        c.send_raw(b"z" * 100_000 + b" show info\nshow info\n")
        assert c.read_answer() == "error: line longer than 4096 bytes; discarded"
        assert c.read_answer().startswith("version: ")

        # Binary junk: NUL, 0xff and friends on one line, then junk with newlines.
        rnd = random.Random(4)
        junk = bytes(rnd.choice([0, 0xFF, 0x80, 0x1B, 0x7F, rnd.randrange(256)]) for _ in range(2000))
        junk = junk.replace(b"\n", b"\xff")
        c.send_raw(junk + b"\n")
        assert c.read_answer() == "error: commands are printable ASCII; got a control or non-ASCII byte"
        c.send_raw(b"\x00\n\xff\xfe\n")
        assert c.read_answer().startswith("error: ")
        assert c.read_answer().startswith("error: ")
        c.send_raw(rnd.randbytes(50_000) + b"\nshow info\n")
        errors = 0
        for _ in range(60_000):
            answer = c.read_answer()
            if answer.startswith("version: "):
                break
            assert answer.startswith("error: ") or json.loads(answer).get("error"), answer[:200]
            errors += 1
        assert errors > 10
        echo_check(keep, b"after bad input")

        # A slow writer: one command a byte at a time over about a second,
        # while other sessions are answered at once.
        slow_result: dict = {}

        def slow_writer() -> None:
            try:
                with AdminClient(path, timeout=10) as s:
                    line = b"show targets\n"
                    for i in range(len(line)):
                        s.send_raw(line[i:i + 1])
                        time.sleep(1.0 / len(line))
                    slow_result["answer"] = s.read_answer()
            except Exception as exc:  # reported by the main thread
                slow_result["error"] = repr(exc)

        t = threading.Thread(target=slow_writer, daemon=True)
        t.start()
        latencies = []
        while t.is_alive() and len(latencies) < 200:
            t1 = time.monotonic()
            assert admin(path, "show info").startswith("version: ")
            latencies.append(time.monotonic() - t1)
            echo_check(keep, b"while the slow writer writes")
        t.join(15)
        assert not t.is_alive(), "the slow writer got no answer within 15 s"
        assert "error" not in slow_result, slow_result
        assert {r["ADDRESS"] for r in parse_table(slow_result["answer"])} == set(addr.values())
        assert len(latencies) >= 3, "the slow writer finished too soon to overlap anything"
        assert max(latencies) < 0.5, f"other sessions waited on the slow writer: {latencies}"

        # 100 admin clients at once, each with a few commands.
        n = 100
        barrier = threading.Barrier(n, timeout=20)
        failures: list[str] = []

        def one_client(i: int) -> None:
            try:
                with AdminClient(path, timeout=20) as s:
                    barrier.wait()
                    assert s.cmd("show info").startswith("version: ")
                    assert s.cmd(f"bogus{i}") == f"error: unknown command 'bogus{i}'; try 'help'"
                    assert len(s.json("show targets")["targets"]) == 2
                    assert s.cmd("add target 1.2.3").startswith("error: ")
                    assert s.cmd("quit") == "bye"
                    assert s.at_eof(10)
            except Exception as exc:
                failures.append(f"client {i}: {exc!r}")

        threads = [threading.Thread(target=one_client, args=(i,), daemon=True) for i in range(n)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(30)
        assert not any(th.is_alive() for th in threads), "admin clients still running after 30 s"
        assert not failures, f"{len(failures)} of {n} admin clients failed: {failures[:5]}"

        # Nothing else was disturbed: the open connection, new connections, the registry.
        echo_check(keep, b"after everything")
        assert target_of(keep_ip, d.addr) == "a"
        for _ in range(5):
            s, _name = connect_from(clients.fresh(), d.addr)
            with s:
                echo_check(s, b"new connection after the admin storm")
        assert d.alive()
        assert set(targets_by_address(c)) == set(addr.values())
        assert all(t["state"] == "ready" and t["weight"] == 1 for t in targets_by_address(c).values())
        assert c.cmd("show info").startswith("version: ")


# ---------------------------------------------------------------------------
# Permissions


def test_admin_socket_is_mode_0600(run_stickyd, backend):
    d, servers, addr = start_named(run_stickyd, backend, ["a"])
    st = os.stat(sock_path(d))
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600, oct(st.st_mode)
    assert st.st_uid == os.geteuid()
    admin(sock_path(d), f"set target {addr['a']} weight 2")  # writes the state file
    state = Path(flag(d, "--state-dir")) / "state.json"
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(state.parent).st_mode) == 0o700


CYCLES = 8


def test_socket_file_removed_on_sigterm(run_stickyd, backend, tmp_path):
    """A clean stop removes the socket file (AdminService.stop says so). The
    daemon must not exit before its admin thread has done that. The race is
    rare (seen in about 1 of 100 stops), so a pass here proves little; a
    failure is real."""
    srv = backend(make_named_handler("a"))
    sock = str(tmp_path / "cycle.sock")
    args = ["--admin-socket", sock, "--state-dir", str(tmp_path / "state")]
    left = []
    for i in range(CYCLES):
        d = run_stickyd([srv.addr], args=args)
        admin(sock, f"set target {srv.addr} weight {i + 1}")
        assert d.stop() == 0, d.output_tail()
        if os.path.exists(sock):
            left.append(i)
    assert not left, f"the socket file was left behind after SIGTERM in cycles {left} of {CYCLES}"


PEER_SCRIPT = r"""
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(5)
try:
    s.connect(sys.argv[1])
except OSError as e:
    print("connect:", e.errno); sys.exit(0)
try:
    s.sendall(b"show info\n")
except OSError:
    pass  # a refused peer may be cut off before it writes; its error line is still there to read
data = b""
while b"\n\n" not in data:
    chunk = s.recv(4096)
    if not chunk:
        break
    data += chunk
sys.stdout.write(data.decode(errors="replace"))
"""


def as_nobody(path: str) -> str:
    out = subprocess.run(["/usr/bin/python3", "-c", PEER_SCRIPT, path], user=65534, group=65534,
                         extra_groups=[], capture_output=True, timeout=20, cwd="/")
    assert out.returncode == 0, out.stderr.decode()
    return out.stdout.decode()


@pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/usr/bin/python3"),
                    reason="needs root (to connect as another uid) and /usr/bin/python3")
def test_peer_credentials_are_checked(run_stickyd, backend, tmp_path):
    """SO_PEERCRED: another uid is refused even if the socket file lets it
    connect; admin.allow_uids / allow_gids let it in (the socket file is then
    created connectable by all, so the kernel does not refuse them first)."""
    srv = backend(make_named_handler("a"))
    top = tempfile.mkdtemp(prefix="stickyd-peer-", dir="/tmp")  # reachable by uid 65534
    try:
        os.chmod(top, 0o755)
        results = {}
        for label, admin_cfg in [("none", ""), ("uid", "allow_uids: [65534]"), ("gid", "allow_gids: [65534]")]:
            sock = os.path.join(top, f"{label}.sock")
            listen = fmt_addr(LOOPBACK, free_port())
            cfg = tmp_path / f"{label}.yaml"
            cfg.write_text(f"listeners: [{{ address: {listen} }}]\n"
                           f"pools: [{{ name: default, targets: [{{ address: {srv.addr} }}] }}]\n"
                           f"admin: {{ socket: {sock} {', ' + admin_cfg if admin_cfg else ''} }}\n")
            d = run_stickyd([], listen=[listen], args=["--config", str(cfg), "--admin-socket", sock])
            mode = stat.S_IMODE(os.stat(sock).st_mode)
            if label == "none":
                # Without allow lists the file mode alone keeps other users out...
                assert mode == 0o600, oct(mode)
                assert as_nobody(sock).startswith("connect: 13"), "mode 0600 should refuse another uid"
                os.chmod(sock, 0o666)  # ...and with the mode loosened, SO_PEERCRED still does
            else:
                # With allow lists the file is open to all, and SO_PEERCRED decides.
                assert mode == 0o666, oct(mode)
            results[label] = as_nobody(sock)
            assert admin(sock, "show info").startswith("version: "), "root must stay allowed"
            d.stop()
        assert results["none"] == "error: permission denied for uid 65534\n\n", results["none"]
        assert results["uid"].startswith("version: "), results["uid"]
        assert results["gid"].startswith("version: "), results["gid"]
    finally:
        shutil.rmtree(top, ignore_errors=True)
