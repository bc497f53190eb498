"""A small routed network in Linux network namespaces for test_ecmp.py.

    client ──┐                      ┌── lb0 (stickyd + BIRD, VIP on vip0)
             ├── router (BIRD, ECMP)├── lb1
    backend ─┘                      └── lb2

Every link is a veth pair between the router and one namespace, with its
own /24; every namespace's default route points at the router. The router
runs BIRD 2 with `merge paths on` and learns the VIP over BGP from each
balancer's BIRD, which announces it from its `direct` protocol while stickyd
holds it on vip0. The BIRD configs below are the ones docs/SCALING.md shows.

Everything made here is recorded as it is made and removed by `Lab.close`
(processes first, then namespaces), which the fixture calls in a `finally`.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

from support import ManagedProcess

VIP = "10.100.0.10"
VIP_PORT = 8080
ROUTER_AS, BALANCER_AS = 65000, 65001
CLIENT_NET = "10.200.0.0/21"  # client source addresses, each a /32 on the client's veth
BACKEND_IP = "10.92.0.2"
CLONE_NEWNET = 0x40000000
ROUTE_TABLE_BASE = 100  # flow pinning: table 100+n routes the VIP via balancer n

_libc = ctypes.CDLL(None, use_errno=True)


def client_ips(n: int, skip: int = 0) -> list[str]:
    """n addresses from CLIENT_NET (10.200.0.1 upwards, no .0 or .255)."""
    return [f"10.200.{(skip + i) // 254}.{(skip + i) % 254 + 1}" for i in range(n)]


def lb_ip(n: int) -> str:
    return f"10.91.{n}.2"


def router_bird_conf(balancers: int) -> str:
    peers = "\n".join(f'protocol bgp lb{n} from balancer {{ neighbor {lb_ip(n)} as {BALANCER_AS}; }}'
                      for n in range(balancers))
    return f"""\
# BIRD 2 on the router: every balancer's VIP path, merged into one ECMP route.
router id 10.90.0.1;
log stderr all;
protocol device {{ scan time 1; }}
protocol kernel {{
  ipv4 {{ export all; }};
  merge paths on;            # install all equal BGP paths as one multipath route
}}
template bgp balancer {{
  local as {ROUTER_AS};
  hold time 3;               # a silent balancer is dropped within 3 s
  keepalive time 1;
  connect delay time 1;      # (defaults 5 s, 120 s, 60-300 s: seconds, not minutes,
  connect retry time 1;      #  for a balancer that comes back)
  error wait time 1, 2;
  ipv4 {{ import all; export none; }};
}}
{peers}
"""


def balancer_bird_conf(n: int) -> str:
    return f"""\
# BIRD 2 on balancer lb{n}: announce what is on vip0 (the VIP, while stickyd holds it).
router id {lb_ip(n)};
log stderr all;
protocol device {{ scan time 1; }}
protocol direct vip {{
  ipv4;
  interface "vip0";          # only the VIP lives here
}}
protocol bgp to_router {{
  local {lb_ip(n)} as {BALANCER_AS};
  neighbor 10.91.{n}.1 as {ROUTER_AS};
  hold time 3;
  keepalive time 1;
  connect delay time 1;
  connect retry time 1;
  error wait time 1, 2;
  ipv4 {{
    import none;
    export where proto = "vip";
  }};
}}
"""


def flow_pinning_nft(balancers: int) -> str:
    """The router keeps an established flow on the balancer that got its SYN.

    Linux's multipath routing is stateless hash-threshold: when a path is
    added or removed, flows move between paths (not only the removed one's),
    and a moved flow reaches an instance that has no socket for it and is
    reset. `withdraw` can only let open connections finish if the router
    keeps them where they are: conntrack remembers the first packet's
    output interface as a mark, and an `ip rule` per mark routes the rest of
    the flow to that balancer."""
    elements = ", ".join(f'"lb{n}" : {n + 1}' for n in range(balancers))
    return f"""\
table ip flowpin {{
  chain post {{
    type filter hook postrouting priority mangle; policy accept;
    ip daddr {VIP} ct mark 0 ct mark set oifname map {{ {elements} }}
  }}
  chain pre {{
    type filter hook prerouting priority mangle; policy accept;
    ip daddr {VIP} ct mark != 0 meta mark set ct mark
  }}
}}
"""


def run(argv: list[str], input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=30)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: status {p.returncode}: {p.stderr.strip() or p.stdout.strip()}")
    return p


def why_no_netns() -> str | None:
    """The reason namespaces cannot be made here, or None if they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "bird", "birdc", "nft"):
        if shutil.which(tool) is None:
            return f"{tool} is missing (make deps installs iproute2, bird2 and nftables)"
    probe = f"stickyd-probe-{os.getpid()}"
    p = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, timeout=10)
    if p.returncode != 0:
        return f"`ip netns add` failed: {p.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=10)
    return None


STALE = re.compile(r"^se(\d+)-(router|client|backend|lb\d+)$")


def sweep_stale() -> list[str]:
    """Remove what a killed run left: a run whose fixture never reached its
    `finally` (SIGKILL, a timeout's SIGTERM) leaves its namespaces, and the
    processes inside them, behind. They are known by the name (a dead pid
    in it); only those are touched. Returns the namespaces removed."""
    removed = []
    for name in sorted(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else []:
        m = STALE.match(name)
        if not m or _alive(int(m.group(1))):
            continue
        pids = run(["ip", "netns", "pids", name], check=False).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        run(["ip", "netns", "del", name], check=False)
        removed.append(name)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def enter_netns(name: str) -> None:
    """Move the calling thread (only it) into namespace `name`."""
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {name}")
    finally:
        os.close(fd)


class Lab:
    """The namespaces, links, routes and processes of one test run."""

    def __init__(self, workdir: Path, balancers: int = 3) -> None:
        self.dir = workdir
        self.balancers = balancers
        tag = f"se{os.getpid()}"  # unique per run: parallel runs do not collide
        self.router, self.client, self.backend = f"{tag}-router", f"{tag}-client", f"{tag}-backend"
        self.lbs = [f"{tag}-lb{n}" for n in range(balancers)]
        self.namespaces: list[str] = []
        self.processes: list[ManagedProcess] = []

    # -- building ------------------------------------------------------------

    def ns(self, name: str, *cmd: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        return run(["ip", "netns", "exec", name, *cmd], input=input, check=check)

    def add_ns(self, name: str) -> None:
        run(["ip", "netns", "add", name])
        self.namespaces.append(name)
        run(["ip", "-n", name, "link", "set", "lo", "up"])
        # rp_filter off: replies from the VIP come back over any of the paths.
        for key in ("all", "default"):
            self.ns(name, "sysctl", "-qw", f"net.ipv4.conf.{key}.rp_filter=0")

    def link(self, peer_ns: str, router_side: str, subnet: int, third: int) -> None:
        """A veth from the router (`router_side`, .1) to peer_ns (`uplink`, .2)."""
        net = f"10.{subnet}.{third}"
        run(["ip", "-n", self.router, "link", "add", router_side, "type", "veth", "peer", "name", "uplink", "netns", peer_ns])
        run(["ip", "-n", self.router, "addr", "add", f"{net}.1/24", "dev", router_side])
        run(["ip", "-n", self.router, "link", "set", router_side, "up"])
        run(["ip", "-n", peer_ns, "addr", "add", f"{net}.2/24", "dev", "uplink"])
        run(["ip", "-n", peer_ns, "link", "set", "dev", "uplink", "up"])
        run(["ip", "-n", peer_ns, "route", "add", "default", "via", f"{net}.1"])

    def add_vip_interface(self, lb: str) -> None:
        """vip0: a dummy interface where the kernel has the driver; else one
        end of a veth pair whose other end stays in the namespace, up, and
        unused (the same to BIRD and to stickyd: an interface to hold the
        address, with no traffic through it)."""
        p = run(["ip", "-n", lb, "link", "add", "vip0", "type", "dummy"], check=False)
        if p.returncode != 0:
            run(["ip", "-n", lb, "link", "add", "vip0", "type", "veth", "peer", "name", "vip0peer"])
            run(["ip", "-n", lb, "link", "set", "vip0peer", "up"])
        run(["ip", "-n", lb, "link", "set", "vip0", "up"])

    def build(self, client_count: int, flow_pinning: bool = True, vip_on_lo: bool = True) -> None:
        """The namespaces and links. The two switches exist to show what each
        part is for: without either, `withdraw` resets open connections."""
        for name in (self.router, self.client, self.backend, *self.lbs):
            self.add_ns(name)
        r = self.router
        self.ns(r, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        # Policy 1: the hash includes the ports, so one client's connections
        # spread over the balancers (policy 0 would keep them on one).
        self.ns(r, "sysctl", "-qw", "net.ipv4.fib_multipath_hash_policy=1")
        self.link(self.client, "cl", 90, 0)
        self.link(self.backend, "be", 92, 0)
        for n, lb in enumerate(self.lbs):
            self.link(lb, f"lb{n}", 91, n)
            self.add_vip_interface(lb)
            # The VIP stays local on lo whether or not it is on vip0: vip0
            # only drives the announcement, so after `withdraw` the open
            # connections' packets are still delivered here.
            if vip_on_lo:
                run(["ip", "-n", lb, "route", "add", "local", f"{VIP}/32", "dev", "lo"])
            # Flow pinning's per-balancer route (see flow_pinning_nft).
            run(["ip", "-n", r, "route", "add", f"{VIP}/32", "via", lb_ip(n), "table", str(ROUTE_TABLE_BASE + n)])
            run(["ip", "-n", r, "rule", "add", "fwmark", str(n + 1), "lookup", str(ROUTE_TABLE_BASE + n), "pref", "100"])
        if flow_pinning:
            self.ns(r, "nft", "-f", "-", input=flow_pinning_nft(len(self.lbs)))
        run(["ip", "-n", r, "route", "add", CLIENT_NET, "via", "10.90.0.2"])
        batch = "".join(f"addr add {ip}/32 dev uplink\n" for ip in client_ips(client_count))
        run(["ip", "-n", self.client, "-batch", "-"], input=batch)

    def spawn(self, ns: str, argv: list[str], label: str) -> ManagedProcess:
        p = ManagedProcess(["ip", "netns", "exec", ns, *argv], label, self.dir / f"{label}-{len(self.processes)}.log")
        self.processes.append(p)
        return p

    def start_bird(self, ns: str, conf: str, label: str) -> ManagedProcess:
        path = self.dir / f"{label}.conf"
        path.write_text(conf)
        sock = self.dir / f"{label}.ctl"
        return self.spawn(ns, ["bird", "-f", "-c", str(path), "-s", str(sock), "-P", str(self.dir / f"{label}.pid")], label)

    def silence(self, ns: str) -> None:
        """The host stops answering, as after a power cut: every packet in or
        out of `ns` is dropped, so nothing (no FIN, no RST) tells the router;
        only its BGP hold timer does."""
        self.ns(ns, "nft", "-f", "-", input="""\
table inet powercut {
  chain in { type filter hook input priority -400; policy drop; }
  chain out { type filter hook output priority -400; policy drop; }
}
""")

    def unsilence(self, ns: str) -> None:
        self.ns(ns, "nft", "delete", "table", "inet", "powercut")

    # -- observing -----------------------------------------------------------

    def vip_paths(self) -> set[str]:
        """The router's next hops for the VIP: the balancers it sends new flows to."""
        out = run(["ip", "-j", "-n", self.router, "route", "show", f"{VIP}/32"]).stdout
        routes = json.loads(out or "[]")
        hops: set[str] = set()
        for route in routes:
            if "gateway" in route:
                hops.add(route["gateway"])
            for nh in route.get("nexthops", []):
                hops.add(nh["gateway"])
        return hops

    def vip_on_vip0(self, n: int) -> bool:
        out = run(["ip", "-j", "-n", self.lbs[n], "addr", "show", "dev", "vip0"]).stdout
        return any(a.get("local") == VIP for link in json.loads(out or "[]") for a in link.get("addr_info", []))

    # -- tearing down --------------------------------------------------------

    def close(self) -> list[str]:
        """Stop every process, then delete every namespace. Returns what went wrong."""
        problems = []
        for p in reversed(self.processes):
            try:
                status = p.stop(10)
            except Exception as exc:  # keep going: the namespaces must go too
                problems.append(f"stopping {p.label}: {exc}")
                continue
            if getattr(p, "expect_exit", False):
                continue
            if p.exited_on_its_own is not None:
                problems.append(f"{p.label} exited on its own (status {status}):\n{p.output_tail(40)}")
            elif p.label.startswith("stickyd") and status != 0:
                problems.append(f"{p.label} exited with status {status} after SIGTERM (want 0):\n{p.output_tail(40)}")
        for name in reversed(self.namespaces):
            p = run(["ip", "netns", "del", name], check=False)
            if p.returncode != 0:
                problems.append(f"ip netns del {name}: {p.stderr.strip()}")
        return problems


def kill(p: ManagedProcess) -> None:
    """SIGKILL, as a crash or a dead host would: nothing runs on the way out."""
    p.expect_exit = True
    p.send_signal(signal.SIGKILL)
    p.wait(10)
    p.stop(1)  # marks it stopped and closes its log


def monotonic_ms() -> float:
    return time.monotonic() * 1000
