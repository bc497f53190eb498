#!/usr/bin/env python3
"""Helper for Benchmarks/compare/run.sh (standard library only).

Subcommands:
  ports N                      print N distinct free 127.0.0.1 TCP ports, one a line,
                               chosen below the ephemeral range so that client sockets
                               cannot grab them between choosing and binding
  render TEMPLATE OUT K=V...   replace @K@ with V in TEMPLATE, write OUT
  wait-listen PORT SECS [PID [LOG PATTERN]]
                               poll (bounded) until 127.0.0.1:PORT is in LISTEN state
                               (read from /proc/net/tcp, so no probe connection is made);
                               fail early if PID dies; if LOG and PATTERN are given, also
                               wait until LOG contains PATTERN
  parse-iperf FILE             print the receiver's Gbit/s from `iperf3 -J` output
  parse-wrk FILE               print "req_per_s p99_ms errors" from wrk-report.lua output
  probe-http PORT [SECS]       GET http://127.0.0.1:PORT/ (bounded), expect "ok"
  cpu [PGID...]                print the CPU seconds (user+system, all threads) used so far
                               by every live process in these process groups (0 if none)
  parse-stickybench FILE       print "conn_per_s p99_ms violations spread errors clients_multi
                               all_connections" from `stickyctl bench --json` output
  idle-backend PORT            hold connections on 127.0.0.1:PORT until SIGTERM: send
                               "hello\n" on accept, echo what comes, close on EOF
  idle-measure PORT PGID N [WARMUP] [SRC_NET]
                               open N idle connections to 127.0.0.1:PORT (each from its own
                               source IP in SRC_NET, default 127.3.0.0/16; each gets the
                               greeting and one echoed line, then idles), read the RSS and fd
                               count of every process in PGID before and after, print JSON.
                               WARMUP connections (default 200, 16 echoes each) are made and
                               closed first, so that code pages, pools and buffer rings are
                               touched before "before" is read
  group-mem PGID [MIN_PROCS]   wait until PGID has MIN_PROCS processes and its RSS is steady
                               (bounded), print the VmRSS sum in bytes
  record JSONL K=V...          append one sample (a JSON object) to JSONL
  report JSONL META_JSON [OUT_JSON]
                               print the comparison table; write the results as JSON
"""
import json
import os
import random
import re
import socket
import statistics
import sys
import time

COLUMNS = ["direct", "refproxy", "stickyd-splice", "stickyd-copy", "haproxy", "nginx"]
# the minimal C proxy (refproxy.c): the ceiling every proxy is also divided by
REF = "refproxy"

# scenario id -> (label, unit, DESIGN.md target ratio for stickyd or None,
#                 reference ratios from DESIGN.md "Held to these figures")
SCENARIOS = {
    "bulk_up": ("bulk 1 stream, client->server", "Gbit/s", 0.70,
                {"haproxy": 0.46, "nginx": 0.44}),
    "bulk_down": ("bulk 1 stream, server->client", "Gbit/s", 0.70,
                  {"haproxy": 0.46, "nginx": 0.44}),
    "rr": ("keep-alive small requests", "req/s", 0.75,
           {"haproxy": 0.54, "nginx": 0.56}),
    # issue 3: stickyctl bench, 10k client IPs, 3 identity backends (bench_sticky_connrate)
    "connrate": ("sticky new conns, 10k IPs", "conn/s", 0.75,
                 {"haproxy": 0.50, "nginx": 0.51}),
    # idle proxied connection memory (bench_idle_memory): not a ratio; lower is better
    "idlemem": ("idle conn, user memory", "B/conn", None, {}),
}
# per-sample extras shown under a row: key -> how the rounds are combined
EXTRA_KEYS = {
    "connrate": (("violations", "sum"), ("spread", "max")),
    "idlemem": (("marginal", "median"), ("anon", "median"), ("reserved", "median"),
                ("with_reserved", "median"), ("fds_per_conn", "median"),
                ("rss_after_mib", "median")),
}
EXTRA_LABELS = {
    "violations": ("  violations [clients, all rounds]", "{:.0f}"),
    "spread": ("  spread max/mean [worst round]", "{:.3f}"),
    "marginal": ("  marginal, N/2..N [B/conn]", "{:,.0f}"),
    "anon": ("  anonymous memory only [B/conn]", "{:,.0f}"),
    "reserved": ("  reserved per conn slot [B]", "{:,.0f}"),
    "with_reserved": ("  growth + reserved slot [B/conn]", "{:,.0f}"),
    "fds_per_conn": ("  proxy fds per idle conn", "{:.2f}"),
    "rss_after_mib": ("  proxy RSS with N open [MiB]", "{:.1f}"),
}
# absolute targets (DESIGN.md "Held to these figures"), for rows that are not ratios
ABS_TARGETS = {"idlemem": {"stickyd_max_bytes_per_conn": 2048}}
# rows without a direct column (nothing to divide by)
NO_DIRECT = {"idlemem"}


def die(msg):
    print(f"bench.py: {msg}", file=sys.stderr)
    sys.exit(1)


def cmd_ports(args):
    n = int(args[0])
    lo = 20000
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            eph_lo = int(f.read().split()[0])
    except OSError:
        eph_lo = 32768
    hi = max(lo + 1000, eph_lo - 1)
    socks, ports = [], []
    tries = 0
    while len(ports) < n:
        tries += 1
        if tries > 5000:
            die("could not find free ports")
        p = random.randint(lo, hi)
        if p in ports:
            continue
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind(("127.0.0.1", p))
        except OSError:
            s.close()
            continue
        socks.append(s)
        ports.append(p)
    for s in socks:
        s.close()
    print("\n".join(str(p) for p in ports))


def cmd_render(args):
    tmpl, out = args[0], args[1]
    with open(tmpl) as f:
        text = f.read()
    for kv in args[2:]:
        k, _, v = kv.partition("=")
        text = text.replace(f"@{k}@", v)
    left = re.findall(r"@[A-Z][A-Z0-9_]*@", text)
    if left:
        die(f"{tmpl}: unreplaced placeholders {sorted(set(left))}")
    with open(out, "w") as f:
        f.write(text)


def listening(port):
    want = f"0100007F:{port:04X}"
    try:
        with open("/proc/net/tcp") as f:
            next(f)
            for line in f:
                parts = line.split()
                if parts[1] == want and parts[3] == "0A":
                    return True
    except OSError:
        pass
    return False


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie is not alive
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except OSError:
        return False


def cmd_wait_listen(args):
    port, secs = int(args[0]), float(args[1])
    pid = int(args[2]) if len(args) > 2 and args[2] else None
    log = args[3] if len(args) > 3 else None
    pattern = args[4] if len(args) > 4 else None
    deadline = time.monotonic() + secs
    while time.monotonic() < deadline:
        ok = listening(port)
        if ok and log and pattern:
            try:
                with open(log, errors="replace") as f:
                    ok = pattern in f.read()
            except OSError:
                ok = False
        if ok:
            return
        if pid is not None and not alive(pid):
            die(f"process {pid} exited before 127.0.0.1:{port} was ready")
        time.sleep(0.05)
    what = f"127.0.0.1:{port} listening"
    if log and pattern:
        what += f" and {pattern!r} in {log}"
    die(f"timed out after {secs:g}s waiting for {what}")


def cmd_parse_iperf(args):
    with open(args[0]) as f:
        text = f.read()
    try:
        d = json.loads(text)
    except ValueError:
        die(f"{args[0]}: not iperf3 JSON: {text[:200]!r}")
    if d.get("error"):
        die(f"iperf3: {d['error']}")
    bps = d["end"]["sum_received"]["bits_per_second"]
    print(f"{bps / 1e9:.3f}")


def cmd_parse_wrk(args):
    with open(args[0]) as f:
        text = f.read()
    m = re.search(r"^WRKJSON (.*)$", text, re.M)
    if not m:
        die(f"{args[0]}: no wrk result: {text[-300:]!r}")
    d = json.loads(m.group(1))
    errs = sum(d["errors"].values())
    rps = d["requests"] / (d["duration_us"] / 1e6)
    print(f"{rps:.1f} {d['p99_us'] / 1000:.3f} {errs}")


def cmd_probe_http(args):
    port = int(args[0])
    secs = float(args[1]) if len(args) > 1 else 3.0
    import http.client
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=secs)
        c.request("GET", "/")
        r = c.getresponse()
        body = r.read()
        c.close()
    except OSError as e:
        die(f"GET 127.0.0.1:{port}: {e}")
    if r.status != 200 or body.strip() != b"ok":
        die(f"GET 127.0.0.1:{port}: status {r.status}, body {body[:80]!r}")


def cmd_parse_stickybench(args):
    with open(args[0]) as f:
        text = f.read()
    try:
        d = json.loads(text)
    except ValueError:
        die(f"{args[0]}: not stickyctl bench JSON: {text[-300:]!r}")
    if not d.get("connections"):
        die(f"{args[0]}: no successful connection (errors {d.get('errors')})")
    print(f"{d['conn_per_s']:.1f} {d['latency_us']['p99'] / 1000:.3f} {d['violations']}"
          f" {d['spread_max_over_mean']:.4f} {d['errors']['total']} {d['clients_multi']}"
          f" {d['attempts'] + d['warmup']['connections'] + d['warmup']['errors']}")


def raise_nofile():
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def cmd_idle_backend(args):
    """A backend that holds connections: greeting on accept, echo, close on EOF."""
    import asyncio
    import signal
    port = int(args[0])
    raise_nofile()

    async def handle(reader, writer):
        try:
            writer.write(b"hello\n")
            await writer.drain()
            while True:
                data = await reader.read(4096)
                if not data:
                    break
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    async def main():
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=4096,
                                            reuse_address=True)
        print(f"holding on 127.0.0.1:{port}", flush=True)
        async with server:
            await stop.wait()

    asyncio.run(main())


def group_pids(pgid):
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                st = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(st[2]) == pgid and st[0] != "Z":
            pids.append(int(d))
    return sorted(pids)


def group_mem(pgid):
    """Sum of VmRSS and RssAnon (bytes) and open fds over the live processes of PGID."""
    rss = anon = fds = 0
    pids = group_pids(pgid)
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss += int(line.split()[1]) * 1024
                    elif line.startswith("RssAnon:"):
                        anon += int(line.split()[1]) * 1024
            fds += len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            pass
    return {"rss": rss, "anon": anon, "fds": fds, "pids": len(pids)}


def settled_mem(pgid, min_procs=1):
    """group_mem once the group has min_procs processes and two readings agree."""
    deadline = time.monotonic() + 5
    while len(group_pids(pgid)) < min_procs and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    m = group_mem(pgid)
    for _ in range(10):
        time.sleep(0.2)
        m2 = group_mem(pgid)
        if m2["rss"] == m["rss"] and m2["fds"] == m["fds"]:
            break
        m = m2
    return m


def cmd_group_mem(args):
    pgid = int(args[0])
    min_procs = int(args[1]) if len(args) > 1 else 1
    if not group_pids(pgid):
        die(f"group-mem: no process in group {pgid}")
    print(settled_mem(pgid, min_procs)["rss"])


def cmd_idle_measure(args):
    import ipaddress
    port, pgid, n = int(args[0]), int(args[1]), int(args[2])
    warmup = int(args[3]) if len(args) > 3 else 200
    net = ipaddress.ip_network(args[4] if len(args) > 4 else "127.3.0.0/16")
    nofile = raise_nofile()
    if n + 64 > nofile:
        die(f"idle-measure: {n} connections need more than the open-file limit {nofile}")
    if n + warmup > net.num_addresses - 2:
        die(f"idle-measure: {net} has too few addresses for {n + warmup} clients")
    if not group_pids(pgid):
        die(f"idle-measure: no process in group {pgid}")
    base = int(net.network_address) + 1
    deadline = time.monotonic() + 120   # bound on the whole opening phase

    def open_one(i, echoes=1):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.settimeout(5)
            s.bind((str(ipaddress.ip_address(base + i)), 0))
            s.connect(("127.0.0.1", port))
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(64)
                if not chunk:
                    raise OSError("EOF before greeting")
                buf += chunk
            if buf != b"hello\n":
                raise OSError(f"unexpected greeting {buf[:40]!r}")
            for _ in range(echoes):
                s.sendall(b"ping\n")
                buf = b""
                while not buf.endswith(b"\n"):
                    chunk = s.recv(64)
                    if not chunk:
                        raise OSError("EOF before echo")
                    buf += chunk
            return s
        except OSError:
            s.close()
            raise

    def open_many(first, count, echoes=1):
        socks = []
        try:
            for i in range(first, first + count):
                if time.monotonic() > deadline:
                    raise OSError("opening took longer than 120 s")
                socks.append(open_one(i, echoes))
        except OSError as e:
            for s in socks:
                s.close()
            die(f"idle-measure: connection {len(socks) + 1} of {count} to port {port}: {e}")
        return socks

    def settle():
        return settled_mem(pgid)

    # warmup: load code pages, thread stacks, lazily built tables, and cycle buffer
    # rings (a copy engine's provided buffers are used in ring order, so every
    # buffer's first page gets touched once, whatever the number of connections)
    for s in open_many(n, warmup, echoes=16):
        s.close()
    time.sleep(0.3)
    before = settle()
    t0 = time.monotonic()
    socks = open_many(0, n // 2)
    half = settle()
    socks += open_many(n // 2, n - n // 2)
    open_s = time.monotonic() - t0
    after = settle()
    for s in socks:
        s.close()
    time.sleep(0.3)
    closed = group_mem(pgid)
    out = {
        "connections": n, "warmup": warmup, "open_s": round(open_s, 3),
        "processes": after["pids"],
        "rss_before": before["rss"], "rss_half": half["rss"], "rss_after": after["rss"],
        "rss_after_close": closed["rss"],
        "bytes_per_conn": round((after["rss"] - before["rss"]) / n, 1),
        "bytes_per_conn_marginal": round((after["rss"] - half["rss"]) / (n - n // 2), 1),
        "anon_bytes_per_conn": round((after["anon"] - before["anon"]) / n, 1),
        "fds_per_conn": round((after["fds"] - before["fds"]) / n, 3),
    }
    print(json.dumps(out))


def cmd_cpu(args):
    pgids = {int(a) for a in args}
    total = 0
    if pgids:
        hz = os.sysconf("SC_CLK_TCK")
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open(f"/proc/{d}/stat") as f:
                    st = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            # after the comm field: state ppid pgrp session ... utime(12) stime(13)
            if int(st[2]) in pgids:
                total += int(st[11]) + int(st[12])
        print(f"{total / hz:.3f}")
    else:
        print("0")


def cmd_record(args):
    rec = {}
    for kv in args[1:]:
        k, _, v = kv.partition("=")
        try:
            v = float(v) if "." in v or "e" in v else int(v)
        except ValueError:
            pass
        rec[k] = v
    with open(args[0], "a") as f:
        f.write(json.dumps(rec) + "\n")


def fmt(v, unit):
    if v is None:
        return "n/a"
    if unit == "Gbit/s" or unit == "ms":
        return f"{v:.2f}"
    if unit == "B/conn":
        return f"{v:,.0f} B"
    return f"{v:,.0f}"


def compact(v, unit):
    if unit == "Gbit/s":
        return f"{v:.1f}"
    return f"{v / 1000:.1f}k" if v >= 1000 else f"{v:.0f}"


def cmd_report(args):
    jsonl, meta_path = args[0], args[1]
    out = args[2] if len(args) > 2 else ""
    with open(meta_path) as f:
        meta = json.load(f)
    samples = []
    if os.path.exists(jsonl):
        with open(jsonl) as f:
            samples = [json.loads(l) for l in f if l.strip()]
    status = meta.get("column_status", {})
    scen_order = [s for s in SCENARIOS if any(r["scenario"] == s for r in samples)
                  or s in meta.get("placeholders", {})]

    results = {}
    for s in scen_order:
        label, unit, target, ref = SCENARIOS[s]
        cols = {}
        for c in COLUMNS:
            rs = [r for r in samples if r["scenario"] == s and r["column"] == c]
            good = [r for r in rs if r.get("ok", 1)]
            entry = {"samples": [r["value"] for r in good],
                     "rounds": [r["round"] for r in good]}
            if s in meta.get("placeholders", {}):
                entry["status"] = "not implemented: " + meta["placeholders"][s]
                entry["value"] = None
            elif s in NO_DIRECT and c in ("direct", REF):
                entry["status"] = "not applicable"
                entry["value"] = None
            elif good:
                entry["value"] = round(statistics.median(entry["samples"]), 3)
                entry["status"] = "ok"
                if "p99_ms" in good[0]:
                    entry["p99_ms_samples"] = [r["p99_ms"] for r in good]
                    entry["p99_ms"] = round(statistics.median(entry["p99_ms_samples"]), 3)
                cpu = [r for r in good if "cpu_s" in r]
                if cpu:
                    # proxy CPU: percent of one core over the measurement, and per unit
                    entry["cpu_s_samples"] = [r["cpu_s"] for r in cpu]
                    # cpu_window_s / cpu_conns: the CPU was read over a longer window
                    # than the measurement (connrate: the warmup is included)
                    entry["cpu_pct"] = round(statistics.median(
                        100 * r["cpu_s"] / r.get("cpu_window_s", r["duration_s"])
                        for r in cpu), 1)
                    if unit == "Gbit/s":
                        entry["cpu_ms_per_GB"] = round(statistics.median(
                            1000 * r["cpu_s"] / max(1e-9, r["value"] * r["duration_s"] / 8)
                            for r in cpu), 2)
                    else:
                        entry["cpu_us_per_req"] = round(statistics.median(
                            1e6 * r["cpu_s"] / max(1e-9, r.get("cpu_conns")
                                                   or r["value"] * r["duration_s"])
                            for r in cpu), 2)
                if any(r.get("errors") for r in good):
                    entry["errors"] = sum(r.get("errors", 0) for r in good)
                for key, how in EXTRA_KEYS.get(s, ()):
                    xs = [r[key] for r in good if key in r]
                    if xs:
                        entry[key + "_samples"] = xs
                        entry[key] = round({"sum": sum, "max": max,
                                            "median": statistics.median}[how](xs), 4)
            else:
                entry["value"] = None
                entry["status"] = status.get(c) or (
                    "failed: " + rs[-1].get("error", "?") if rs else "n/a")
            cols[c] = entry
        d = cols["direct"]["value"]
        for c in COLUMNS:
            v = cols[c]["value"]
            cols[c]["ratio"] = round(v / d, 4) if (v is not None and d) else None
            # median of the per-round ratios (each against the same round's direct run)
            dr = dict(zip(cols["direct"]["rounds"], cols["direct"]["samples"]))
            pr = [x / dr[k] for k, x in zip(cols[c]["rounds"], cols[c]["samples"])
                  if dr.get(k)]
            cols[c]["ratio_paired"] = round(statistics.median(pr), 4) if pr else None
            # the same against refproxy (issue 13): the ratio that says how far a
            # proxy is from the best a two-connection proxy can do here
            rv = cols[REF]["value"]
            cols[c]["ratio_ref"] = round(v / rv, 4) if (v is not None and rv) else None
            rr = dict(zip(cols[REF]["rounds"], cols[REF]["samples"]))
            pr = [x / rr[k] for k, x in zip(cols[c]["rounds"], cols[c]["samples"]) if rr.get(k)]
            cols[c]["ratio_ref_paired"] = round(statistics.median(pr), 4) if pr else None
        results[s] = {"label": label, "unit": unit, "stickyd_target_ratio": target,
                      "design_reference_ratios": ref, "columns": cols}
        if s in ABS_TARGETS:
            results[s].update(ABS_TARGETS[s])
        if s in NO_DIRECT:
            results[s]["statistic"] = "median over rounds (no ratio: there is no direct path)"

    # ---- text table
    w0 = 38
    w = 16
    lines = []
    hdr = f"{'scenario':<{w0}}" + "".join(f"{c:>{w}}" for c in COLUMNS)
    lines.append(hdr)
    lines.append("-" * len(hdr))
    for s, r in results.items():
        unit = r["unit"]
        cells = []
        for c in COLUMNS:
            e = r["columns"][c]
            if e["value"] is None:
                cells.append("n/a" if not e["status"].startswith("not ") else "-")
            elif c == "direct" or e["ratio"] is None:
                cells.append(fmt(e["value"], unit))
            else:
                cells.append(f"{fmt(e['value'], unit)} ({e['ratio']:.2f})")
        lines.append(f"{(r['label'] + ' [' + unit + ']')[:w0]:<{w0}}"
                     + "".join(f"{x:>{w}}" for x in cells))
        if any("p99_ms" in r["columns"][c] for c in COLUMNS):
            cells = []
            for c in COLUMNS:
                e = r["columns"][c]
                cells.append(fmt(e.get("p99_ms"), "ms"))
            lines.append(f"{'  p99 latency [ms]':<{w0}}" + "".join(f"{x:>{w}}" for x in cells))
        for key, name in (("cpu_pct", "  proxy CPU [% of one core]"),
                          ("cpu_ms_per_GB", "  proxy CPU per GB [ms]"),
                          ("cpu_us_per_req", "  proxy CPU per request/conn [us]")):
            if any(key in r["columns"][c] for c in COLUMNS):
                cells = []
                for c in COLUMNS:
                    x = r["columns"][c].get(key)
                    cells.append("" if c == "direct" else
                                 "n/a" if x is None else f"{x:.1f}")
                lines.append(f"{name:<{w0}}" + "".join(f"{x:>{w}}" for x in cells))
        for key, how in EXTRA_KEYS.get(s, ()):
            name, kfmt = EXTRA_LABELS[key]
            if any(key in r["columns"][c] for c in COLUMNS):
                cells = []
                for c in COLUMNS:
                    x = r["columns"][c].get(key)
                    cells.append("" if x is None else kfmt.format(x))
                lines.append(f"{name:<{w0}}" + "".join(f"{x:>{w}}" for x in cells))
        cells = []
        for c in COLUMNS:
            sm = r["columns"][c].get("samples") or []
            cells.append(f"{compact(min(sm), unit)}..{compact(max(sm), unit)}"
                         if len(sm) > 1 else "")
        if any(cells):
            lines.append(f"{'  range over rounds':<{w0}}" + "".join(f"{x:>{w}}" for x in cells))
        cells = [""]
        for c in COLUMNS[1:]:
            x = r["columns"][c].get("ratio_paired")
            cells.append(f"({x:.2f})" if x is not None and len(r["columns"][c]["samples"]) > 1
                         else "")
        if any(cells):
            lines.append(f"{'  ratio, median of per-round ratios':<{w0}}"
                         + "".join(f"{x:>{w}}" for x in cells))
        cells = []
        for c in COLUMNS:
            e = r["columns"][c]
            x, xp = e.get("ratio_ref"), e.get("ratio_ref_paired")
            cells.append("" if c in ("direct", REF) or x is None else
                         f"{x:.3f}" + (f" ({xp:.2f})" if xp is not None and len(e["samples"]) > 1 else ""))
        if any(cells):
            lines.append(f"{'  RATIO TO REFPROXY (per-round)':<{w0}}"
                         + "".join(f"{x:>{w}}" for x in cells))
    lines.append("")
    lines.append("Values are medians over rounds; (x.xx) is the ratio to direct "
                 "(median / median of direct).")
    lines.append("RATIO TO REFPROXY: median / median of refproxy, the minimal C proxy "
                 "(refproxy.c); (x.xx) the median of per-round ratios.")
    lines.append("Proxy CPU is user+system time of the proxy's processes during the "
                 "measurement (loopback softirq work may land on any process).")
    lines.append("Target for stickyd (issue 13): >= 0.95 x refproxy for bulk both ways, "
                 "keep-alive and new conns (the old 0.70 / 0.75 of direct are out of reach "
                 "for any proxy that ends TCP twice).")
    if "connrate" in results:
        lines.append("Sticky conn/s: stickyctl bench, every client pinned by a warmup first; "
                     "violations = clients seen on 2 targets (summed over rounds), "
                     "spread = max/mean connections per backend (worst round).")
    if "idlemem" in results:
        lines.append("Idle memory: growth of the proxy's RSS (all its processes) per idle "
                     "proxied connection, fresh proxy each round; DESIGN.md target for "
                     "stickyd <= 2048 B.")
    for c in COLUMNS:
        st = status.get(c)
        if st:
            lines.append(f"{c}: {st}")
    for s_, note in meta.get("placeholders", {}).items():
        lines.append(f"{s_}: not measured: {note}")
    for s, r in results.items():
        for c in COLUMNS:
            e = r["columns"][c]
            if e.get("errors"):
                what = "wrk errors (non-2xx/socket)" if s == "rr" else "failed connections"
                lines.append(f"warning: {s}/{c}: {e['errors']} {what}")
            if e["status"].startswith("failed"):
                lines.append(f"warning: {s}/{c}: {e['status']}")
    print("\n".join(lines))

    if out:
        doc = {"meta": meta, "results": results}
        with open(out, "w") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")


def main():
    if len(sys.argv) < 2:
        die(__doc__)
    cmd, args = sys.argv[1], sys.argv[2:]
    fn = {"ports": cmd_ports, "render": cmd_render, "wait-listen": cmd_wait_listen,
          "parse-iperf": cmd_parse_iperf, "parse-wrk": cmd_parse_wrk,
          "parse-stickybench": cmd_parse_stickybench, "idle-backend": cmd_idle_backend,
          "idle-measure": cmd_idle_measure, "group-mem": cmd_group_mem,
          "record": cmd_record, "cpu": cmd_cpu, "probe-http": cmd_probe_http, "report": cmd_report}.get(cmd)
    if fn is None:
        die(f"unknown subcommand {cmd}\n{__doc__}")
    fn(args)


if __name__ == "__main__":
    main()
