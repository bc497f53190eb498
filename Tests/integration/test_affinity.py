"""Stickiness through the real daemon at scale: 10k client IPs, each making
several connections, must each stay on one target, and new clients must
spread evenly. Measured with the shipped benchmark tool (`stickyctl bench`)
and its identity backends, so the test and users see the same figures."""

from __future__ import annotations

import json
import socket
import subprocess

from conftest import REPO
from admin_support import admin, parse_fields
from support import LOOPBACK, ManagedProcess, fmt_addr, free_port, wait_until


def test_ten_thousand_clients_stay_put_and_spread_evenly(run_stickyd, stickyd_path, tmp_path, request):
    stickyctl = stickyd_path.parent / "stickyctl"
    ports = [free_port() for _ in range(3)]
    argv = [str(stickyctl), "bench", "serve"]
    for i, p in enumerate(ports):
        argv += ["--listen", fmt_addr(LOOPBACK, p), "--name", f"t{i}"]
    backends = ManagedProcess(argv, "bench serve", tmp_path / "serve.log")
    request.addfinalizer(backends.stop)

    def serving() -> bool:
        for p in ports:
            try:
                socket.create_connection((LOOPBACK, p), timeout=1).close()
            except OSError:
                return False
        return True
    wait_until(serving, timeout=20, what="identity backends listening")

    d = run_stickyd([fmt_addr(LOOPBACK, p) for p in ports], args=["--workers", "2"])
    clients, per_client = 10_000, 3
    run = subprocess.run(
        [str(stickyctl), "bench", "--target", fmt_addr(*d.addr), "--clients", str(clients),
         "--per-client", str(per_client), "--concurrency", "64", "--duration", "120s",
         "--timeout", "10s", "--expect-targets", "3", "--json", "--quiet", "--strict"],
        capture_output=True, text=True, timeout=180, cwd=str(REPO))
    assert run.returncode == 0, f"bench failed ({run.returncode}):\n{run.stdout}\n{run.stderr}"
    report = json.loads(run.stdout)
    assert report["connections"] == clients * per_client, report
    assert report["clients"] == clients, report
    assert report["violations"] == 0, report
    assert sum(report["errors"].values()) == 0, report
    counts = report["targets"]
    assert sorted(counts) == ["t0", "t1", "t2"], counts
    mean = sum(counts.values()) / 3
    assert max(counts.values()) <= 1.05 * mean, f"spread {counts}: max/mean {max(counts.values()) / mean:.3f}"

    # The daemon agrees: every client was placed once and hit its pin after.
    stats = parse_fields(admin(str(tmp_path / "admin-1.sock"), "show stats"))
    assert int(stats["affinity_misses"]) == clients, stats
    assert int(stats["affinity_hits"]) == clients * (per_client - 1), stats
    assert int(stats["affinity_moves_target_down"]) + int(stats["affinity_moves_connect_failed"]) == 0, stats
    assert d.alive()
