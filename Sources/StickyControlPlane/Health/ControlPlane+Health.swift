import Logging
import StickyCore
import StickyDataPlane

/// The control plane's health state, kept in `ControlPlane.State` so that
/// a transition and the registry are read and published under one lock.
struct HealthState {
    var book: HealthBook
    /// The cumulative connect-failure count last seen, per worker, pool and
    /// target: passive detection feeds the deltas.
    var passiveSeen: [PassiveKey: UInt64] = [:]
    var ticks = 0

    init(config: StickyConfig, registry: TargetRegistry) {
        book = HealthBook(configs: config.pools.map(\.health))
        book.sync(registry)
    }
}

struct PassiveKey: Hashable {
    var worker: Int
    var pool: Int
    var address: SocketAddress
}

extension ControlPlane {
    /// Passive detection reads the workers' reports every this many control
    /// ticks (100 ms each): fast enough to beat a connect timeout, rare
    /// enough that reports cost nothing measurable.
    static let passiveTicks = 3

    /// What the workers are told for pool `p`'s targets in `r`.
    static func effectiveStates(_ r: TargetRegistry, pool p: Int, _ h: HealthState) -> [TargetState] {
        r.pools[p].targets.map { h.book.effectiveState(pool: p, record: $0) }
    }

    /// Pools with active checks and their intervals, for the prober.
    public var probedPools: [(pool: Int, intervalMs: Millis)] {
        config.pools.indices.compactMap { p in
            config.pools[p].health.type == .none ? nil : (p, config.pools[p].health.intervalMs)
        }
    }

    /// The targets of pool `p` to probe this round.
    public func probePlan(pool p: Int) -> [ProbeTarget] {
        let r = registry
        guard r.pools.indices.contains(p) else { return [] }
        return r.pools[p].targets.map { ProbeTarget(pool: p, target: $0.spec.address, config: config.pools[p].health) }
    }

    /// An active probe's result (the prober's thread).
    public func probeResult(_ t: ProbeTarget, ok: Bool, reason: String) {
        let now = clock.nowMs()
        state.withLock { s in
            if let tr = s.health.book.probe(pool: t.pool, address: t.target, ok: ok, reason: reason, now: now) {
                applyHealth(tr, pool: t.pool, address: t.target, &s)
            }
        }
    }

    /// Runs on the control tick: passive deltas from the workers' reports,
    /// then time-driven transitions (hold-downs ending, revives).
    func healthTick(now: Millis) {
        let round = state.withLock { s -> Bool in
            s.health.ticks &+= 1
            return s.health.ticks % ControlPlane.passiveTicks == 0
        }
        let chans = channels.withLock { $0 }
        let passive = config.pools.contains { $0.health.passive }
        let reports = round && passive ? chans.map(\.report) : []
        state.withLock { s in
            if round && passive {
                var seen: [PassiveKey: UInt64] = [:]
                for (w, report) in reports.enumerated() {
                    for (p, pool) in report.pools.enumerated() {
                        for t in pool.targets {
                            let key = PassiveKey(worker: w, pool: p, address: t.address)
                            seen[key] = t.connectFailures
                            // First sight is a baseline: a slot that changed
                            // hands carries its old target's count.
                            guard let last = s.health.passiveSeen[key], t.connectFailures > last else { continue }
                            let count = Int(clamping: t.connectFailures - last)
                            if let tr = s.health.book.passiveFailures(pool: p, address: t.address, count: count, now: now) {
                                applyHealth(tr, pool: p, address: t.address, &s)
                            }
                        }
                    }
                }
                s.health.passiveSeen = seen
            }
            for (p, address, tr) in s.health.book.tick(now: now) {
                applyHealth(tr, pool: p, address: address, &s)
            }
        }
        // Ask for fresh reports for the next round (no wait: read then).
        if round && passive {
            for c in chans { c.post(.report(nil, entries: false, request: 0)) }
        }
    }

    /// Logs a transition and tells the workers the target's new effective
    /// state, under the state lock so no older publish can overtake it.
    func applyHealth(_ tr: HealthTransition, pool p: Int, address: SocketAddress, _ s: inout State) {
        guard let record = s.registry.pools[p].targets.first(where: { $0.spec.address == address }) else { return }
        let effective = s.health.book.effectiveState(pool: p, record: record)
        logger.notice(tr.to == .down ? "target down" : "target up", metadata: [
            "pool": "\(s.registry.pools[p].name)", "target": "\(address)", "reason": "\(tr.reason)",
            "check": "\(config.pools[p].health.type.rawValue)", "state": "\(effective.label)",
        ])
        broadcast(.setState(pool: p, address: address, state: effective))
    }

    /// `show targets`' health fields for one target. A target health does
    /// not track reads as up.
    func addHealth(to row: inout TargetRow, pool p: Int, record: TargetRecord, now: Millis) {
        let h = state.withLock { $0.health }
        guard let t = h.book.tracker(pool: p, address: record.spec.address) else {
            row.health = .up
            return
        }
        row.health = t.status
        row.healthCheck = t.config.type
        row.healthTransitions = t.transitions
        row.healthHoldMs = t.holdRemainingMs(now: now)
        row.healthReason = t.lastReason
        row.effectiveState = h.book.effectiveState(pool: p, record: record).name
    }
}
