/// Every target's `HealthTracker`, by pool and address, kept in step with
/// the registry. Pure; the control plane holds one under its lock.
///
/// Health is a flag of its own, combined with the operator's state by
/// `effectiveState`; checks never overwrite what an operator set.
public struct HealthBook: Sendable, Equatable {
    public var configs: [HealthConfig]
    public private(set) var trackers: [[SocketAddress: HealthTracker]]
    /// Per pool: in panic mode now (`updatePanic`), and how often it went in.
    public private(set) var panic: [Bool]
    public private(set) var panicEntered: [UInt64]

    public init(configs: [HealthConfig]) {
        self.configs = configs
        trackers = configs.map { _ in [:] }
        panic = configs.map { _ in false }
        panicEntered = configs.map { _ in 0 }
    }

    /// What the workers are told for a target: the operator's state, unless
    /// health says `down`. Precedence: `maint` (the operator took it out;
    /// health cannot change that, and `show targets` says why) > health
    /// `down` (it cannot serve, so even a sticky drain's pinned clients
    /// move) > `draining` > `ready`. A target that comes back up returns to
    /// whatever the operator's state is by then. In panic mode health is
    /// ignored: the operator's state is what counts, so a drain or maint
    /// still holds.
    public static func effectiveState(admin: TargetState, health: HealthStatus, panic: Bool = false) -> TargetState {
        if admin == .maint || health == .up || panic { return admin }
        return .down
    }

    // MARK: panic mode

    /// A pool's ready weight (targets the operator has ready, with weight
    /// above 0) and the part of it health has up.
    public func share(pool p: Int, _ pool: PoolRecord) -> PanicShare {
        var share = PanicShare()
        for t in pool.targets where t.state == .ready && t.spec.weight > 0 {
            share.readyWeight += t.spec.weight
            if status(pool: p, address: t.spec.address) == .up { share.healthyWeight += t.spec.weight }
        }
        return share
    }

    /// Re-decides pool `p`'s panic mode from the registry as it is now;
    /// returns the change, if it changed. In panic while the healthy share
    /// of the ready weight is below `panic_threshold` percent; never with
    /// a threshold of 0 or no ready weight (all drained: nothing for
    /// health to be wrong about).
    public mutating func updatePanic(pool p: Int, _ registry: TargetRegistry) -> PanicChange? {
        guard panic.indices.contains(p), registry.pools.indices.contains(p) else { return nil }
        let share = share(pool: p, registry.pools[p])
        let now = share.below(configs[p].panicThreshold)
        guard now != panic[p] else { return nil }
        panic[p] = now
        if now { panicEntered[p] &+= 1 }
        return PanicChange(pool: p, panic: now, share: share, threshold: configs[p].panicThreshold)
    }

    public func inPanic(pool p: Int) -> Bool { panic.indices.contains(p) && panic[p] }

    /// The targets of pool `p` that panic mode puts back in service: health
    /// has them down, the operator has not put them in maint. Empty when
    /// the pool is not in panic.
    public func panicked(pool p: Int, _ pool: PoolRecord) -> [SocketAddress] {
        guard inPanic(pool: p) else { return [] }
        return pool.targets.filter { $0.state != .maint && status(pool: p, address: $0.spec.address) == .down }.map(\.spec.address)
    }

    // MARK: trial connects

    /// Marks the trial connects due now as started and returns them
    /// (at most one per down target without active checks).
    public mutating func startDueTrials(now: Millis) -> [(pool: Int, address: SocketAddress)] {
        var out: [(Int, SocketAddress)] = []
        for p in trackers.indices {
            for address in trackers[p].keys where trackers[p][address]!.trialDue(now: now) {
                trackers[p][address]!.trialStarted(now: now)
                out.append((p, address))
            }
        }
        return out
    }

    public mutating func trialResult(pool: Int, address: SocketAddress, ok: Bool, reason: String, now: Millis) -> HealthTransition? {
        guard trackers.indices.contains(pool), trackers[pool][address] != nil else { return nil }
        return trackers[pool][address]!.trialResult(ok: ok, reason: reason, now: now)
    }

    /// Adds trackers for new targets (up) and drops those of removed ones.
    /// Returns nothing: a new target starts up, and so needs no publish.
    public mutating func sync(_ registry: TargetRegistry) {
        for (p, pool) in registry.pools.enumerated() where p < trackers.count {
            var next: [SocketAddress: HealthTracker] = [:]
            for t in pool.targets {
                next[t.spec.address] = trackers[p][t.spec.address] ?? HealthTracker(config: configs[p])
            }
            trackers[p] = next
        }
    }

    public func status(pool: Int, address: SocketAddress) -> HealthStatus {
        trackers.indices.contains(pool) ? trackers[pool][address]?.status ?? .up : .up
    }

    public func tracker(pool: Int, address: SocketAddress) -> HealthTracker? {
        trackers.indices.contains(pool) ? trackers[pool][address] : nil
    }

    public func effectiveState(pool: Int, record: TargetRecord) -> TargetState {
        HealthBook.effectiveState(admin: record.state, health: status(pool: pool, address: record.spec.address),
                                  panic: inPanic(pool: pool))
    }

    public mutating func probe(pool: Int, address: SocketAddress, ok: Bool, reason: String, now: Millis) -> HealthTransition? {
        guard trackers.indices.contains(pool), trackers[pool][address] != nil else { return nil }
        return trackers[pool][address]!.probe(ok: ok, reason: reason, now: now)
    }

    public mutating func passiveFailures(pool: Int, address: SocketAddress, count: Int, now: Millis) -> HealthTransition? {
        guard trackers.indices.contains(pool), trackers[pool][address] != nil else { return nil }
        return trackers[pool][address]!.passiveFailures(count, now: now)
    }

    /// Time-driven transitions (hold-downs ending, revives).
    public mutating func tick(now: Millis) -> [(pool: Int, address: SocketAddress, transition: HealthTransition)] {
        var out: [(Int, SocketAddress, HealthTransition)] = []
        for p in trackers.indices {
            for address in trackers[p].keys {
                if let t = trackers[p][address]!.tick(now: now) { out.append((p, address, t)) }
            }
        }
        return out
    }
}

/// A pool's ready weight and the healthy part of it.
public struct PanicShare: Sendable, Equatable {
    public var healthyWeight = 0
    public var readyWeight = 0
    public init(healthyWeight: Int = 0, readyWeight: Int = 0) {
        self.healthyWeight = healthyWeight
        self.readyWeight = readyWeight
    }

    /// Whether the healthy share is below `threshold` percent (in whole
    /// numbers, so 1 of 2 at 50 is not below).
    public func below(_ threshold: Int) -> Bool {
        threshold > 0 && readyWeight > 0 && healthyWeight * 100 < threshold * readyWeight
    }

    /// The healthy share in whole percent (100 with no ready weight), for
    /// the log.
    public var percent: Int { readyWeight > 0 ? healthyWeight * 100 / readyWeight : 100 }
}

/// A pool went into or out of panic mode.
public struct PanicChange: Sendable, Equatable {
    public var pool: Int
    public var panic: Bool
    public var share: PanicShare
    public var threshold: Int
}

// MARK: - Across an upgrade

extension HealthBook {
    /// Every tracker a fresh one would not equal, by pool name and address.
    public func carry(_ registry: TargetRegistry, now: Millis) -> [HealthCarry] {
        var out: [HealthCarry] = []
        for (p, pool) in registry.pools.enumerated() where p < trackers.count {
            for t in pool.targets {
                guard let tr = trackers[p][t.spec.address], tr.worthCarrying else { continue }
                out.append(tr.carry(pool: pool.name, address: t.spec.address, now: now))
            }
        }
        return out
    }

    /// Lays a predecessor's trackers over these (kept in step with
    /// `registry` first), then re-decides panic mode. A pool or target
    /// this process does not have is skipped and named in the result.
    public mutating func restore(_ carried: [HealthCarry], _ registry: TargetRegistry, now: Millis) -> [String] {
        sync(registry)
        var skipped: [String] = []
        for c in carried {
            guard let p = registry.pools.firstIndex(where: { $0.name == c.pool }), p < trackers.count,
                  let address = SocketAddress(c.address), trackers[p][address] != nil else {
                skipped.append("\(c.pool)/\(c.address)")
                continue
            }
            trackers[p][address]!.restore(c, now: now)
        }
        for p in registry.pools.indices { _ = updatePanic(pool: p, registry) }
        return skipped
    }
}
