import Glibc
import StickyCore
import StickyDataPlane

// The read-only answers, built from the registry and fresh worker reports.
// Their text and JSON forms are the core's (Admin/AdminAnswers.swift).

extension ControlPlane {
    func info(now: Millis) -> InfoAnswer {
        let r = registry
        let reports = collect()
        let persistError = state.withLock { $0.lastPersistError }
        return InfoAnswer(
            version: StickyVersion.string, pid: getpid(), uptimeS: (now - startedMs) / 1000, workers: reports.count,
            engine: config.engine.rawValue, pools: r.pools.count, targets: r.pools.reduce(0) { $0 + $1.targets.count },
            connectionsActive: reports.reduce(0) { $0 &+ $1.counters[.active] },
            connectionsAccepted: reports.reduce(0) { $0 &+ $1.counters[.accepted] },
            maxConnections: config.limits.maxConnections, stateFile: stateFilePath, stateFileError: persistError)
    }

    /// `show stats`: every field of `CounterTable` with a `stat` key, in
    /// the table's order, summed over the workers (and their pools).
    func stats() -> StatsAnswer {
        let reports = collect()
        var workers = WorkerCounters()
        for r in reports { workers.add(r.counters) }
        let pools = reports.flatMap { $0.pools.map(\.affinity) }
        var entries: [StatsAnswer.Entry] = []
        for f in CounterTable.fields {
            guard let key = f.stat else { continue }
            switch f.source {
            case .worker(let c):
                entries.append(.init(key, workers[c]))
            case .workerFamily(let family):
                for (label, value) in workers.series(family) { entries.append(.init("\(key)_\(label)", value)) }
            case .affinity(let a):
                entries.append(.init(key, pools.reduce(0) { $0 &+ a.value(in: $1) }))
            case .affinityMoves:
                var sums = AffinityCounters().moveSeries
                for p in pools {
                    for (i, m) in p.moveSeries.enumerated() { sums[i].value &+= m.value }
                }
                for (label, value) in sums { entries.append(.init("\(key)_\(label)", value)) }
            case .discovery(let figure):
                entries += discoveryStats(figure, key: key)
            case .panic(let figure):
                let (r, book) = registryAndHealth
                entries.append(.init(key, r.pools.indices.reduce(0) { $0 &+ figure.value(pool: $1, in: book) }))
            case .target, .process, .peer:
                preconditionFailure("show stats has no per-target, peer or process fields: \(key)")
            }
        }
        return StatsAnswer(entries: entries)
    }

    func targets(_ r: TargetRegistry, pool: String?, now: Millis) -> TargetsAnswer {
        // Entry counts walk every worker's table: only `show targets` pays.
        let loads = ControlPlane.loads(collect(entries: true))
        var rows: [TargetRow] = []
        for (p, pr) in r.pools.enumerated() where pool == nil || pr.name == pool {
            for t in pr.targets {
                let l = loads[p]?[t.spec.address] ?? TargetLoad(address: t.spec.address)
                var row = TargetRow(pool: pr.name, address: "\(t.spec.address)", name: t.spec.name, state: t.state.name,
                                    weight: t.spec.weight, origin: t.origin, connections: l.connections,
                                    affinityEntries: l.affinityEntries, connectionsTotal: l.connectionsTotal,
                                    bytesIn: l.bytesUp, bytesOut: l.bytesDown, connectFailures: l.connectFailures)
                if config.pools.indices.contains(p) && config.pools[p].wireProtocol == .h2c {
                    row.goawaysSent = l.goawaysSent
                    row.goawayClosed = l.goawayClosed
                    row.openAtDeadline = l.openAtDeadline
                }
                if case .draining(let m) = t.state { row.drainMode = m }
                if let d = t.drain {
                    row.drainRemainingMs = max(0, d.deadlineMs - now)
                    row.drainExpired = d.expired
                    if case .draining = t.state { row.drainBy = d.cause }
                    if d.removeAtDeadline { row.leaving = true }
                }
                addHealth(to: &row, pool: p, record: t, now: now)
                rows.append(row)
            }
        }
        return TargetsAnswer(targets: rows)
    }

    func affinity(_ r: TargetRegistry, pool: Int?, client: IPAddress?, limit: Int, now: Millis) -> AffinityAnswer {
        let reports = collect(PinQuery(pool: pool, client: client, limit: limit))
        var rows: [AffinityRow] = []
        let nowSec = UInt32(truncatingIfNeeded: now / 1000)
        for (w, report) in reports.enumerated() {
            for (p, pin) in report.pins.prefix(limit - rows.count) {
                rows.append(AffinityRow(pool: r.pools.indices.contains(p) ? r.pools[p].name : "\(p)", client: "\(pin.key.address)",
                                        target: pin.address.map { "\($0)" } ?? AffinityRow.goneTarget,
                                        connections: pin.connections, idleS: nowSec &- pin.seenSec, worker: w))
            }
        }
        return AffinityAnswer(entries: rows)
    }
}
