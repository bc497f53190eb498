"""Three stickyd instances behind an ECMP router, in network namespaces.

The topology (netns_support.py): a router namespace running BIRD 2 with
`merge paths on` and fib_multipath_hash_policy=1; three balancer namespaces,
each with stickyd (`peers:` between them, `vip:` on vip0) and BIRD
announcing the VIP over BGP; three identity targets in a backend namespace;
a client namespace with 1,400 source addresses. A target's reply names it
and the balancer that connected, so every connection shows both the
instance the router chose and the target stickyd chose.

Shows, in order (docs/SCALING.md has the figures):
(a) the router spreads one client's connections over the instances, and
    they all reach one target; the pin's propagation time is measured, and
    one client's connections are spaced by at least that long;
(b) a balancer host dies (stickyd and BIRD killed): the router drops its
    path within seconds and its clients keep their targets; then stickyd
    alone crashes while BIRD lives: the VIP stays announced until the
    unit's ExecStopPost (`stickyd vip-release`) removes it;
(c) the instance comes back, pulls the table, announces, and nobody moves;
(d) a strict drain sent to every instance moves each affected client once,
    to the same target everywhere;
(e) with one client holding 150 connections through one instance, new
    clients still land alike through every instance;
(f) `withdraw` on one instance: its open connections finish, new ones go to
    the others; `announce` brings it back.

Skipped only where namespaces cannot be made (not root, no `ip netns`) or
bird/nft is missing. Every namespace and process is removed, also on failure.
"""

from __future__ import annotations

import socket
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest

from admin_support import AdminClient
from conftest import REPO, stickyd_bin
from netns_support import (BACKEND_IP, VIP, VIP_PORT, Lab, balancer_bird_conf, client_ips, enter_netns,
                           kill, lb_ip, router_bird_conf, sweep_stale, why_no_netns)
from support import wait_until

KEY = "47b211c6be07be6e0111b87e1df74e98"
TARGETS = {f"t{i}": f"{BACKEND_IP}:{9000 + i}" for i in range(3)}
CLIENTS = 1000
ALL_IPS = client_ips(1400)  # the client namespace's addresses
SKEW_IPS, HOG_IP = ALL_IPS[CLIENTS:CLIENTS + 300], ALL_IPS[-1]
PER_CLIENT = 4     # connections per client in (a)
BATCH = 250        # clients connecting at once (32 threads); fewer batches, fewer spacing waits
ROUTE_BOUND = 15   # seconds: BGP hold time 3 s plus margin


def instance_config(n: int, count: int) -> str:
    members = "\n".join(f"    - {{ name: lb{m}, address: {lb_ip(m)}:7700 }}" for m in range(count) if m != n)
    targets = "\n".join(f"      - {{ address: {a}, name: {t} }}" for t, a in TARGETS.items())
    return f"""\
workers: 2
listeners:
  - address: {VIP}:{VIP_PORT}
pools:
  - name: web
    targets:
{targets}
    affinity: {{ hash_key: "{KEY}" }}
peers:
  name: lb{n}
  listen: {lb_ip(n)}:7700
  sync_timeout: 2s
  members:
{members}
vip:
  address: {VIP}
  interface: vip0
"""


@dataclass
class Visit:
    ip: str
    start: float
    end: float
    target: str | None = None
    via: int | None = None  # the balancer's index
    error: str | None = None


def read_line(s: socket.socket) -> str:
    data = b""
    while not data.endswith(b"\n") and len(data) < 256:
        chunk = s.recv(256)
        if not chunk:
            break
        data += chunk
    return data.decode()


def identify(line: str) -> tuple[str, int]:
    name, peer = line.split()
    return name, int(peer.split(".")[2])  # 10.91.<n>.2


def visit(ip: str) -> Visit:
    """One short connection from `ip` through the VIP (runs in the client namespace)."""
    v = Visit(ip, time.monotonic(), 0.0)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.bind((ip, 0))
            s.connect((VIP, VIP_PORT))
            v.target, v.via = identify(read_line(s))
    except (OSError, ValueError) as exc:
        v.error = f"{type(exc).__name__}: {exc}"
    v.end = time.monotonic()
    return v


def hold(ip: str) -> tuple[socket.socket, str, int]:
    """A connection that stays open: (socket, target, balancer)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(5)
    s.bind((ip, 0))
    s.connect((VIP, VIP_PORT))
    target, via = identify(read_line(s))
    return s, target, via


class Cluster:
    """The lab plus its stickyd and BIRD processes, and a pool of client
    threads that live in the client namespace."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.n = len(lab.lbs)
        self.stickyd: list = [None] * self.n
        self.bird: list = [None] * self.n
        self.admins: list = [None] * self.n
        self.configs = []
        for n in range(self.n):
            path = lab.dir / f"lb{n}.yaml"
            path.write_text(instance_config(n, self.n))
            self.configs.append(path)
        self.pool = ThreadPoolExecutor(max_workers=32, initializer=enter_netns, initargs=(lab.client,))
        self.restarts = 0

    def start_stickyd(self, n: int, wait: bool = True):
        self.restarts += 1
        sock = self.lab.dir / f"admin-lb{n}-{self.restarts}.sock"
        argv = [str(stickyd_bin()), "--config", str(self.configs[n]), "--admin-socket", str(sock),
                "--state-dir", str(self.lab.dir / f"state-lb{n}"),
                "--takeover-socket", str(self.lab.dir / f"takeover-lb{n}-{self.restarts}.sock")]
        p = self.lab.spawn(self.lab.lbs[n], argv, f"stickyd-lb{n}")
        self.stickyd[n] = p
        if wait:
            self.wait_ready(n)
        return p

    def wait_ready(self, n: int) -> None:
        self.stickyd[n].wait_for_output(r"\bready\b", 30)
        sock = self.stickyd[n].argv[self.stickyd[n].argv.index("--admin-socket") + 1]
        self.admins[n] = AdminClient(sock)

    def start_bird(self, n: int):
        self.bird[n] = self.lab.start_bird(self.lab.lbs[n], balancer_bird_conf(n), f"bird-lb{n}")
        return self.bird[n]

    def paths(self) -> set[int]:
        return {int(gw.split(".")[2]) for gw in self.lab.vip_paths()}

    def wait_paths(self, want: set[int], what: str) -> float:
        return wait_until(lambda: self.paths() == want, ROUTE_BOUND, interval=0.005, what=what)

    def pinned(self, n: int, ip: str) -> str | None:
        entries = self.admins[n].json(f"show affinity web {ip}").get("entries", [])
        return entries[0]["target"] if entries else None

    def visits(self, ips: list[str]) -> list[Visit]:
        return list(self.pool.map(visit, ips))

    def spaced_rounds(self, ips: list[str], count: int, spacing: float) -> dict[str, list[Visit]]:
        """`count` connections per client, BATCH clients at once. A client's
        next connection starts at least `spacing` after its previous one ended:
        the time a pin needs to reach the other instances (a), so that every
        connection after the first finds the first one's pin wherever the
        router sends it."""
        out: dict[str, list[Visit]] = {ip: [] for ip in ips}
        for b in range(0, len(ips), BATCH):
            batch = ips[b:b + BATCH]
            last_end = None
            for _ in range(count):
                if last_end is not None:
                    due = last_end + spacing
                    wait_until(lambda: time.monotonic() >= due, spacing + 1, interval=0.002, what="spacing")
                vs = self.visits(batch)
                for v in vs:
                    out[v.ip].append(v)
                last_end = max(v.end for v in vs)
        return out

    def links_up(self) -> bool:
        return all(m["state"] == "up" and m["inbound"] for a in self.admins for m in a.json("show peers")["members"])

    def wait_links_up(self, what: str) -> None:
        """The claims below are for instances whose peer links are up. A
        link to an instance that (b) killed reconnects with backoff; until
        it is back, pins pile up for it, and placements made meanwhile may
        differ (SCALING.md, "a peer link is cut")."""
        wait_until(self.links_up, 20, what=f"every peer link up before {what}")

    def peers_total(self, key: str) -> int:
        return sum(int(a.json("show peers")[key]) for a in self.admins if a is not None)

    def pins_lost(self) -> int:
        """Pins an instance dropped instead of sending: its workers' outbox
        overflowing, or a member's queue."""
        total = 0
        for a in self.admins:
            if a is not None:
                p = a.json("show peers")
                total += int(p["outboxDropped"]) + sum(int(m["pinsDropped"]) for m in p["members"])
        return total

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def errors_of(visits) -> list[str]:
    return [f"{v.ip}: {v.error}" for v in visits if v.error]


def agreement(rounds: dict[str, list[Visit]]) -> tuple[int, int, float]:
    """(clients that reached more than one target, clients spread over more
    than one instance, the shortest gap between one client's connections)."""
    violations = sum(len({v.target for v in vs}) > 1 for vs in rounds.values())
    spread = sum(len({v.via for v in vs}) > 1 for vs in rounds.values())
    gaps = [b.start - a.end for vs in rounds.values() for a, b in zip(vs, vs[1:])]
    return violations, spread, min(gaps) if gaps else 0.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    reason = why_no_netns()
    if reason:
        pytest.skip(f"ECMP test needs network namespaces and BIRD: {reason}")
    stale = sweep_stale()
    if stale:
        print(f"ecmp: removed {len(stale)} namespaces left by a killed run: {' '.join(stale)}", file=sys.stderr)
    binary = stickyd_bin()
    if not binary.is_file():
        pytest.fail(f"stickyd binary not found at {binary}: build it or set STICKYD_BIN", pytrace=False)
    lab = Lab(tmp_path_factory.mktemp("ecmp"))
    c = None
    try:
        lab.build(len(ALL_IPS))
        specs = [f"{t}={a}" for t, a in TARGETS.items()]
        targets = lab.spawn(lab.backend, [sys.executable, str(REPO / "Tests/integration/identity_target.py"), *specs],
                            "targets")
        targets.wait_for_output(r"^serving", 20)
        lab.start_bird(lab.router, router_bird_conf(len(lab.lbs)), "bird-router")
        c = Cluster(lab)
        for n in range(c.n):
            c.start_bird(n)
            c.start_stickyd(n, wait=False)
        for n in range(c.n):
            c.wait_ready(n)

        c.wait_links_up("the first test")
        c.wait_paths(set(range(c.n)), "the router's ECMP route over every balancer")
        yield c
    finally:
        if c is not None:
            c.close()
        problems = lab.close()
        if problems:
            pytest.fail("ecmp teardown: " + "; ".join(problems), pytrace=False)


@pytest.fixture(autouse=True)
def _outputs_on_failure(request, cluster):
    """conftest attaches these processes' output to a failed test's report."""
    request.node.__dict__["_managed_processes"] = [p for p in cluster.lab.processes if "stickyd" in p.label]
    yield


@pytest.fixture(scope="module")
def placed(cluster):
    """(a)'s result: every client's target, and the spacing used."""
    return {}


def test_a_spread_over_instances_one_target(cluster, placed):
    c = cluster
    ips = client_ips(CLIENTS)
    # The pin's journey: a client connects through whichever instance the
    # router picks; time until every other instance holds the pin, counted
    # from before the connect (so it includes the placement itself).
    lags = []
    for ip in ips[:150]:
        v = visit_in_ns(c, ip)
        assert v.error is None, v.error
        others = [n for n in range(c.n) if n != v.via]
        wait_until(lambda: all(c.pinned(n, ip) is not None for n in others), 5, interval=0.002,
                   what=f"pin of {ip} on every other instance")
        lags.append(time.monotonic() - v.start)
    lags.sort()
    p50, p99, worst = lags[len(lags) // 2] * 1000, lags[int(len(lags) * 0.99)] * 1000, lags[-1] * 1000
    # The spacing: the slowest pin seen, doubled, and no less than 100 ms.
    # Doubled because the later phases push pins in bursts (a drain re-pins
    # a third of the clients at once) and the machine's load changes between
    # phases: a spacing shorter than the lag of the moment makes two
    # instances pick for one client, which is a conflict, not what the
    # phases test. 100 ms is the aim for the propagation.
    spacing = max(2 * worst, 100.0) / 1000

    t0 = time.monotonic()
    rounds = c.spaced_rounds(ips, PER_CLIENT, spacing)
    seconds = time.monotonic() - t0
    all_visits = [v for vs in rounds.values() for v in vs]
    assert not errors_of(all_visits), errors_of(all_visits)[:5]
    violations, spread, min_gap = agreement(rounds)
    per_instance = Counter(v.via for v in all_visits)
    print(f"\necmp (a): {len(all_visits)} connections from {CLIENTS} clients in {seconds:.1f}s; "
          f"pin propagation p50={p50:.1f} p99={p99:.1f} max={worst:.1f} ms; spacing={spacing * 1000:.0f} ms "
          f"(shortest gap {min_gap * 1000:.0f} ms); clients spread over >1 instance: {spread}; "
          f"per instance {dict(sorted(per_instance.items()))}; violations={violations}")
    placed["targets"] = {ip: vs[0].target for ip, vs in rounds.items()}
    placed["spacing"] = spacing
    assert violations == 0
    assert min_gap >= spacing
    # The median, not the tail: the figure includes the admin round trips
    # that observe it, and on a loaded 2-core machine the tail is theirs (a
    # p99 of 150 ms was seen under a parallel build). The spacing above is
    # the maximum, so what is asserted about placement holds at any load.
    assert p50 < 100, f"pins took {p50:.0f} ms (median) to reach every other instance"
    # Policy 1 hashes the ports: with 4 connections over 3 paths, all on one
    # path happens to 1 client in 27.
    assert spread > CLIENTS // 2, f"only {spread} clients reached more than one instance"
    assert set(per_instance) == set(range(c.n))
    assert c.peers_total("conflicts") == 0
    assert c.pins_lost() == 0


def visit_in_ns(c: Cluster, ip: str) -> Visit:
    return c.pool.submit(visit, ip).result(10)


def moved_clients(c: Cluster, targets: dict[str, str], rounds: int = 2, spacing: float = 0.0):
    """Every client connects `rounds` times; returns (visits, moved clients)."""
    got = c.spaced_rounds(list(targets), rounds, spacing)
    visits = [v for vs in got.values() for v in vs]
    moved = [ip for ip, vs in got.items() if any(v.target != targets[ip] for v in vs)]
    return visits, moved


@pytest.mark.parametrize("victim, power_cut", [(2, False), (2, True)], ids=["killed", "power-cut"])
def test_b_c_instance_dies_and_comes_back(cluster, placed, victim, power_cut):
    """(b) The host dies: stickyd and BIRD killed at once. `killed`: the host
    itself lives, so its kernel closes BIRD's BGP session and the router
    knows at once. `power-cut`: the host also goes silent first (every
    packet dropped), so only the router's BGP hold timer (3 s) notices.
    (c) Then it comes back."""
    c = cluster
    targets = placed.get("targets") or pytest.skip("needs (a)'s placements")
    how = "power cut (silent), stickyd + BIRD killed" if power_cut else "stickyd + BIRD killed"
    t0 = time.monotonic()
    if power_cut:
        c.lab.silence(c.lab.lbs[victim])
    kill(c.stickyd[victim])
    kill(c.bird[victim])
    c.admins[victim] = None
    c.wait_paths(set(range(c.n)) - {victim}, f"the router dropping lb{victim}")
    withdrawn = time.monotonic() - t0
    visits, moved = moved_clients(c, targets)
    assert not errors_of(visits), errors_of(visits)[:5]
    assert victim not in {v.via for v in visits}
    print(f"\necmp (b): lb{victim} {how}: path withdrawn in {withdrawn * 1000:.0f} ms; "
          f"clients moved {len(moved)}/{len(targets)}")
    assert moved == []

    # (c) It comes back: BIRD first (it announces nothing until the VIP is
    # on vip0), then stickyd, which pulls the table before it is ready.
    if power_cut:
        c.lab.unsilence(c.lab.lbs[victim])
    t0 = time.monotonic()
    c.start_bird(victim)
    c.start_stickyd(victim)
    pulled = c.stickyd[victim].wait_for_output(r"peer table pulled.*pins=(\d+)", 5).group(1)
    c.wait_paths(set(range(c.n)), f"lb{victim} back in the route")
    back = time.monotonic() - t0
    visits, moved = moved_clients(c, targets)
    assert not errors_of(visits), errors_of(visits)[:5]
    through = sum(v.via == victim for v in visits)
    print(f"ecmp (c): lb{victim} back in the route {back:.1f}s after its start (pulled {pulled} pins); "
          f"{through} connections through it; clients moved {len(moved)}/{len(targets)}")
    assert moved == []
    assert through > 0
    assert c.peers_total("conflicts") == 0


def test_b_stickyd_crash_while_bird_lives(cluster, placed):
    """Nothing in a dead stickyd can remove the VIP: the unit's ExecStopPost
    (`stickyd vip-release CONFIG`, run after any exit) does. Here the test
    runs the same command where systemd would."""
    c = cluster
    targets = placed.get("targets") or pytest.skip("needs (a)'s placements")
    victim = 1
    kill(c.stickyd[victim])
    c.admins[victim] = None
    # The VIP is still on vip0, so BIRD still announces it, and the router
    # keeps sending new flows to a host with nothing listening.
    assert c.lab.vip_on_vip0(victim)
    assert c.paths() == set(range(c.n))
    probes = c.visits(list(targets)[:60])
    refused = [v for v in probes if v.error]
    assert refused, "no connection reached the crashed instance: the test shows nothing"

    t0 = time.monotonic()
    release = c.lab.ns(c.lab.lbs[victim], str(stickyd_bin()), "vip-release", str(c.configs[victim]))
    withdrawn = c.wait_paths(set(range(c.n)) - {victim}, f"the router dropping lb{victim} after vip-release")
    withdrawn = time.monotonic() - t0
    visits, moved = moved_clients(c, targets)
    assert not errors_of(visits), errors_of(visits)[:5]
    print(f"\necmp (b'): stickyd on lb{victim} killed, BIRD alive: {len(refused)}/{len(probes)} connections "
          f"refused until `stickyd vip-release` ({release.stdout.strip()}); path withdrawn "
          f"{withdrawn * 1000:.0f} ms after it; clients moved {len(moved)}/{len(targets)}")
    assert moved == []

    c.start_stickyd(victim)
    c.stickyd[victim].wait_for_output(r"peer table pulled", 5)
    c.wait_paths(set(range(c.n)), f"lb{victim} back in the route")
    visits, moved = moved_clients(c, targets)
    assert not errors_of(visits), errors_of(visits)[:5]
    assert moved == []


def test_d_drain_on_every_instance(cluster, placed):
    c = cluster
    c.wait_links_up("(d)")
    targets = placed.get("targets") or pytest.skip("needs (a)'s placements")
    drained = Counter(targets.values()).most_common(1)[0][0]
    affected = [ip for ip, t in targets.items() if t == drained]
    conflicts = c.peers_total("conflicts")
    for a in c.admins:
        a.ok(f"drain target web {TARGETS[drained]} mode strict")
    rounds = c.spaced_rounds(list(targets), 3, placed["spacing"])
    visits = [v for vs in rounds.values() for v in vs]
    assert not errors_of(visits), errors_of(visits)[:5]
    violations, _, _ = agreement(rounds)  # a second move would be a second target
    moved = [ip for ip, vs in rounds.items() if vs[0].target != targets[ip]]
    now = {ip: vs[0].target for ip, vs in rounds.items()}

    # Every instance holds the same new pin for every affected client.
    def disagreeing() -> dict[str, list]:
        pins = {ip: [c.pinned(n, ip) for n in range(c.n)] for ip in affected}
        return {ip: p for ip, p in pins.items() if any(t != TARGETS[now[ip]] for t in p)}
    try:
        wait_until(lambda: not disagreeing(), 10, interval=0.1, what="every instance pinning the moved clients alike")
    except TimeoutError:
        left = disagreeing()
        raise AssertionError(f"{len(left)} moved clients pinned differently, e.g. "
                             f"{[(ip, TARGETS[now[ip]], p) for ip, p in list(left.items())[:5]]}") from None
    new_conflicts = c.peers_total("conflicts") - conflicts
    print(f"\necmp (d): strict drain of {drained} on every instance: {len(moved)} clients moved "
          f"({len(affected)} were on it), each once, to {dict(Counter(now[ip] for ip in affected))}; "
          f"violations={violations}; conflicts={new_conflicts}")
    assert violations == 0
    assert sorted(moved) == sorted(affected)
    assert drained not in {v.target for v in visits}
    for a in c.admins:
        a.ok(f"ready target web {TARGETS[drained]}")
    placed["targets"] = now


def test_e_skewed_load(cluster, placed):
    c = cluster
    c.wait_links_up("(e)")
    spacing = placed.get("spacing") or pytest.skip("needs (a)'s spacing")
    skewed = 0
    held: list[socket.socket] = []
    try:
        # The router picks the instance; keep the connections that reached lb0.
        for _ in range(1500):
            s, target, via = c.pool.submit(hold, HOG_IP).result(10)
            if via == skewed:
                held.append(s)
                if len(held) == 150:
                    break
            else:
                s.close()
        assert len(held) == 150, f"only {len(held)} of the hog's connections reached lb{skewed}"
        hog_target = c.pinned(skewed, HOG_IP)
        rounds = c.spaced_rounds(SKEW_IPS, 3, spacing)
        visits = [v for vs in rounds.values() for v in vs]
        assert not errors_of(visits), errors_of(visits)[:5]
        violations, spread, _ = agreement(rounds)
        firsts = Counter(vs[0].target for vs in rounds.values())
        print(f"\necmp (e): 150 connections held through lb{skewed} to {hog_target}; {len(SKEW_IPS)} new "
              f"clients x 3 (spread over >1 instance: {spread}), first placements {dict(sorted(firsts.items()))}; "
              f"violations={violations}; conflicts={c.peers_total('conflicts')}; pins lost={c.pins_lost()}")
        assert violations == 0
        assert c.pins_lost() == 0
    finally:
        for s in held:
            s.close()


def test_f_withdraw_lets_open_connections_finish(cluster, placed):
    c = cluster
    c.wait_links_up("(f)")
    targets = placed.get("targets") or pytest.skip("needs (a)'s placements")
    victim = 0
    held = []
    try:
        for ip in list(targets)[:300]:
            s, target, via = c.pool.submit(hold, ip).result(10)
            assert target == targets[ip]
            if via == victim and len(held) < 20:
                held.append(s)
            else:
                s.close()
        assert len(held) == 20
        t0 = time.monotonic()
        c.admins[victim].ok("withdraw")
        c.wait_paths(set(range(c.n)) - {victim}, f"the router dropping lb{victim} after withdraw")
        withdrawn = time.monotonic() - t0
        visits, moved = moved_clients(c, dict(list(targets.items())[:500]), rounds=1)
        assert not errors_of(visits), errors_of(visits)[:5]
        assert victim not in {v.via for v in visits}
        assert moved == []
        # The open ones still work through lb0, and end cleanly.
        finished = 0
        for s in held:
            s.sendall(b"ping\n")
            assert read_line(s) == "ping\n"
            s.shutdown(socket.SHUT_WR)
            assert s.recv(16) == b""
            finished += 1
        print(f"\necmp (f): withdraw on lb{victim}: path withdrawn in {withdrawn * 1000:.0f} ms; "
              f"{finished}/{len(held)} open connections finished through it; 500 new ones all through the others")
        assert finished == len(held)
    finally:
        for s in held:
            s.close()
    c.admins[victim].ok("announce")
    c.wait_paths(set(range(c.n)), f"lb{victim} back after announce")
