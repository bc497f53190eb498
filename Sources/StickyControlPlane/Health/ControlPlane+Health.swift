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

    /// An active probe's or a trial connect's result (the prober's thread).
    public func probeResult(_ t: ProbeTarget, ok: Bool, reason: String) {
        let now = clock.nowMs()
        state.withLock { s in
            let tr = t.trial
                ? s.health.book.trialResult(pool: t.pool, address: t.target, ok: ok, reason: reason, now: now)
                : s.health.book.probe(pool: t.pool, address: t.target, ok: ok, reason: reason, now: now)
            if let tr { applyHealth(tr, pool: t.pool, address: t.target, &s) }
        }
    }

    /// Hands trial connects to `run` (the prober) from now on.
    public func setTrialRunner(_ run: @escaping @Sendable ([ProbeTarget]) -> Void) {
        trialRunner.withLock { $0 = run }
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
        startTrials(now: now)
        // Ask for fresh reports for the next round (no wait: read then).
        if round && passive {
            for c in chans { c.post(.report(nil, entries: false, request: 0)) }
        }
    }

    /// Trial connects due now (passively downed targets of pools without
    /// active checks, docs/HEALTH.md): a TCP connect each, on the prober.
    /// Before the prober runs there is no one to start them, and they
    /// are left for later.
    func startTrials(now: Millis) {
        guard let run = trialRunner.withLock({ $0 }) else { return }
        let due = state.withLock { $0.health.book.startDueTrials(now: now) }
        guard !due.isEmpty else { return }
        run(due.map { ProbeTarget(pool: $0.pool, target: $0.address, config: config.pools[$0.pool].health, trial: true) })
    }

    /// Logs a transition and tells the workers the target's new effective
    /// state, under the state lock so no older publish can overtake it.
    func applyHealth(_ tr: HealthTransition, pool p: Int, address: SocketAddress, _ s: inout State) {
        guard let record = s.registry.pools[p].targets.first(where: { $0.spec.address == address }) else { return }
        let change = s.health.book.updatePanic(pool: p, s.registry)
        let effective = s.health.book.effectiveState(pool: p, record: record)
        logger.notice(tr.to == .down ? "target down" : "target up", metadata: [
            "pool": "\(s.registry.pools[p].name)", "target": "\(address)", "reason": "\(tr.reason)",
            "check": "\(config.pools[p].health.type.rawValue)", "state": "\(effective.label)",
        ])
        if change == nil { broadcast(.setState(pool: p, address: address, state: effective)) }
        publishPanic(change, pool: p, &s, statesSent: false)
    }

    /// After a change to pool `p`'s health or targets: logs a panic-mode
    /// change and, on one, republishes every target's effective state
    /// (unless the caller just sent them all); while in panic (or on
    /// leaving it), tells the workers which targets panic put back, for
    /// `panic_placements`. Under the state lock.
    func publishPanic(_ change: PanicChange?, pool p: Int, _ s: inout State, statesSent: Bool) {
        let pool = s.registry.pools[p]
        if let change {
            let meta: Logger.Metadata = [
                "pool": "\(pool.name)", "healthy_share": "\(change.share.percent)%",
                "healthy_weight": "\(change.share.healthyWeight)", "ready_weight": "\(change.share.readyWeight)",
                "panic_threshold": "\(change.threshold)%",
            ]
            if change.panic {
                logger.warning("pool in panic: too little of it is healthy, so health is ignored and down targets get clients", metadata: meta)
            } else {
                logger.warning("pool out of panic: health decides again", metadata: meta)
            }
            if !statesSent {
                for t in pool.targets {
                    broadcast(.setState(pool: p, address: t.spec.address, state: s.health.book.effectiveState(pool: p, record: t)))
                }
            }
        }
        if change != nil || s.health.book.inPanic(pool: p) {
            broadcast(.setPanicked(pool: p, targets: s.health.book.panicked(pool: p, pool)))
        }
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
        if t.status == .down && record.state != .maint && h.book.inPanic(pool: p) { row.healthPanic = true }
    }
}

// MARK: - Across an upgrade

extension ControlPlane {
    /// What a successor takes over (TakeoverState.health).
    func healthCarry() -> [HealthCarry] {
        let now = clock.nowMs()
        return state.withLock { $0.health.book.carry($0.registry, now: now) }
    }

    /// A predecessor's health, before the workers start (they are built
    /// from the effective states this sets). Pools it leaves in panic get
    /// their panicked targets once the workers are attached
    /// (`publishPanicked`).
    func restoreHealth(_ carried: [HealthCarry]) {
        guard !carried.isEmpty else { return }
        let now = clock.nowMs()
        let (skipped, downs) = state.withLock { s -> ([String], Int) in
            let skipped = s.health.book.restore(carried, s.registry, now: now)
            return (skipped, carried.filter(\.down).count - skipped.count)
        }
        logger.notice("upgrade: health carried over", metadata: ["targets": "\(carried.count - skipped.count)", "down": "\(max(0, downs))"])
        if !skipped.isEmpty {
            logger.notice("upgrade: health of targets this config does not have was dropped", metadata: ["targets": "\(skipped.joined(separator: ","))"])
        }
    }

    /// Tells the workers which targets panic mode put back, for pools in
    /// panic (after `restoreHealth`, once they are attached).
    func publishPanicked() {
        state.withLock { s in
            for p in s.registry.pools.indices where s.health.book.inPanic(pool: p) {
                broadcast(.setPanicked(pool: p, targets: s.health.book.panicked(pool: p, s.registry.pools[p])))
            }
        }
    }
}
