"""The soak's judgement: streams joined with stickyd's access log, failures
classified by cause, misrouting judged from the daemon's own `placement=`
records against the harness's timeline of what it did to each target, and
the report (JSON, text, PNG).
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from pathlib import Path

LINE = re.compile(r"(\w+)=(\S+)")
# Harness events that make a pin's target ineligible, by the move reason
# the daemon may give for them. A kill explains `down` (health checks or
# passive detection) and `connect_failed`; descriptor exhaustion makes
# connects and probes fail too.
# The daemon's own "target down" log lines (`health_down`) explain both as
# well: a probe that timed out on a loaded machine takes a live target
# down, and a down target is not an eligible pin.
EXPLAINS = {
    "target_down": {"kill", "fd_exhaustion", "health_down"},
    "connect_failed": {"kill", "fd_exhaustion", "health_down"},
    "target_drained": {"drain", "config_out"},
    "target_maint": {"maint"},
    "target_removed": {"remove", "config_out"},
    "age": {"age"},
}
# How far around a connection an event may lie and still explain it: health
# checks take `fall` probes (2 × 1 s) to take a target down and `rise` to
# bring it back, a drain's state lasts until `ready`, and so on.
SLACK_BEFORE = 15.0
SLACK_AFTER = 2.0


def parse_access_log(path: Path) -> list[dict]:
    out = []
    if not path.exists():
        return out
    for raw in path.read_text(errors="replace").splitlines():
        f = dict(LINE.findall(raw))
        if "client" not in f or "ts" not in f:
            continue
        # In whole milliseconds, then seconds: `ts - duration` in floats
        # makes two equal accept times unequal, and that decides an order.
        ts_ms = round(_wall(f["ts"]) * 1000)
        ts = ts_ms / 1000.0
        start = (ts_ms - int(f.get("duration_ms", "0"))) / 1000.0
        ip, _, port = f["client"].rpartition(":")
        placement = f.get("placement", "-")
        reason = None
        if placement.startswith("repin("):
            reason = placement[6:-1]
            placement = "repin"
        out.append({"ts": ts, "start": start, "ip": ip, "port": int(port), "target": f.get("target", "-"),
                    "pool": f.get("pool", ""), "reason": f.get("reason", ""), "placement": placement,
                    "move": reason, "up": int(f.get("bytes_up", 0)), "down": int(f.get("bytes_down", 0))})
    return out


def health_downs(daemon_log: Path) -> list[tuple[float, str, str]]:
    """The daemon's `target down` lines as (wall time, "health_down", target)."""
    out = []
    if not daemon_log.exists():
        return out
    for raw in daemon_log.read_text(errors="replace").splitlines():
        if 'msg="target down"' not in raw:
            continue
        ts = re.search(r"\bts=(\S+)", raw)
        target = re.search(r"\btarget=(\S+)", raw)
        if ts and target:
            out.append((_wall(ts.group(1)), "health_down", target.group(1)))
    return out


def daemon_complaints(daemon_log: Path) -> dict:
    """How often the daemon logged each warning or error message."""
    out: Counter = Counter()
    if daemon_log.exists():
        for m in re.finditer(r'level=(warning|error|critical) msg="([^"]*)"', daemon_log.read_text(errors="replace")):
            out[f"{m.group(1)}: {m.group(2)}"] += 1
    return dict(out)


def _wall(ts: str) -> float:
    import datetime
    return datetime.datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=datetime.timezone.utc).timestamp()


class Timeline:
    """What the harness did to each target (address), when (wall clock)."""

    def __init__(self, events: list[tuple[float, str, str]], down_spans: dict[str, list[tuple[float, float]]],
                 fd_spans: list[tuple[float, float]]) -> None:
        self.by_target: dict[str, list[tuple[float, str]]] = defaultdict(list)
        for at, kind, target in events:
            self.by_target[target].append((at, kind))
        for v in self.by_target.values():
            v.sort()
        self.down_spans = down_spans
        self.fd_spans = fd_spans
        self.disrupted = self._disruptions()

    # Which events start a disruption of a target and which end it. A
    # target counts as disrupted until RECOVERY_S after the undo: health
    # checks need `rise` probes (2 × 1 s) to take it back.
    STARTS = {"kill": "dead", "drain": "admin", "maint": "admin", "remove": "removed", "config_out": "file"}
    ENDS = {"restart": ("dead",), "ready": ("admin",), "add": ("removed", "admin"), "config_in": ("file",)}
    RECOVERY_S = 5.0

    def _disruptions(self) -> dict[str, list[tuple[float, float]]]:
        out: dict[str, list[tuple[float, float]]] = defaultdict(list)
        for target, events in self.by_target.items():
            open_: dict[str, float] = {}
            for at, kind in events:
                if kind in self.STARTS:
                    open_.setdefault(self.STARTS[kind], at)
                for k in self.ENDS.get(kind, ()):
                    if k in open_:
                        out[target].append((open_.pop(k), at + self.RECOVERY_S))
            for since in open_.values():
                out[target].append((since, float("inf")))
        return out

    def undisrupted(self, targets: list[str], lo: float, hi: float) -> int:
        """How many of `targets` the harness left alone over [lo, hi]."""
        return sum(1 for t in targets if not any(a <= hi and lo <= b for a, b in self.disrupted.get(t, [])))

    def explained(self, target: str, reason: str, lo: float, hi: float) -> bool:
        kinds = EXPLAINS.get(reason, set())
        if "fd_exhaustion" in kinds and any(a - SLACK_BEFORE <= hi and lo <= b + SLACK_BEFORE for a, b in self.fd_spans):
            return True
        if "kill" in kinds and any(a <= hi + SLACK_AFTER and lo - SLACK_BEFORE <= b
                                   for a, b in self.down_spans.get(target, [])):
            return True
        return any(lo - SLACK_BEFORE <= at <= hi + SLACK_AFTER and kind in kinds
                   for at, kind in self.by_target.get(target, []))

    def killed_during(self, target: str, lo: float, hi: float) -> bool:
        return any(a <= hi + 0.5 and lo <= b for a, b in self.down_spans.get(target, []))

    def eligible(self, target: str, lo: float, hi: float) -> bool:
        """No harness event that could have made `target` ineligible near [lo, hi]."""
        return not any(self.explained(target, r, lo, hi) for r in EXPLAINS)


def join(streams: list, access: list[dict]) -> dict:
    """Each stream's access log line, by (client ip, port). Ports are reused
    within seconds, so a line goes to the stream of that address whose time
    holds its accept (stickyd's clock is a few ms coarse; a connection the
    client gave up on may be accepted just after), at most one line each."""
    by_addr: dict[tuple[str, int], list] = defaultdict(list)
    for r in streams:
        by_addr[(r.ip, r.port)].append(r)

    def distance(a: dict, r) -> float:
        return max(0.0, r.start - a["start"], a["start"] - r.end)

    best: dict[int, tuple[float, dict]] = {}
    for a in access:
        cands = by_addr.get((a["ip"], a["port"]), [])
        r = min(cands, key=lambda r: distance(a, r), default=None)
        if r is None or distance(a, r) > 1.0:
            continue
        d = distance(a, r)
        if id(r) not in best or d < best[id(r)][0]:
            best[id(r)] = (d, a)
    return {k: a for k, (_, a) in best.items()}


def classify(streams: list, joined: dict, tl: Timeline, target_addr: dict[str, str],
             pool_targets: list[str]) -> Counter:
    """A failed stream's cause: the client's view, refined by the daemon's
    close reason and the harness's timeline."""
    causes: Counter = Counter()
    for r in streams:
        if r.outcome in ("ok", "reset_by_client"):
            continue
        if r.corrupted:
            causes["corrupted"] += 1
            continue
        a = joined.get(id(r))
        addr = target_addr.get(r.target) or (a["target"] if a else "-")
        if addr != "-" and tl.killed_during(addr, r.start, r.end):
            cause = "in_flight_on_killed_target"
        elif any(s - 1 <= r.end and r.start <= e + 5 for s, e in tl.fd_spans):
            cause = f"fd_exhaustion_window({a['reason'] if a else r.outcome})"
        elif a is not None and a["reason"] == "no_target":
            # Nowhere to go: because the harness had disrupted every target
            # (panic mode would serve), or although some were left alone
            # (a reload that did not restore a target, for one).
            left = tl.undisrupted(pool_targets, r.start, r.end)
            cause = "daemon_no_target(every target disrupted)" if left == 0 else \
                "daemon_no_target(some targets undisrupted)"
        elif a is not None and a["reason"] in ("connect_failed", "resources", "drain_deadline",
                                                "shutdown", "idle_timeout"):
            cause = f"daemon_{a['reason']}"
        elif a is not None and a["reason"] == "reset":
            cause = "reset_by_target" if addr != "-" and tl.killed_during(addr, r.start - 2, r.end + 2) else "reset"
        else:
            cause = f"client_{r.outcome}"
        causes[cause] += 1
    return causes


def misroutes(access: list[dict], streams: list, joined: dict, tl: Timeline,
              affinity_timeout: float) -> tuple[int, list[dict], Counter]:
    """Misrouted: a client sent to a target other than its pin while the pin
    was eligible. Per client, in the client's own order (streams) or by
    accept time (other clients), the pin is the target of its last placed
    connection; each line's `placement=` then says what the daemon did:
    - hit: must be the pin;
    - repin(REASON): the harness must have done something to the old pin's
      target that explains REASON (a kill for target_down, a drain...);
    - miss/spill to another target while the client had a recent pin: the
      pin was lost; a misroute if its target was eligible.
    Returns (count, examples, placements seen by kind)."""
    # A stream client runs one stream at a time: its lines go in the
    # client's order (its clock and count). stickyd's times are a few ms
    # coarse, and each batch of lines is stamped with its own wall-clock
    # offset, so they cannot order two streams a millisecond apart; they
    # place only the lines no stream claimed (bursts, gRPC, strays).
    order: dict[int, tuple[float, int]] = {}
    for r in streams:
        a = joined.get(id(r))
        if a is not None:
            order[id(a)] = (r.start, r.seq)
    per_client: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for a in access:
        per_client[(a["pool"], a["ip"])].append(a)
    kinds: Counter = Counter()
    bad: list[dict] = []
    for key, lines in per_client.items():
        lines.sort(key=lambda a: order.get(id(a), (a["start"], -1)))
        pin = None
        pin_at = 0.0
        for a in lines:
            p = a["placement"]
            kinds[p if p != "repin" else f"repin({a['move']})"] += 1
            if p == "-" or a["target"] == "-":
                continue
            if pin is not None:
                why = None
                if p == "hit" and a["target"] != pin:
                    why = "hit_on_another_target"
                elif p == "repin" and not tl.explained(pin, a["move"], pin_at, a["start"]):
                    why = f"repin({a['move']})_unexplained"
                elif p in ("miss", "spill") and a["target"] != pin and a["start"] - pin_at < affinity_timeout \
                        and tl.eligible(pin, pin_at, a["start"]):
                    why = "pin_lost_while_eligible"
                if why:
                    bad.append({"client": key[1], "pool": key[0], "why": why, "pin": pin,
                                "target": a["target"], "at": a["start"]})
            pin = a["target"]
            pin_at = a["start"]
    return len(bad), bad[:20], kinds


def write_report(out: Path, report: dict, samples: list[dict]) -> None:
    (out / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    lines = [f"stickyd soak: {report['seconds']} s, {report['streams']['total']} streams"]
    s = report["streams"]
    lines.append(f"  completed: {s['completed']} ({s['completed_pct']:.1f}%), "
                 f"{s['completed_pct_excl_killed']:.1f}% of those not in flight on a killed target")
    lines.append(f"  reset mid-stream by the client on purpose: {s['reset_by_client']}")
    lines.append(f"  corrupted: {report['corrupted']}   misrouted: {report['misrouted']}")
    lines.append("  failed by cause:")
    for cause, n in sorted(report["failed_by_cause"].items(), key=lambda kv: -kv[1]):
        lines.append(f"    {n:7d}  {cause}")
    lines.append(f"  by mode: {report['streams']['by_mode']}")
    lines.append(f"  placements (access log): {report['placements']}")
    g = report["greeter"]
    lines.append(f"  greeter calls: ok {g['ok']}, wrong answer {g['wrong']}, failed {g['failed']}")
    lines.append(f"  bursts: {report['bursts']}")
    lines.append(f"  actions: {report['actions']}")
    lines.append(f"  daemon warnings and errors: {report['daemon_complaints']}")
    d = report["daemon"]
    lines.append(f"  daemon RSS KiB: after warm-up {d['rss_warm_kib']}, end {d['rss_end_kib']} "
                 f"({d['rss_change_pct']:+.1f}%; an upgrade restarts it); growth within each process, "
                 f"KiB/min: {d['rss_growth_kib_per_min_by_pid']}")
    lines.append(f"  daemon fds under load: after warm-up {d['fds_warm']}, end {d['fds_end']}; "
                 f"idle: baseline {d['fds_idle_baseline']}, at the end {d['fds_idle_end']}")
    lines.append(f"  upgrades: {d['upgrades']}, daemon pids: {d['pids']}")
    if report["misrouted_examples"]:
        lines.append("  misrouted examples:")
        lines += [f"    {m}" for m in report["misrouted_examples"][:10]]
    if report.get("ci_failures"):
        lines.append("  CI CHECKS FAILED: " + "; ".join(report["ci_failures"]))
    text = "\n".join(lines) + "\n"
    (out / "report.txt").write_text(text)
    print(text, end="")
    plot(out / "soak.png", samples, report)


def plot(path: Path, samples: list[dict], report: dict) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("soak: matplotlib missing (make deps): no plot")
        return
    if not samples:
        return
    t0 = samples[0]["t"]
    t = [s["t"] - t0 for s in samples]
    fig, axes = plt.subplots(3, 1, figsize=(10, 8), sharex=True)
    axes[0].plot(t, [s["conn_rate"] for s in samples], lw=0.8, label="connections opened/s")
    axes[0].plot(t, [s["done_rate"] for s in samples], lw=0.8, label="streams completed/s")
    axes[0].set_ylabel("per second")
    axes[0].legend(loc="upper right", fontsize=8)
    axes[1].plot(t, [s["rss_kib"] / 1024 for s in samples], color="tab:red", lw=0.8)
    axes[1].set_ylabel("daemon RSS (MiB)")
    axes[2].plot(t, [s["fds"] for s in samples], color="tab:green", lw=0.8)
    axes[2].set_ylabel("daemon fds")
    axes[2].set_xlabel("seconds")
    for ax in axes:
        for at, kind in report.get("marks", []):
            ax.axvline(at - t0, color="grey", lw=0.5, ls=":" if kind != "upgrade" else "--")
        ax.grid(alpha=0.3)
    fig.suptitle(f"stickyd soak, {report['seconds']} s: {report['streams']['completed_pct']:.1f}% of "
                 f"{report['streams']['total']} streams completed, {report['corrupted']} corrupted, "
                 f"{report['misrouted']} misrouted (dashed: upgrade, dotted: burst)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def stream_summary(streams: list) -> dict:
    return {"by_mode": dict(Counter(r.mode for r in streams)),
            "bytes_checked": sum(r.received for r in streams)}

