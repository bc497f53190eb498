import Foundation
import Glibc
import StickyCore
import StickyDataPlane

extension ControlPlane {
    func info(now: Millis) -> AdminAnswer {
        let r = registry
        let reports = collect()
        let active = reports.reduce(0) { $0 + $1.counters.active }
        let accepted = reports.reduce(UInt64(0)) { $0 + $1.counters.accepted }
        let persistError = state.withLock { $0.lastPersistError }
        let fields: [(String, String)] = [
            ("version", StickyVersion.string),
            ("pid", "\(getpid())"),
            ("uptime_s", "\((now - startedMs) / 1000)"),
            ("workers", "\(reports.count)"),
            ("engine", config.engine.rawValue),
            ("pools", "\(r.pools.count)"),
            ("targets", "\(r.pools.reduce(0) { $0 + $1.targets.count })"),
            ("connections_active", "\(active)"),
            ("connections_accepted", "\(accepted)"),
            ("max_connections", "\(config.limits.maxConnections)"),
            ("state_file", stateFilePath ?? "none"),
            ("state_file_error", persistError ?? "none"),
        ]
        return AdminAnswer(text: fields.map { "\($0.0): \($0.1)" }.joined(separator: "\n"),
                           json: AdminFormat.json(Dictionary(uniqueKeysWithValues: fields)))
    }

    func stats() -> AdminAnswer {
        let reports = collect()
        var c = WorkerCounters()
        for r in reports {
            let w = r.counters
            c.accepted += w.accepted
            c.active += w.active
            c.rejectedFull += w.rejectedFull
            c.acceptErrors += w.acceptErrors
            c.acceptPauses += w.acceptPauses
            c.descriptorExhaustion += w.descriptorExhaustion
            c.connectErrors += w.connectErrors
            c.connectTimeouts += w.connectTimeouts
            c.connectRetries += w.connectRetries
            c.bytesUp += w.bytesUp
            c.bytesDown += w.bytesDown
            c.pipeWaits += w.pipeWaits
            c.bufferStarvations += w.bufferStarvations
            c.drainCuts += w.drainCuts
            c.proxyHeadersReceived += w.proxyHeadersReceived
            c.proxyHeadersSent += w.proxyHeadersSent
            c.proxySendFailures += w.proxySendFailures
            for k in c.proxyRejected.indices { c.proxyRejected[k] += w.proxyRejected[k] }
            for k in c.closed.indices { c.closed[k] += w.closed[k] }
        }
        var a = AffinityCounters()
        for r in reports {
            for p in r.pools {
                a.hits += p.affinity.hits
                a.misses += p.affinity.misses
                a.spills += p.affinity.spills
                a.expirations += p.affinity.expirations
                a.evictions += p.affinity.evictions
                a.unrecorded += p.affinity.unrecorded
                a.noTarget += p.affinity.noTarget
                a.size += p.affinity.size
                for reason in MoveReason.allCases { a.moves[reason] += p.affinity.moves[reason] }
            }
        }
        var fields: [(String, UInt64)] = [
            ("connections_accepted", c.accepted), ("connections_active", UInt64(c.active)),
            ("connections_rejected_full", c.rejectedFull), ("accept_errors", c.acceptErrors),
            ("accept_pauses", c.acceptPauses), ("descriptor_exhaustion", c.descriptorExhaustion),
            ("connect_errors", c.connectErrors), ("connect_timeouts", c.connectTimeouts),
            ("connect_retries", c.connectRetries), ("bytes_client_to_target", c.bytesUp),
            ("bytes_target_to_client", c.bytesDown), ("pipe_waits", c.pipeWaits),
            ("buffer_starvations", c.bufferStarvations), ("drain_deadline_cuts", c.drainCuts),
            ("affinity_hits", a.hits), ("affinity_misses", a.misses), ("affinity_spills", a.spills),
            ("affinity_expirations", a.expirations), ("affinity_evictions", a.evictions),
            ("affinity_unrecorded", a.unrecorded), ("affinity_no_target", a.noTarget),
            ("affinity_entries", UInt64(a.size)),
        ]
        for reason in MoveReason.allCases { fields.append(("affinity_moves_\(reason)", a.moves[reason])) }
        fields.append(("proxy_headers_received", c.proxyHeadersReceived))
        fields.append(("proxy_headers_sent", c.proxyHeadersSent))
        fields.append(("proxy_send_failures", c.proxySendFailures))
        for reason in ProxyRejection.allCases {
            fields.append(("proxy_rejected_\(reason.metricName)", c.proxyRejected[Int(reason.rawValue)]))
        }
        for reason in CloseReason.allCases where reason != .none {
            fields.append(("closed_\(reason.metricName)", c.closed[Int(reason.rawValue)]))
        }
        return AdminAnswer(text: fields.map { "\($0.0): \($0.1)" }.joined(separator: "\n"),
                           json: AdminFormat.json(Dictionary(uniqueKeysWithValues: fields.map { ($0.0, $0.1) })))
    }

    func targets(_ r: TargetRegistry, pool: String?, now: Millis) -> AdminAnswer {
        // Entry counts walk every worker's table: only `show targets` pays.
        let loads = ControlPlane.loads(collect(entries: true))
        var rows: [[String]] = []
        var objects: [[String: Any]] = []
        for (p, pr) in r.pools.enumerated() where pool == nil || pr.name == pool {
            for t in pr.targets {
                let l = loads[p]?[t.spec.address] ?? TargetLoad(address: t.spec.address)
                var stateText = "ready"
                var drainText = "-"
                var drainLeftMs: Millis?
                switch t.state {
                case .ready: stateText = "ready"
                case .down: stateText = "down"
                case .maint: stateText = "maint"
                case .draining(let m): stateText = "draining(\(m.rawValue))"
                }
                if let d = t.drain {
                    drainLeftMs = max(0, d.deadlineMs - now)
                    // Whole seconds, rounded up: "0s" only once it is over.
                    drainText = d.expired ? "expired" : "\((max(0, d.deadlineMs - now) + 999) / 1000)s"
                }
                let health = healthFields(pool: p, record: t, now: now)
                rows.append([pr.name, "\(t.spec.address)", t.spec.name ?? "-", stateText, "\(t.spec.weight)",
                             "\(l.connections)", "\(l.affinityEntries)", "\(l.connectionsTotal)",
                             "\(l.bytesUp)", "\(l.bytesDown)", drainText, health.text, health.changes])
                var o: [String: Any] = [
                    "pool": pr.name, "address": "\(t.spec.address)", "state": stateText.split(separator: "(").first.map(String.init) ?? stateText,
                    "weight": t.spec.weight, "connections": l.connections, "affinity_entries": l.affinityEntries,
                    "connections_total": l.connectionsTotal, "bytes_in": l.bytesUp, "bytes_out": l.bytesDown,
                    "origin": t.origin.rawValue,
                ]
                if let n = t.spec.name { o["name"] = n }
                if case .draining(let m) = t.state { o["drain_mode"] = m.rawValue }
                if let left = drainLeftMs { o["drain_remaining_ms"] = left }
                if let d = t.drain { o["drain_expired"] = d.expired }
                o["connect_failures"] = l.connectFailures
                o.merge(health.json) { a, _ in a }
                objects.append(o)
            }
        }
        let header = ["POOL", "ADDRESS", "NAME", "STATE", "WEIGHT", "CONNS", "AFFINITY", "TOTAL", "BYTES_IN", "BYTES_OUT", "DRAIN_LEFT",
                      "HEALTH", "HEALTH_CHANGES"]
        return AdminAnswer(text: AdminFormat.table(header, rows), json: AdminFormat.json(["targets": objects]))
    }

    func affinity(_ r: TargetRegistry, pool: Int?, client: IPAddress?, limit: Int, now: Millis) -> AdminAnswer {
        let reports = collect(PinQuery(pool: pool, client: client, limit: limit))
        var rows: [[String]] = []
        var objects: [[String: Any]] = []
        let nowSec = UInt32(truncatingIfNeeded: now / 1000)
        for (w, report) in reports.enumerated() {
            for (p, pin) in report.pins.prefix(limit - rows.count) {
                let target = pin.address.map { "\($0)" } ?? "(gone)"
                let idle = nowSec &- pin.seenSec
                rows.append([r.pools.indices.contains(p) ? r.pools[p].name : "\(p)", "\(pin.key.address)", target,
                             "\(pin.connections)", "\(idle)", "\(w)"])
                objects.append(["pool": r.pools.indices.contains(p) ? r.pools[p].name : "\(p)", "client": "\(pin.key.address)",
                                "target": target, "connections": pin.connections, "idle_s": idle, "worker": w])
            }
        }
        let header = ["POOL", "CLIENT", "TARGET", "CONNS", "IDLE_S", "WORKER"]
        return AdminAnswer(text: AdminFormat.table(header, rows), json: AdminFormat.json(["entries": objects]))
    }
}

/// An answer in both forms; the request picks one.
struct AdminAnswer {
    var text: String
    var json: String
    static func ok(_ message: String) -> AdminAnswer {
        AdminAnswer(text: "ok: \(message)", json: AdminFormat.json(["result": "ok", "message": message]))
    }
}

enum AdminFormat {
    static func json(_ object: Any) -> String {
        guard let data = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]),
              let s = String(data: data, encoding: .utf8) else { return "{\"error\":\"internal: unencodable answer\"}" }
        return s
    }

    static func jsonError(_ message: String) -> String { json(["error": message]) }

    /// Left-aligned columns, two spaces apart.
    static func table(_ header: [String], _ rows: [[String]]) -> String {
        var widths = header.map(\.count)
        for r in rows { for (i, c) in r.enumerated() { widths[i] = max(widths[i], c.count) } }
        func line(_ cells: [String]) -> String {
            cells.enumerated().map { i, c in
                i == cells.count - 1 ? c : c.padding(toLength: widths[i], withPad: " ", startingAt: 0)
            }.joined(separator: "  ")
        }
        return ([line(header)] + rows.map(line)).joined(separator: "\n")
    }
}
