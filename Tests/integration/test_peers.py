"""Two instances sharing pins over `peers:` (docs/SCALING.md), on loopback.

Two stickyd with one hash_key and the same three named backends; clients
from many 127.0.x.y source addresses connect through one instance and then
the other. Shows: a pin made on one reaches the other (the propagation time
is measured and reported); every client lands on one target through both
(0 violations), also with one instance's load skewed by a client holding 150
connections through it; a restarted instance pulls the table before it is
ready, and no client moves. The routing part (ECMP, BIRD, the VIP) is
test_ecmp.py's."""
import os
import socket
import threading
import time

from admin_support import AdminClient
from support import LOOPBACK, TcpServer, fmt_addr, free_port, make_speak_first_handler, wait_until
from test_metrics import parse, scrape_raw

KEY = "47b211c6be07be6e0111b87e1df74e98"


def write_config(path, listen, peer_listen, name, member, member_addr, backends, more_members=(), queue=None):
    targets = "\n".join(f"      - {{ address: {b.addr}, name: {b.name} }}" for b in backends)
    members = "".join(f"    - {{ name: {n}, address: {a} }}\n" for n, a in [(member, member_addr), *more_members])
    path.write_text(f"""\
workers: 2
listeners:
  - address: {listen}
pools:
  - name: web
    targets:
{targets}
    affinity: {{ hash_key: "{KEY}" }}
peers:
  name: {name}
  listen: {peer_listen}
  sync_timeout: 2s
{f"  queue: {queue}" if queue else ""}
  members:
{members}""")


def start(run_stickyd, tmp_path, name, listen, peer, member, member_peer, backends, more_members=(), queue=None,
          metrics_port=None):
    cfg = tmp_path / f"{name}.yaml"
    write_config(cfg, listen, peer, name, member, member_peer, backends, more_members, queue)
    sock = str(tmp_path / f"{name}-{time.monotonic_ns()}.sock")
    metrics = ["--metrics-listen", f"{LOOPBACK}:{metrics_port}"] if metrics_port else []
    d = run_stickyd(listen=[listen], args=["--config", str(cfg), "--admin-socket", sock,
                                           "--state-dir", str(tmp_path / f"state-{name}")] + metrics)
    wait_until(lambda: os.path.exists(sock), 10, what="admin socket")
    return d, AdminClient(sock)


def visit(addr, source: str) -> str:
    """One connection from `source`: the backend's name (it speaks first)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(5)
    s.bind((source, 0))
    s.connect(addr)
    data = b""
    while not data.endswith(b"\n"):
        chunk = s.recv(64)
        if not chunk:
            break
        data += chunk
    s.close()
    return data.decode().strip()


def pinned_on(admin: AdminClient, ip: str) -> str | None:
    pins = admin.json(f"show affinity {ip}").get("entries", [])
    return pins[0].get("target") if pins else None


def sources(n: int, base: int):
    return [f"127.0.{(base + i) // 250 + 1}.{(base + i) % 250 + 1}" for i in range(n)]


def test_two_instances_agree(run_stickyd, backend, tmp_path):
    backends = [backend(make_speak_first_handler(f"b{i}\n".encode()), name=f"b{i}") for i in range(3)]
    la, lb = fmt_addr(LOOPBACK, free_port()), fmt_addr(LOOPBACK, free_port())
    pa, pb = fmt_addr(LOOPBACK, free_port()), fmt_addr(LOOPBACK, free_port())
    a, admin_a = start(run_stickyd, tmp_path, "a", la, pa, "b", pb, backends)
    b, admin_b = start(run_stickyd, tmp_path, "b", lb, pb, "a", pa, backends)
    addr_a, addr_b = a.addr, b.addr

    def links_up() -> bool:
        return all(m["state"] == "up" and m["inbound"] for adm in (admin_a, admin_b)
                   for m in adm.json("show peers")["members"])
    wait_until(links_up, 15, what="both peer links up")

    # (a) Each client through A, then through B once B holds A's pin.
    lags = []
    violations = 0
    clients = sources(300, 0)
    for ip in clients:
        first = visit(addr_a, ip)
        t0 = time.monotonic()
        wait_until(lambda: pinned_on(admin_b, ip) is not None, 5, interval=0.002, what=f"pin of {ip} on b")
        lags.append(time.monotonic() - t0)
        if visit(addr_b, ip) != first:
            violations += 1
    lags.sort()
    p50, p99 = lags[len(lags) // 2] * 1000, lags[int(len(lags) * 0.99)] * 1000
    print(f"\npeers: violations={violations}/{len(clients)} pin_propagation_ms p50={p50:.1f} p99={p99:.1f} max={lags[-1] * 1000:.1f}")
    assert violations == 0
    assert p99 < 100, f"pins took {p99:.0f} ms (p99) to reach the other instance"

    # (e) Skew: one client holds 150 connections through A; new clients,
    # half first through A and half first through B, still agree.
    hog = "127.0.9.1"
    held = []
    for _ in range(150):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind((hog, 0))
        s.connect(addr_a)
        held.append(s)
    skew_violations = 0
    for n, ip in enumerate(sources(300, 1000)):
        first_addr, other, other_admin = (addr_a, addr_b, admin_b) if n % 2 else (addr_b, addr_a, admin_a)
        first = visit(first_addr, ip)
        wait_until(lambda: pinned_on(other_admin, ip) is not None, 5, interval=0.002, what=f"pin of {ip}")
        if visit(other, ip) != first:
            skew_violations += 1
    for s in held:
        s.close()
    print(f"peers: skewed violations={skew_violations}/300")
    assert skew_violations == 0

    # (c) B restarts: it pulls A's table before ready; nobody moves.
    before = {ip: visit(addr_a, ip) for ip in clients[:100]}
    b.stop(10)
    b2, admin_b2 = start(run_stickyd, tmp_path, "b", lb, pb, "a", pa, backends)
    b2.wait_for_output(r"peer table pulled", 5)
    moved = sum(visit(b2.addr, ip) != t for ip, t in before.items())
    peers = admin_b2.json("show peers")
    print(f"peers: after restart moved={moved}/100 sync={peers['sync']}")
    assert moved == 0
    assert peers["conflicts"] == 0


def peer_metrics(port: int) -> dict[str, dict[str, float]]:
    """{member: {series name: value}} for the per-member peer series."""
    out: dict[str, dict[str, float]] = {}
    for (name, labels), value in parse(scrape_raw(port)[2]).items():
        peer = dict(labels).get("peer")
        if name.startswith("stickyd_peer_") and peer is not None:
            out.setdefault(peer, {})[name] = value
    return out


def metrics_match_show_peers(admin: AdminClient, port: int) -> str | None:
    """None when every member's series say what `show peers` says, else
    the first difference (both read the peer service's one snapshot, so
    they agree once the figures hold still for a scrape)."""
    shown = {m["name"]: m for m in admin.json("show peers")["members"]}
    series = peer_metrics(port)
    for name, m in shown.items():
        want = {
            "stickyd_peer_up": 1.0 if m["state"] == "up" else 0.0,
            "stickyd_peer_inbound_up": 1.0 if m["inbound"] else 0.0,
            "stickyd_peer_pins_sent_total": float(m["pinsSent"]),
            "stickyd_peer_pins_received_total": float(m["pinsReceived"]),
            "stickyd_peer_pins_dropped_total": float(m["pinsDropped"]),
            "stickyd_peer_queued": float(m["queued"]),
            "stickyd_peer_connects_total": float(m["connects"]),
            "stickyd_peer_resyncs_total": float(m["resyncs"]),
        }
        got = series.get(name, {})
        for k, v in want.items():
            if got.get(k) != v:
                return f"{name} {k}: metrics {got.get(k)} show peers {v}"
    return None


def agree_within(admin: AdminClient, port: int, timeout: float) -> None:
    last = ["never compared"]

    def agree() -> bool:
        last[0] = metrics_match_show_peers(admin, port)
        return last[0] is None
    try:
        wait_until(agree, timeout, interval=0.1, what="metrics agree with show peers")
    except TimeoutError:
        raise AssertionError(f"metrics and show peers disagree: {last[0]}") from None


def test_peer_metrics_match_show_peers(run_stickyd, backend, tmp_path):
    """Per-member series for a member that is up (b) and one that never
    answers (c): the same figures as `show peers`."""
    backends = [backend(make_speak_first_handler(f"b{i}\n".encode()), name=f"b{i}") for i in range(3)]
    la, lb = fmt_addr(LOOPBACK, free_port()), fmt_addr(LOOPBACK, free_port())
    pa, pb, pc = (fmt_addr(LOOPBACK, free_port()) for _ in range(3))
    mport = free_port()
    a, admin_a = start(run_stickyd, tmp_path, "a", la, pa, "b", pb, backends, more_members=[("c", pc)],
                       metrics_port=mport)
    b, admin_b = start(run_stickyd, tmp_path, "b", lb, pb, "a", pa, backends)

    def b_up() -> bool:
        m = {m["name"]: m for m in admin_a.json("show peers")["members"]}
        return m["b"]["state"] == "up" and m["b"]["inbound"] and m["c"]["state"] != "up"
    wait_until(b_up, 15, what="a's link to b up")

    clients = sources(20, 3000)
    for ip in clients:
        visit(a.addr, ip)
    wait_until(lambda: all(pinned_on(admin_b, ip) for ip in clients), 10, what="pins on b")
    # c never answers: its 20 pins wait in its queue.
    agree_within(admin_a, mport, 10)
    series = peer_metrics(mport)
    print(f"\npeer metrics: b={series['b']} c={series['c']}")
    assert series["b"]["stickyd_peer_up"] == 1 and series["b"]["stickyd_peer_pins_sent_total"] >= len(clients)
    assert series["c"]["stickyd_peer_up"] == 0 and series["c"]["stickyd_peer_pins_sent_total"] == 0
    assert series["c"]["stickyd_peer_queued"] == len(clients)
    assert series["c"]["stickyd_peer_connects_total"] >= 1


def make_relay_handler(upstream: tuple[str, int]):
    """A TcpServer handler that relays both ways to `upstream`: stopping
    the server cuts every relayed connection, a link cut on demand."""
    def handle(server, conn, rec):
        up = socket.create_connection(upstream, timeout=5)
        conn.settimeout(None)
        up.settimeout(None)

        def pump(src, dst):
            try:
                while data := src.recv(65536):
                    dst.sendall(data)
            except OSError:
                pass
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        back = threading.Thread(target=pump, args=(up, conn), daemon=True)
        back.start()
        pump(conn, up)
        back.join(5)
        up.close()
    return handle


def table(admin: AdminClient) -> dict[str, str]:
    return {e["client"]: e["target"] for e in admin.json("show affinity web limit 100000").get("entries", [])}


def test_resync_after_a_cut_link_with_drops(run_stickyd, backend, tmp_path):
    """A's pushes to B go through a relay the test cuts. While it is cut,
    more clients are pinned on A than B's queue holds (peers.queue 1024):
    the rest are dropped. When the link is back, A resends its whole table
    and B ends with every pin, the dropped ones too."""
    backends = [backend(make_speak_first_handler(f"b{i}\n".encode()), name=f"b{i}") for i in range(3)]
    la, lb = fmt_addr(LOOPBACK, free_port()), fmt_addr(LOOPBACK, free_port())
    pa, pb_port = fmt_addr(LOOPBACK, free_port()), free_port()
    relay_port = free_port()
    relay = TcpServer(make_relay_handler((LOOPBACK, pb_port)), name="peer-relay", port=relay_port)
    try:
        mport = free_port()
        b, admin_b = start(run_stickyd, tmp_path, "b", lb, fmt_addr(LOOPBACK, pb_port), "a", pa, backends)
        a, admin_a = start(run_stickyd, tmp_path, "a", la, pa, "b", fmt_addr(LOOPBACK, relay_port), backends,
                           queue=1024, metrics_port=mport)

        def a_to_b() -> dict:
            return admin_a.json("show peers")["members"][0]
        wait_until(lambda: a_to_b()["state"] == "up", 15, what="a's link to b up (through the relay)")

        relay.stop()
        wait_until(lambda: a_to_b()["state"] != "up", 10, what="a's link to b down")
        clients = sources(1200, 5000)
        for ip in clients:
            visit(a.addr, ip)
        wait_until(lambda: a_to_b()["pinsDropped"] > 0, 5, what="pins for b dropped past the queue")
        cut = a_to_b()
        assert cut["queued"] == 1024, cut
        assert cut["resyncs"] == 0, cut

        relay = TcpServer(make_relay_handler((LOOPBACK, pb_port)), name="peer-relay", port=relay_port)
        t0 = time.monotonic()
        want = table(admin_a)
        assert set(want) >= set(clients)

        def b_has_all() -> bool:
            got = table(admin_b)
            return all(got.get(c) == t for c, t in want.items())
        wait_until(b_has_all, 20, interval=0.2, what="every pin of a on b after the link came back")
        took = time.monotonic() - t0
        back = a_to_b()
        print(f"\npeers resync: dropped={back['pinsDropped']} resyncs={back['resyncs']} "
              f"pins={len(want)} back_and_complete_s={took:.2f} (backoff included)")
        assert back["resyncs"] >= 1
        assert admin_b.json("show peers")["conflicts"] == 0
        agree_within(admin_a, mport, 10)
    finally:
        relay.stop()
