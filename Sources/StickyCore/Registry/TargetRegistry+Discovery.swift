/// One endpoint as a discovery source reports it, after deduplication.
public struct DiscoveredEndpoint: Sendable, Equatable {
    public var address: SocketAddress
    /// Takes new clients. A not-ready endpoint is drained if it is a
    /// target, and not added if it is not.
    public var ready: Bool
    /// A label for `show targets` (the pod's name, the SRV target's host).
    public var name: String?
    public var weight: Int
    /// Why it is not ready, for the log ("terminating", "not ready").
    public var reason: String?

    public init(address: SocketAddress, ready: Bool, name: String? = nil, weight: Int = 1, reason: String? = nil) {
        self.address = address
        self.ready = ready
        self.name = name
        self.weight = weight
        self.reason = reason
    }
}

/// What one `applyDiscovery` changed, for the log, the counters and the
/// caller to publish.
public struct DiscoveryApplied: Sendable, Equatable {
    public var added: [SocketAddress] = []
    public var readied: [SocketAddress] = []
    public var drained: [SocketAddress] = []
    public var reweighted: [SocketAddress] = []
    /// Ready endpoints left out because the pool holds `TargetMask.capacity`.
    public var leftOut: [SocketAddress] = []
    /// Endpoints whose address is already a config or admin target: that
    /// target stays as it is, the file's or the operator's.
    public var conflicts: [SocketAddress] = []
    public var changes: [RegistryChange] = []
    public init() {}

    public var changedAnything: Bool { !changes.isEmpty }
}

// Discovery's part of the registry, apart from the admin commands and the
// reload: it only ever touches targets of origin `discovery`, and never a
// state an operator set (`maint`, or a drain discovery did not start).
extension TargetRegistry {
    /// Lays a complete, fresh endpoint list over pool `p`'s discovery targets:
    /// - ready: added (up to the pool's capacity), or made ready again if
    ///   discovery had drained it;
    /// - not ready (terminating, or failing its readiness): a ready target
    ///   is drained, strict, with the default timeout (what the seed's NLB
    ///   does to a deregistered target); a new one is not added;
    /// - absent: a ready target is drained the same way; `removeGone` takes
    ///   it out once its drain is done.
    /// Only call it with the whole set: a source that could not be read
    /// keeps the last one (losing the API never removes a target).
    public mutating func applyDiscovery(pool p: Int, endpoints: [DiscoveredEndpoint], now: Millis) -> DiscoveryApplied {
        var out = DiscoveryApplied()
        var membership = false
        let wanted = Dictionary(endpoints.map { ($0.address, $0) }, uniquingKeysWith: { a, _ in a })
        for t in pools[p].targets.indices where pools[p].targets[t].origin == .discovery {
            let record = pools[p].targets[t]
            let address = record.spec.address
            guard let e = wanted[address] else {
                if record.state == .ready { drainForDiscovery(p, t, now: now, &out) }
                continue
            }
            if record.spec.weight != e.weight {
                pools[p].targets[t].spec.weight = e.weight
                out.reweighted.append(address)
                membership = true
            }
            if e.ready {
                if case .draining = record.state, record.drain?.byDiscovery == true {
                    pools[p].targets[t].state = .ready
                    pools[p].targets[t].drain = nil
                    out.readied.append(address)
                    out.changes.append(.state(pool: p, address: address, state: .ready))
                }
            } else if record.state == .ready {
                drainForDiscovery(p, t, now: now, &out)
            }
        }
        let present = Set(pools[p].targets.map(\.spec.address))
        // A stable order, so that which endpoints a full pool leaves out
        // does not change from one update to the next.
        for e in endpoints.sorted(by: { "\($0.address)" < "\($1.address)" }) where e.ready && !present.contains(e.address) {
            guard pools[p].targets.count < TargetMask.capacity else {
                out.leftOut.append(e.address)
                continue
            }
            let nameFree = e.name.map { n in !pools[p].targets.contains { $0.spec.name == n } } ?? false
            pools[p].targets.append(TargetRecord(spec: TargetSpec(address: e.address, weight: e.weight, name: nameFree ? e.name : nil),
                                                 origin: .discovery))
            out.added.append(e.address)
            membership = true
        }
        for e in endpoints where present.contains(e.address) {
            if pools[p].targets.first(where: { $0.spec.address == e.address })?.origin != .discovery {
                out.conflicts.append(e.address)
            }
        }
        if membership { out.changes.append(.targets(pool: p)) }
        return out
    }

    private mutating func drainForDiscovery(_ p: Int, _ t: Int, now: Millis, _ out: inout DiscoveryApplied) {
        var info = DrainInfo(mode: .strict, startedMs: now, deadlineMs: now + drainTimeoutMsDefault)
        info.byDiscovery = true
        pools[p].targets[t].drain = info
        pools[p].targets[t].state = .draining(.strict)
        out.drained.append(pools[p].targets[t].spec.address)
        out.changes.append(.state(pool: p, address: pools[p].targets[t].spec.address, state: .draining(.strict)))
    }

    /// Discovery targets of pool `p` that the source no longer lists.
    public func discoveryGone(pool p: Int, current: Set<SocketAddress>) -> [SocketAddress] {
        pools[p].targets.filter { $0.origin == .discovery && !current.contains($0.spec.address) }.map(\.spec.address)
    }

    /// Removes the gone discovery targets whose drain is done: no open
    /// connection left (`connections`, from reports asked for after the
    /// drain was published, so none can be on its way), or the deadline and
    /// `graceMs` passed (the connections were cut). A gone target an
    /// operator put in `maint` or drained goes the same way: its pod is gone.
    public mutating func removeGone(pool p: Int, current: Set<SocketAddress>, connections: [SocketAddress: Int],
                                    now: Millis, graceMs: Millis) -> [SocketAddress] {
        var removed: [SocketAddress] = []
        pools[p].targets.removeAll { t in
            guard t.origin == .discovery, !current.contains(t.spec.address), t.state != .ready else { return false }
            let idle = (connections[t.spec.address] ?? 0) == 0
            let cut = t.drain.map { $0.expired && now >= $0.deadlineMs + graceMs } ?? false
            if idle || cut { removed.append(t.spec.address) }
            return idle || cut
        }
        return removed
    }
}
