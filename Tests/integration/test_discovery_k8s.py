"""Kubernetes discovery (docs/DISCOVERY.md) against an API stand-in that
speaks the real list/watch protocol (kube_standin.py, which says what it
leaves out), with the real daemon binary.

- A bad kubeconfig is refused by check-config and at start, with its line.
- Losing the API keeps the targets and the traffic; the watch resumes (from
  its version, or with a relist after 410) when the API is back.
- A rollout driven only by EndpointSlice changes (ready, terminating, gone)
  under gRPC load: no failed call, no needless move.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from admin_support import connect_from, echo_check, make_named_handler
from kube_standin import KubeStandin, endpoint, kubeconfig, make_pki
from rollout_support import (AdminClient, GreeterLoad, Relay, Timeline, events_text, find_moves, last_pods,
                             phase_table, spread)
from support import LOOPBACK, fmt_addr, free_port, wait_until

SERVICE = "greeter"


@pytest.fixture
def standin(tmp_path):
    pki = make_pki(tmp_path)
    s = KubeStandin(pki)
    s.start()
    yield s
    s.stop()


def write_config(path, listen: str, kube: str, *, protocol: str = "tcp", extra: str = "") -> None:
    path.write_text(f"""\
workers: 2
listeners:
  - address: {listen}
pools:
  - name: greeter
    protocol: {protocol}
    discovery:
      kubernetes: {{ service: {SERVICE}, namespace: default, port: grpc, kubeconfig: {kube} }}
{extra}drain: {{ mode: strict, timeout: 10s, grace: 2s }}
""")


def start(run_stickyd, tmp_path, standin, *, client_cert: bool = False, **kw):
    """The daemon, authenticated by the stand-in's token, or by a client
    certificate from its CA (the kubeconfig's client-certificate/-key)."""
    listen = fmt_addr(LOOPBACK, free_port())
    pki = standin.pki
    kube = kubeconfig(tmp_path / "kubeconfig", standin.url, pki["ca.crt"], token=None if client_cert else standin.token,
                      cert=pki["client.crt"] if client_cert else None, key=pki["client.key"] if client_cert else None)
    cfg = tmp_path / "k8s.yaml"
    write_config(cfg, listen, str(kube), **kw)
    sock = str(tmp_path / "admin.sock")
    d = run_stickyd(listen=[listen], args=["--config", str(cfg), "--admin-socket", sock,
                                           "--state-dir", str(tmp_path / "state")])
    wait_until(lambda: os.path.exists(sock), 10, what="admin socket")
    return d, AdminClient(sock)


def targets(admin: AdminClient) -> dict[str, dict]:
    return {t["address"]: t for t in admin.targets()}


def stats(admin: AdminClient) -> dict:
    return admin.json("show stats")


def test_bad_kubeconfig_is_refused_with_its_line(stickyd_path, tmp_path, run_stickyd):
    kube = tmp_path / "kubeconfig"
    kube.write_text("""\
apiVersion: v1
kind: Config
current-context: test
clusters:
  - name: c
    cluster: { server: "http://127.0.0.1:8080" }
contexts:
  - name: test
    context: { cluster: c, user: u }
users:
  - name: u
    user: { token: x }
""")
    cfg = tmp_path / "k8s.yaml"
    write_config(cfg, fmt_addr(LOOPBACK, free_port()), str(kube))
    p = subprocess.run([str(stickyd_path), "check-config", str(cfg)], capture_output=True, text=True, timeout=30)
    assert p.returncode == 1, p
    assert f"{kube}:6:" in p.stderr and "must be an https:// URL" in p.stderr, p.stderr
    missing = tmp_path / "k8s-missing.yaml"
    write_config(missing, fmt_addr(LOOPBACK, free_port()), str(tmp_path / "nope"))
    p = subprocess.run([str(stickyd_path), "check-config", str(missing)], capture_output=True, text=True, timeout=30)
    assert p.returncode == 1 and f"{tmp_path / 'nope'}: cannot open" in p.stderr, p.stderr
    # The daemon refuses to start on it, with the same words.
    d = run_stickyd(listen=[fmt_addr(LOOPBACK, free_port())], wait_ready=False,
                    args=["--config", str(cfg), "--admin-socket", str(tmp_path / "a.sock"), "--state-dir", "none"])
    d.expect_exit = True
    status = d.wait(20)
    d.stop()  # reaps it; the fixture then leaves it alone
    assert status == 1, d.output_tail()
    assert "cannot start" in d.output() and f"{kube}:6:" in d.output(), d.output_tail()


def test_losing_the_api_keeps_targets_and_the_watch_resumes(run_stickyd, backend, tmp_path, standin):
    pods = [backend(make_named_handler(f"pod-{i}"), name=f"pod-{i}") for i in (1, 2, 3)]
    addr = {f"pod-{i}": pods[i - 1].addr for i in (1, 2, 3)}
    port = {n: int(a.rsplit(":", 1)[1]) for n, a in addr.items()}

    def publish(name: str, **conditions) -> None:
        standin.set_slice(f"{SERVICE}-{name}", SERVICE, [endpoint(LOOPBACK, pod=name, **conditions)], port[name])

    standin.set_service(SERVICE, 600)
    publish("pod-1")
    publish("pod-2")
    d, admin = start(run_stickyd, tmp_path, standin)
    try:
        wait_until(lambda: set(targets(admin)) == {addr["pod-1"], addr["pod-2"]}, 15, what="both pods as targets")
        t = targets(admin)
        assert {v["origin"] for v in t.values()} == {"discovery"}, t
        assert {v["name"] for v in t.values()} == {"pod-1", "pod-2"}, t
        assert "ORIGIN" in admin.command("show targets"), "the text table tells discovery targets apart"
        d.wait_for_output(r"affinity timeout from the Service.*timeout_s=600", 10)

        # The API goes away: the targets stay, new clients are still served.
        standin.stop()
        d.wait_for_output(r"discovery: source failed; keeping the last known targets", 20)
        # It keeps trying, backing off (0.5 s, 1 s, 2 s, ...), refused each time.
        wait_until(lambda: stats(admin)["discovery_failures"] >= 3, 20, what="retries while the API is away")
        assert set(targets(admin)) == {addr["pod-1"], addr["pod-2"]}
        for i in range(6):
            s, name = connect_from(f"127.0.3.{i + 1}", d.addr)
            echo_check(s, b"still here")
            s.close()
            assert name in ("pod-1", "pod-2")

        # While it is away, pod-3 comes and pod-1 starts terminating, and
        # the history is compacted: the resumed watch gets 410 and relists.
        publish("pod-3")
        publish("pod-1", ready=False, serving=True, terminating=True)
        standin.compact()
        standin.start()
        wait_until(lambda: targets(admin).get(addr["pod-3"], {}).get("state") == "ready", 40, what="pod-3 added after the API came back")
        wait_until(lambda: targets(admin).get(addr["pod-1"], {}).get("state") == "draining", 10, what="pod-1 draining")
        d.wait_for_output(r"discovery: source answers; following it", 10)
        assert stats(admin)["discovery_relists"] >= 1, stats(admin)

        # An operator's maint wins over what the endpoint says: pod-2's
        # slice changes (still ready), then pod-1's is deleted. The watch
        # keeps order, so once pod-1 is gone pod-2's event was applied too.
        assert admin.command(f"maint target {addr['pod-2']}").startswith("ok")
        publish("pod-2", ready=True)
        standin.delete_slice(f"{SERVICE}-pod-1")
        # Gone, with no connection: it leaves at once.
        wait_until(lambda: addr["pod-1"] not in targets(admin), 15, what="pod-1 removed")
        assert targets(admin)[addr["pod-2"]]["state"] == "maint"
        # The counters are another lock's than the registry's: wait for them.
        def changes() -> dict:
            return {k: v for k, v in stats(admin).items() if k.startswith("discovery_changes")}
        wait_until(lambda: changes()["discovery_changes_added"] == 3 and changes()["discovery_changes_removed"] == 1,
                   5, what="3 added and 1 removed counted")
    finally:
        admin.close()


# ---------------------------------------------------------------------------
# The rollout

CLIENTS = 12
POD_ARGS = ["--grace", "2"]


def test_rollout_driven_by_endpointslices_under_grpc_load(run_stickyd, greeter_pods, greeter_code, tmp_path, standin):
    """Each old pod is replaced as a Deployment's rolling update does it,
    seen only through the Service's EndpointSlices: a new pod becomes ready;
    the old one turns terminating (serving), which drains it (strict, with
    GOAWAY on h2c); once its connections are gone it gets SIGTERM (a preStop
    hook's wait); then its endpoint is deleted, and stickyd removes it."""
    pods = greeter_pods(3, extra=POD_ARGS)
    pod_addr = {name: addr for name, addr, _ in pods}
    port = {name: int(addr.rsplit(":", 1)[1]) for name, addr, _ in pods}

    def publish(name: str, **conditions) -> None:
        standin.set_slice(f"{SERVICE}-{name}", SERVICE, [endpoint(LOOPBACK, pod=name, **conditions)], port[name])

    for name, _, _ in pods:
        publish(name)
    d, admin = start(run_stickyd, tmp_path, standin, protocol="h2c", client_cert=True,
                     extra="    affinity: { balance_factor: 1.25 }\n")
    wait_until(lambda: len(targets(admin)) == 3, 15, what="3 pods as targets")
    sources = {i: f"127.0.4.{i + 1}" for i in range(CLIENTS)}
    relays = [Relay(d.addr, sources[i], f"relay-{i}") for i in range(CLIENTS)]
    load = GreeterLoad(relays, deadline_s=5.0, retry_cancelled=False)
    timeline = Timeline()
    new_pods: list[str] = []
    drain_s: dict[str, float] = {}
    t0 = time.monotonic()
    try:
        timeline.begin("before", t0)
        load.start()
        load.wait_each_succeeded(t0, 20, 30, "warm-up")
        for name, addr, proc in pods:
            timeline.begin(f"replace {name}", time.monotonic())
            [(new_name, new_addr, _)] = greeter_pods(1, extra=POD_ARGS)
            new_pods.append(new_name)
            pod_addr[new_name] = new_addr
            port[new_name] = int(new_addr.rsplit(":", 1)[1])
            publish(new_name)
            wait_until(lambda: targets(admin).get(new_addr, {}).get("state") == "ready", 15, what=f"{new_name} added")
            timeline.drained[name] = time.monotonic()
            publish(name, ready=False, serving=True, terminating=True)
            wait_until(lambda: targets(admin).get(addr, {}).get("state") == "draining", 15, interval=0.01,
                       what=f"{name} draining")
            wait_until(lambda: targets(admin)[addr]["connections"] == 0, 15, what=f"{name}'s connections gone")
            drain_s[name] = time.monotonic() - timeline.drained[name]
            timeline.stopped[name] = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(15) == 0
            standin.delete_slice(f"{SERVICE}-{name}")
            wait_until(lambda: addr not in targets(admin), 15, what=f"{name} removed")
            timeline.removed[name] = time.monotonic()
            load.wait_each_succeeded(timeline.removed[name], 10, 20, f"after replacing {name}")
        t_tail = time.monotonic()
        timeline.begin("after", t_tail)
        load.wait_each_succeeded(t_tail, 20, 20, "tail load")
        final_stats = stats(admin)
    finally:
        stuck = load.stop(10)
        timeline.finish(time.monotonic())
        for r in relays:
            r.stop()
        admin.close()
    assert not stuck and not load.crashes, (stuck, load.crashes)
    calls = load.snapshot()
    failed = [c for c in calls if c.pod is None]
    moves = find_moves(calls, timeline)
    needless = [m for m in moves if not m.needed]
    final = spread(last_pods(calls), new_pods)
    changes = {k: v for k, v in final_stats.items() if k.startswith("discovery_changes")}
    report = (f"EndpointSlice rollout: calls={len(calls)} failed={len(failed)} moves={len(moves)} "
              f"needless={len(needless)} drain_s={ {k: round(v, 2) for k, v in drain_s.items()} } "
              f"final_spread={final} goaways_drain={final_stats.get('goaways_sent_drain')} {changes}\n\n"
              f"events:\n{events_text(timeline, t0)}\n\n{phase_table(calls, timeline, CLIENTS, t0, None, sources)}\n"
              + "\n".join(f"  failed {c.start - t0:.2f}s client {c.client}: {c.code} {c.detail}" for c in failed[:20]))
    print("\n" + report)
    assert not failed, f"{len(failed)} failed calls\n{report}"
    assert not needless, f"needless moves\n{report}"
    assert changes["discovery_changes_added"] == 6 and changes["discovery_changes_removed"] == 3, report
