"""DNS discovery (docs/DISCOVERY.md) against a real DNS server, Debian's
dnsmasq (the dnsmasq-base package: no system service), on a loopback port,
with the real daemon binary.

- A/AAAA with a port: the records come from an addn-hosts file the test
  rewrites and dnsmasq re-reads on SIGHUP; stickyd adds, drains (a target
  with a connection waits for it) and removes; a name with no records left
  drains everything.
- SRV: the lowest priority's records become targets, with their weights;
  while dnsmasq is down the lookups fail and the last answer stays (logged,
  counted, traffic flows); once it is back with other records, they are
  followed.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import struct

import pytest

from admin_support import connect_from, echo_check, make_named_handler
from rollout_support import AdminClient
from support import LOOPBACK, ManagedProcess, fmt_addr, free_port, wait_until

DNSMASQ = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
pytestmark = pytest.mark.skipif(not os.path.exists(DNSMASQ), reason="dnsmasq missing: run `make deps` (dnsmasq-base)")


def dns_answers(port: int, name: str, qtype: int = 1, timeout: float = 0.5) -> bool:
    """Whether a DNS server on 127.0.0.1:port answers a query (any answer)."""
    qid = random.randrange(65536)
    q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    q += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0" + struct.pack(">HH", qtype, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        try:
            s.sendto(q, (LOOPBACK, port))
            data, _ = s.recvfrom(4096)
        except OSError:
            return False
    return len(data) >= 12 and struct.unpack(">H", data[:2])[0] == qid


class Dnsmasq:
    """dnsmasq in the foreground on 127.0.0.1:port, the test domain local
    (answered from the files only: NXDOMAIN for what they lack), records
    from `conf` (SRV) and `hosts` (addresses, re-read on SIGHUP)."""

    def __init__(self, tmp_path, port: int) -> None:
        self.tmp_path = tmp_path
        self.port = port
        self.conf = tmp_path / "dnsmasq.conf"
        self.hosts = tmp_path / "dnsmasq.hosts"
        self.proc: ManagedProcess | None = None
        self.runs = 0
        self.conf.write_text("")
        self.hosts.write_text("")

    def start(self) -> None:
        self.runs += 1
        argv = [DNSMASQ, "--keep-in-foreground", "--log-facility=-", f"--conf-file={self.conf}", "--no-resolv",
                "--no-hosts", "--no-poll", f"--addn-hosts={self.hosts}", "--local=/test/", "--user=root",
                "--listen-address=127.0.0.1", "--bind-interfaces", f"--port={self.port}", "--pid-file="]
        self.proc = ManagedProcess(argv, f"dnsmasq#{self.runs}", self.tmp_path / f"dnsmasq-{self.runs}.log")
        wait_until(lambda: dns_answers(self.port, "probe.test"), 10, what="dnsmasq answering")

    def reload(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(10)
            self.proc = None


@pytest.fixture
def dnsmasq(tmp_path):
    d = Dnsmasq(tmp_path, free_port())
    yield d
    d.stop()


def start(run_stickyd, tmp_path, dns: str):
    listen = fmt_addr(LOOPBACK, free_port())
    cfg = tmp_path / "dns.yaml"
    cfg.write_text(f"""\
workers: 2
listeners:
  - address: {listen}
pools:
  - name: echo
    discovery:
      dns: {dns}
drain: {{ mode: strict, timeout: 30s, grace: 2s }}
""")
    sock = str(tmp_path / "admin.sock")
    d = run_stickyd(listen=[listen], args=["--config", str(cfg), "--admin-socket", sock, "--state-dir", "none"])
    wait_until(lambda: os.path.exists(sock), 10, what="admin socket")
    return d, AdminClient(sock)


def targets(admin: AdminClient) -> dict[str, dict]:
    return {t["address"]: t for t in admin.targets()}


def test_a_records_add_drain_and_remove(run_stickyd, backend, tmp_path, dnsmasq):
    # Three pods behind one name share a port, each on its own address.
    common = free_port()
    pods = {ip: backend(make_named_handler(ip), host=ip, name=ip, port=common) for ip in ("127.0.0.11", "127.0.0.12", "127.0.0.13")}
    dnsmasq.hosts.write_text("127.0.0.11 pods.test\n127.0.0.12 pods.test\n")
    dnsmasq.start()
    d, admin = start(run_stickyd, tmp_path, f'{{ name: pods.test, port: {common}, resolvers: ["127.0.0.1:{dnsmasq.port}"], interval: 2s }}')
    a = {ip: f"{ip}:{common}" for ip in pods}
    try:
        wait_until(lambda: set(targets(admin)) == {a["127.0.0.11"], a["127.0.0.12"]}, 15, what="two targets from A records")
        assert {t["origin"] for t in targets(admin).values()} == {"discovery"}
        # A client on .11 keeps its connection open through the change.
        held = None
        for i in range(40):
            s, name = connect_from(f"127.0.5.{i + 1}", d.addr)
            if name == "127.0.0.11":
                held = s
                break
            s.close()
        assert held is not None, "no client landed on 127.0.0.11"
        dnsmasq.hosts.write_text("127.0.0.12 pods.test\n127.0.0.13 pods.test\n")
        dnsmasq.reload()
        wait_until(lambda: targets(admin).get(a["127.0.0.13"], {}).get("state") == "ready", 15, what=".13 added")
        t = targets(admin)[a["127.0.0.11"]]
        assert t["state"] == "draining" and t["drain_mode"] == "strict" and t["connections"] == 1, t
        echo_check(held, b"the open connection runs on")
        held.close()
        wait_until(lambda: a["127.0.0.11"] not in targets(admin), 15, what=".11 removed once its connection closed")
        # No records at all: NXDOMAIN drains (and, idle, removes) the rest.
        dnsmasq.hosts.write_text("")
        dnsmasq.reload()
        wait_until(lambda: not targets(admin), 15, what="every target gone after NXDOMAIN")
        d.wait_for_output(r"the name has no records; its targets drain", 5)
    finally:
        admin.close()


def test_srv_priority_weight_and_a_failed_lookup_keeps_the_last_answer(run_stickyd, backend, tmp_path, dnsmasq):
    pods = {n: backend(make_named_handler(n), name=n) for n in ("a", "b", "c", "backup")}
    port = {n: int(s.addr.rsplit(":", 1)[1]) for n, s in pods.items()}

    def records(*names: str) -> None:
        lines = [f"srv-host=_echo._tcp.svc.test,{n}.test,{port[n]},{20 if n == 'backup' else 10},{3 if n == 'a' else 1}"
                 for n in names]
        dnsmasq.conf.write_text("\n".join(lines) + "\n")
        dnsmasq.hosts.write_text("".join(f"127.0.0.1 {n}.test\n" for n in pods))

    records("a", "b", "backup")
    dnsmasq.start()
    d, admin = start(run_stickyd, tmp_path, f'{{ name: _echo._tcp.svc.test, resolvers: ["127.0.0.1:{dnsmasq.port}"], interval: 2s }}')
    try:
        wait_until(lambda: set(targets(admin)) == {pods["a"].addr, pods["b"].addr}, 15, what="the priority-10 records")
        t = targets(admin)
        assert (t[pods["a"].addr]["weight"], t[pods["b"].addr]["weight"]) == (3, 1), t
        assert t[pods["a"].addr].get("name") == "a", t

        # dnsmasq goes away: lookups time out, the last answer stays.
        dnsmasq.stop()
        d.wait_for_output(r"discovery: source failed; keeping the last known targets", 20)
        assert admin.json("show stats")["discovery_failures"] >= 1
        assert set(targets(admin)) == {pods["a"].addr, pods["b"].addr}
        for i in range(4):
            s, name = connect_from(f"127.0.6.{i + 1}", d.addr)
            echo_check(s, b"served from the last answer")
            s.close()
            assert name in ("a", "b")

        # Back, with b gone and c new (SRV records are in the main file,
        # which dnsmasq reads at start).
        records("a", "c", "backup")
        dnsmasq.start()
        wait_until(lambda: set(targets(admin)) == {pods["a"].addr, pods["c"].addr}, 20, what="b removed, c added")
        d.wait_for_output(r"discovery: source answers; following it", 5)
    finally:
        admin.close()
