"""The admin socket's persistence against a real daemon: runtime changes
survive a restart, and a corrupt or unreadable state file refuses to start
(docs/ADMIN.md, "Persistence"). Split from test_admin.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from admin_support import AdminClient, Clients, landings, make_named_handler, sock_path, targets_by_address
from support import LOOPBACK, fmt_addr, free_port, wait_until


def test_runtime_changes_survive_restart(run_stickyd, backend, tmp_path):
    names = ["a", "b", "m", "r", "c", "n"]
    srv = {n: backend(make_named_handler(n), name=n) for n in names}
    addr = {n: s.addr for n, s in srv.items()}
    state_dir = tmp_path / "state"
    sock = tmp_path / "adm.sock"
    listen = [fmt_addr(LOOPBACK, free_port())]
    args = ["--state-dir", str(state_dir), "--admin-socket", str(sock)]
    config_targets = [addr[n] for n in ["a", "b", "m", "r"]]

    d1 = run_stickyd(config_targets, listen=listen, args=args)
    with AdminClient(sock) as c:
        c.ok(f"add target {addr['c']} weight 3 name c")
        c.ok(f"drain target {addr['a']} mode strict timeout 10m")
        c.ok(f"set target {addr['b']} weight 5")
        c.ok(f"maint target {addr['m']}")
        c.ok(f"remove target {addr['r']}")
        before = targets_by_address(c)
    assert d1.stop() == 0, d1.output_tail()
    doc = json.loads((state_dir / "state.json").read_text())
    assert doc["version"] == 1 and [p["name"] for p in doc["pools"]] == ["default"]
    assert doc["pools"][0]["removed_config_targets"] == [addr["r"]]

    def check(t: dict, with_m: bool = True) -> None:
        a = t[addr["a"]]
        assert a["state"] == "draining" and a["drain_mode"] == "strict", a
        assert 500_000 < a["drain_remaining_ms"] <= 600_000, "the deadline is kept, not restarted or lost"
        assert t[addr["b"]]["weight"] == 5
        assert (t[addr["c"]]["weight"], t[addr["c"]].get("name"), t[addr["c"]]["origin"]) == (3, "c", "runtime")
        if with_m:
            assert t[addr["m"]]["state"] == "maint"
        assert addr["r"] not in t, "a config target removed at runtime came back"

    d2 = run_stickyd(config_targets, listen=listen, args=args)
    assert "state file applied" in d2.output()
    with AdminClient(sock) as c:
        after = targets_by_address(c)
        check(after)
        assert set(after) == set(before)
        for k in after:
            assert {f: after[k].get(f) for f in ("weight", "state", "drain_mode", "name", "origin")} == \
                   {f: before[k].get(f) for f in ("weight", "state", "drain_mode", "name", "origin")}
    # The restored states drive the data path: nobody new goes to a (draining) or m (maint).
    clients = Clients()
    assert set(landings(d2, clients, 20)) <= {"b", "c"}
    assert d2.stop() == 0, d2.output_tail()

    # The config changes under the state file: m is dropped from the config
    # and n is added. The config's removal wins; the new target comes in.
    d3 = run_stickyd([addr[x] for x in ["a", "b", "r", "n"]], listen=listen, args=args)
    assert f"{addr['m']} was removed from the config; dropped" in d3.output()
    with AdminClient(sock) as c:
        t = targets_by_address(c)
        check(t, with_m=False)
        assert addr["m"] not in t
        assert t[addr["n"]]["state"] == "ready" and t[addr["n"]]["origin"] == "config"


CORRUPT_STATES = {
    "junk": b"\x00\xffjunk{\n",
    "truncated": b'{"version": 1, "written_at_unix_ms": 0, "pools": [{"name": "default", "tar',
    "empty": b"",
    "version": b'{"version": 99, "written_at_unix_ms": 0, "pools": []}',
    "bad_state": (b'{"version": 1, "written_at_unix_ms": 0, "pools": [{"name": "default", '
                  b'"removed_config_targets": [], "targets": [{"address": "127.0.0.1:9", "weight": 1, '
                  b'"state": "sleepy", "origin": "runtime"}]}]}'),
}


@pytest.mark.parametrize("kind", list(CORRUPT_STATES))
def test_corrupt_state_file_refuses_to_start(run_stickyd, backend, tmp_path, kind):
    srv = backend(make_named_handler("a"))
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    state = state_dir / "state.json"
    state.write_bytes(CORRUPT_STATES[kind])
    args = ["--state-dir", str(state_dir)]
    d = run_stickyd([srv.addr], args=args, wait_ready=False)
    d.expect_exit = True
    status = d.wait(20)
    assert status is not None, f"still running with a corrupt state file:\n{d.output_tail()}"
    d.stop()  # reaps it; the fixture then leaves it alone
    assert status != 0, d.output_tail()
    out = d.output()
    assert str(state) in out, f"the error does not name the state file:\n{out}"
    assert "move it aside" in out, out
    assert 'msg="ready"' not in out, out
    assert state.read_bytes() == CORRUPT_STATES[kind], "the corrupt file was changed"
    if kind == "junk":
        # The documented way out: move it aside; the config alone is used.
        state.rename(state_dir / "state.json.bad")
        d2 = run_stickyd([srv.addr], args=args)
        with AdminClient(sock_path(d2)) as c:
            assert list(targets_by_address(c)) == [srv.addr]
        assert json.loads(state.read_text())["version"] == 1


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root, to run the daemon as another user")
def test_unreadable_state_file_refuses_to_start(stickyd_path, backend):
    """A state file the daemon cannot read (here: root's, mode 0600, and the
    daemon runs as uid 65534) must stop the start as a corrupt one does. It
    must not be taken for "no state file": the daemon would then run on the
    config alone and overwrite the file, and the runtime changes would be lost."""
    srv = backend(make_named_handler("a"))
    top = tempfile.mkdtemp(prefix="stickyd-unread-", dir="/tmp")
    proc = None
    try:
        os.chmod(top, 0o755)
        state_dir = Path(top) / "state"
        state_dir.mkdir()
        os.chown(state_dir, 65534, 65534)  # the daemon may write here...
        state = state_dir / "state.json"
        content = json.dumps({"version": 1, "written_at_unix_ms": 0, "pools": [{
            "name": "default", "removed_config_targets": [], "targets": [
                {"address": srv.addr, "weight": 7, "state": "ready", "origin": "config"},
                {"address": "127.0.0.1:9", "weight": 1, "state": "maint", "origin": "runtime"}]}]})
        state.write_text(content)
        os.chmod(state, 0o600)  # ...but cannot read this (root's) file
        run_dir = Path(top) / "run"
        run_dir.mkdir()
        os.chown(run_dir, 65534, 65534)
        log = Path(top) / "stickyd.log"
        listen = fmt_addr(LOOPBACK, free_port())
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [str(stickyd_path), "--listen", listen, "--target", srv.addr,
                 "--admin-socket", str(run_dir / "a.sock"), "--state-dir", str(state_dir)],
                user=65534, group=65534, extra_groups=[], stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, cwd="/", start_new_session=True)
        wait_until(lambda: proc.poll() is not None or " ready" in log.read_text(), 20,
                   what="stickyd exits or says ready")
        text = log.read_text()
        assert proc.poll() is not None, (
            f"stickyd started although it cannot read {state}; the file now holds "
            f"{state.read_text()[:300]!r}\n{text}")
        assert proc.returncode != 0, text
        assert str(state) in text, text
        assert state.read_text() == content
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        shutil.rmtree(top, ignore_errors=True)
