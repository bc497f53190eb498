/// Every target's `HealthTracker`, by pool and address, kept in step with
/// the registry. Pure; the control plane holds one under its lock.
///
/// Health is a flag of its own, combined with the operator's state by
/// `effectiveState`; checks never overwrite what an operator set.
public struct HealthBook: Sendable, Equatable {
    public var configs: [HealthConfig]
    public private(set) var trackers: [[SocketAddress: HealthTracker]]

    public init(configs: [HealthConfig]) {
        self.configs = configs
        trackers = configs.map { _ in [:] }
    }

    /// What the workers are told for a target: the operator's state, unless
    /// health says `down`. Precedence: `maint` (the operator took it out;
    /// health cannot change that, and `show targets` says why) > health
    /// `down` (it cannot serve, so even a sticky drain's pinned clients
    /// move) > `draining` > `ready`. A target that comes back up returns to
    /// whatever the operator's state is by then.
    public static func effectiveState(admin: TargetState, health: HealthStatus) -> TargetState {
        if admin == .maint || health == .up { return admin }
        return .down
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
        HealthBook.effectiveState(admin: record.state, health: status(pool: pool, address: record.spec.address))
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
