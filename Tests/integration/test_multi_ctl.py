"""stickyctl against several instances (docs/ADMIN.md section 7): three real
daemons on loopback, each with its own admin socket, named by a repeated
--socket or a --cluster file.

Shows: a read prints every instance's answer under its name; a change
reaches every instance; a check that fails on one instance (or one that
cannot be reached) changes nothing anywhere; a change that one instance
refuses is still applied to the others and reported, with a non-zero exit;
`replace` rolls a target over on all of them; `upgrade` refuses several."""
import json
import subprocess

from admin_support import AdminClient, targets_by_address
from rollout_support import stickyctl_bin
from support import LOOPBACK, connect, fmt_addr, free_port, wait_until


def ctl(*args, timeout: float = 60.0) -> subprocess.CompletedProcess:
    return subprocess.run([str(stickyctl_bin()), *[str(a) for a in args]], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def start_three(run_stickyd, backend, tmp_path):
    """Three daemons with the same two targets; their sockets and clients."""
    targets = [backend().addr for _ in range(2)]
    socks = [str(tmp_path / f"i{n}.sock") for n in range(3)]
    daemons = [run_stickyd(targets=targets, args=["--admin-socket", sock]) for sock in socks]
    return targets, socks, [AdminClient(s) for s in socks], daemons


def sockets(socks):
    return [w for s in socks for w in ("--socket", s)]


def test_reads_are_labelled_and_changes_reach_every_instance(run_stickyd, backend, tmp_path):
    targets, socks, clients, daemons = start_three(run_stickyd, backend, tmp_path)
    p = ctl("show", "targets", *sockets(socks))
    assert p.returncode == 0, p
    for s in socks:
        assert f"==> {s} <==" in p.stdout, p.stdout
    assert p.stdout.count(targets[0]) == 3, p.stdout

    # A cluster file: comments and blank lines are skipped.
    cluster = tmp_path / "cluster"
    cluster.write_text("# the three instances\n" + "".join(f"{s}   # instance {n}\n\n" for n, s in enumerate(socks)))
    new = backend().addr
    p = ctl("add", new, "--weight", "3", "--cluster", cluster)
    assert p.returncode == 0, p
    for c in clients:
        assert targets_by_address(c)[new]["weight"] == 3

    # --json: one object per line, naming its instance.
    p = ctl("show", "info", "--json", "--cluster", cluster)
    assert p.returncode == 0, p
    docs = [json.loads(line) for line in p.stdout.splitlines()]
    assert [d["instance"] for d in docs] == socks
    assert len({d["answer"]["pid"] for d in docs}) == 3

    # drain --wait: drained on all (no connections, so at once).
    p = ctl("drain", new, "--wait", "--quiet", "--cluster", cluster)
    assert p.returncode == 0, p
    assert p.stdout.count(f"drained {new}: no connections left") == 3, p.stdout
    for c in clients:
        assert targets_by_address(c)[new]["state"] == "draining"


def test_a_failed_check_changes_nothing(run_stickyd, backend, tmp_path):
    targets, socks, clients, daemons = start_three(run_stickyd, backend, tmp_path)
    new = backend().addr
    # The target is already on the middle instance: `add` refuses everywhere.
    clients[1].cmd(f"add target {new}")
    p = ctl("add", new, *sockets(socks))
    assert p.returncode == 1, p
    assert f"{socks[1]}: target {new} is already in pool" in p.stderr, p.stderr
    assert "nothing changed" in p.stderr, p.stderr
    assert new not in targets_by_address(clients[0]) and new not in targets_by_address(clients[2])
    # Put the instances back in step, so the connection held below lands on
    # one of the targets all three have (not on the middle one's extra).
    clients[1].cmd(f"remove target {new}")
    wait_until(lambda: new not in targets_by_address(clients[1]), 5, what="the extra target gone")

    # One instance unreachable: a change is refused before anything is sent;
    # a read prints the others and exits 3.
    gone = str(tmp_path / "nobody.sock")
    p = ctl("drain", targets[0], *sockets(socks), "--socket", gone)
    assert p.returncode == 3, p
    assert f"cannot reach stickyd at {gone}" in p.stderr and "nothing changed" in p.stderr, p.stderr
    assert all(targets_by_address(c)[targets[0]]["state"] == "ready" for c in clients)
    p = ctl("show", "targets", "--socket", socks[0], "--socket", gone)
    assert p.returncode == 3, p
    assert f"==> {socks[0]} <==" in p.stdout and targets[0] in p.stdout, p

    # remove without --force: a connection through one instance fails the
    # check there, and the target stays on all three.
    held = connect(daemons[1].addr)
    wait_until(lambda: targets_by_address(clients[1])[targets[0]]["connections"]
               + targets_by_address(clients[1])[targets[1]]["connections"] == 1, 5, what="the held connection")
    busy = next(t for t in targets if targets_by_address(clients[1])[t]["connections"] == 1)
    p = ctl("remove", busy, *sockets(socks))
    held.close()
    assert p.returncode == 1, p
    assert f"{socks[1]}: target {busy} still has 1 connection(s)" in p.stderr and "nothing changed" in p.stderr, p
    assert all(busy in targets_by_address(c) for c in clients)

    # A target missing on every instance fails the check on each.
    p = ctl("remove", "10.9.9.9:1", *sockets(socks))
    assert p.returncode == 1 and p.stderr.count("no target 10.9.9.9:1") == 3, p


def test_a_refusal_on_one_instance_is_reported_and_the_others_still_change(run_stickyd, backend, tmp_path):
    targets, socks, clients, daemons = start_three(run_stickyd, backend, tmp_path)
    # `raw` has no check: instance 0 lacks the target and refuses; 1 and 2 drain.
    clients[0].cmd(f"remove target {targets[1]}")
    p = ctl("raw", "drain", "target", targets[1], *sockets(socks))
    assert p.returncode == 1, p
    assert f"stickyctl: {socks[0]}: " in p.stderr, p.stderr
    assert f"failed on 1 of 3 instances ({socks[0]})" in p.stderr, p.stderr
    assert f"==> {socks[1]} <==" in p.stdout and f"==> {socks[2]} <==" in p.stdout, p.stdout
    for c in clients[1:]:
        assert targets_by_address(c)[targets[1]]["state"] == "draining"


def test_replace_rolls_every_instance_in_step(run_stickyd, backend, tmp_path):
    targets, socks, clients, daemons = start_three(run_stickyd, backend, tmp_path)
    new = backend().addr
    p = ctl("replace", targets[0], new, "--name", "fresh", "--timeout", "5s", "--quiet", *sockets(socks), timeout=120)
    assert p.returncode == 0, p
    for c in clients:
        now = targets_by_address(c)
        assert targets[0] not in now and now[new]["state"] == "ready", now
    # The steps went in order: every add before the first drain.
    out = p.stdout
    assert out.rindex("added") < out.index("draining"), out


def test_upgrade_refuses_several_and_usage_errors(run_stickyd, backend, tmp_path):
    targets, socks, clients, daemons = start_three(run_stickyd, backend, tmp_path)
    p = ctl("upgrade", *sockets(socks[:2]))
    assert p.returncode == 2 and "one host at a time" in p.stderr, p
    p = ctl("show", "info", "--socket", socks[0], "--socket", socks[0])
    assert p.returncode == 2 and "named twice" in p.stderr, p
    bad = tmp_path / "bad-cluster"
    bad.write_text(f"{socks[0]}\nnot an address\n")
    p = ctl("show", "info", "--cluster", bad)
    assert p.returncode == 2 and "line 2" in p.stderr, p
    p = ctl("show", "info", "--cluster", tmp_path / "missing")
    assert p.returncode == 2 and "No such file" in p.stderr, p
    remote = tmp_path / "remote-cluster"
    remote.write_text(fmt_addr(LOOPBACK, free_port()) + "\n")
    p = ctl("show", "info", "--cluster", remote)
    assert p.returncode == 2 and "give --cert, --key and --ca" in p.stderr, p
