import Foundation
import Glibc
import StickyCore
import StickyDataPlane

extension ControlPlane {
    func info(now: Millis) -> AdminAnswer {
        let r = registry
        let reports = collect()
        let active = reports.reduce(0) { $0 &+ $1.counters[.active] }
        let accepted = reports.reduce(0) { $0 &+ $1.counters[.accepted] }
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

    /// `show stats`: every field of `CounterTable` with a `stat` key, in
    /// the table's order, summed over the workers (and their pools).
    func stats() -> AdminAnswer {
        let reports = collect()
        var workers = WorkerCounters()
        for r in reports { workers.add(r.counters) }
        let pools = reports.flatMap { $0.pools.map(\.affinity) }
        var fields: [(String, UInt64)] = []
        for f in CounterTable.fields {
            guard let key = f.stat else { continue }
            switch f.source {
            case .worker(let c):
                fields.append((key, workers[c]))
            case .workerFamily(let family):
                for (label, value) in workers.series(family) { fields.append(("\(key)_\(label)", value)) }
            case .affinity(let a):
                fields.append((key, pools.reduce(0) { $0 &+ a.value(in: $1) }))
            case .affinityMoves:
                var sums = AffinityCounters().moveSeries
                for p in pools {
                    for (i, m) in p.moveSeries.enumerated() { sums[i].value &+= m.value }
                }
                for (label, value) in sums { fields.append(("\(key)_\(label)", value)) }
            case .target, .process:
                preconditionFailure("show stats has no per-target or process fields: \(key)")
            }
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
