/// Where a target came from, which decides how a restart treats it: see
/// `StateFile` and docs/ADMIN.md ("Persistence").
public enum TargetOrigin: String, Sendable, Equatable, Codable {
    /// Listed in the config file.
    case config
    /// Added through the admin socket.
    case runtime
    /// Added by the pool's discovery (Kubernetes EndpointSlices or DNS):
    /// discovery drains and removes it as its source says; a reload and
    /// the state file's merge leave it alone, as they do runtime targets.
    case discovery
}

/// A drain in progress: how, and until when.
public struct DrainInfo: Sendable, Equatable {
    public var mode: DrainMode
    public var startedMs: Millis
    public var deadlineMs: Millis
    /// The deadline passed and the remaining connections were told to close.
    public var expired = false
    /// The config file no longer lists the target (a reload dropped it):
    /// it leaves the pool once the deadline (and grace) have passed. Set on
    /// the reload's own drain, and also on an operator's drain or `maint`
    /// that was in place, or came after: listing the target again clears it.
    public var removeAtDeadline = false
    /// Started by a reload that dropped the target, rather than by an
    /// operator: a reload that lists the target again ends it (the target
    /// is ready again), where an operator's drain stays. Persisted
    /// (`drain_by_reload`), so a restart with the target back in the file
    /// ends it too.
    public var byReload = false
    /// Started by discovery (the endpoint stopped being ready, or left):
    /// discovery may end it again. Any other drain is an operator's, and
    /// discovery leaves it alone.
    public var byDiscovery = false
    public init(mode: DrainMode, startedMs: Millis, deadlineMs: Millis) {
        self.mode = mode
        self.startedMs = startedMs
        self.deadlineMs = deadlineMs
    }
}

/// Who started a drain, as `show targets` says it (`drain_by`).
public enum DrainCause: String, Sendable, Equatable, Codable {
    /// An admin command (`drain target`): only an admin command ends it.
    case admin
    /// A reload that dropped the target from the config file: a reload
    /// that lists it again ends it.
    case reload
    /// The pool's discovery: discovery may end it.
    case discovery
}

extension DrainInfo {
    public var cause: DrainCause { byReload ? .reload : byDiscovery ? .discovery : .admin }
}

/// One target as the control plane knows it: its spec and its state.
public struct TargetRecord: Sendable, Equatable {
    public var spec: TargetSpec
    public var state: TargetState
    public var drain: DrainInfo?
    public var origin: TargetOrigin
    public init(spec: TargetSpec, state: TargetState = .ready, drain: DrainInfo? = nil, origin: TargetOrigin) {
        self.spec = spec
        self.state = state
        self.drain = drain
        self.origin = origin
    }

    /// A reload dropped it from the config file: it leaves the pool at its
    /// drain's deadline.
    public var leavingTheFile: Bool { drain?.removeAtDeadline == true }
}

public struct PoolRecord: Sendable, Equatable {
    public var name: String
    public var targets: [TargetRecord]
    /// Config targets removed at runtime: kept so a restart does not bring
    /// them back from the config file.
    public var removedConfigTargets: [SocketAddress] = []
    /// The pool's `protocol` at start; fixed for the process (see `reload`).
    public var wireProtocol: PoolProtocol
    public init(name: String, targets: [TargetRecord], wireProtocol: PoolProtocol = .tcp) {
        self.name = name
        self.targets = targets
        self.wireProtocol = wireProtocol
    }
}

/// A refused admin operation. The message is the error line's text.
public struct RegistryError: Error, Equatable, Sendable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// What a successful change requires of the data path.
public enum RegistryChange: Equatable, Sendable {
    /// The pool's target list (membership or weights) changed: rebuild
    /// Maglev and hand the workers the new list.
    case targets(pool: Int)
    /// One target's state changed.
    case state(pool: Int, address: SocketAddress, state: TargetState)
}

/// The control plane's model of pools and targets: membership, weights,
/// states and drains. Pure: time comes in as `now`, and the open-connection
/// counts it needs (for `remove`) are passed in by the caller.
public struct TargetRegistry: Sendable, Equatable {
    public var pools: [PoolRecord]
    public var drainModeDefault: DrainMode = .strict
    public var drainTimeoutMsDefault: Millis = 60_000

    public init(pools: [PoolRecord]) {
        self.pools = pools
    }

    public init(config: StickyConfig) {
        pools = config.pools.map { p in
            PoolRecord(name: p.name, targets: p.targets.map { TargetRecord(spec: $0, origin: .config) },
                       wireProtocol: p.wireProtocol)
        }
    }

    /// The pool a command means: the named one, or the only one.
    public func poolIndex(_ name: String?) -> Result<Int, RegistryError> {
        if let name {
            guard let i = pools.firstIndex(where: { $0.name == name }) else {
                return .failure(RegistryError("no pool named '\(name)'; pools: \(pools.map(\.name).joined(separator: ", "))"))
            }
            return .success(i)
        }
        guard pools.count == 1 else {
            return .failure(RegistryError("more than one pool; name it (pools: \(pools.map(\.name).joined(separator: ", ")))"))
        }
        return .success(0)
    }

    /// The pool and index of a target: in the named pool, or in whichever
    /// single pool holds that address.
    public func locate(_ pool: String?, _ address: SocketAddress) -> Result<(Int, Int), RegistryError> {
        if pool != nil || pools.count == 1 {
            return poolIndex(pool).flatMap { p in
                guard let t = pools[p].targets.firstIndex(where: { $0.spec.address == address }) else {
                    return .failure(RegistryError("no target \(address) in pool '\(pools[p].name)'"))
                }
                return .success((p, t))
            }
        }
        let hits = pools.indices.compactMap { p in
            pools[p].targets.firstIndex(where: { $0.spec.address == address }).map { (p, $0) }
        }
        switch hits.count {
        case 0: return .failure(RegistryError("no target \(address) in any pool"))
        case 1: return .success(hits[0])
        default:
            return .failure(RegistryError("\(address) is in pools \(hits.map { pools[$0.0].name }.joined(separator: ", ")); name the pool"))
        }
    }

    public mutating func add(pool: String?, address: SocketAddress, weight: Int?, name: String?) -> Result<RegistryChange, RegistryError> {
        poolIndex(pool).flatMap { p in
            if pools[p].targets.contains(where: { $0.spec.address == address }) {
                return .failure(RegistryError("\(address) is already in pool '\(pools[p].name)'"))
            }
            if let name, pools[p].targets.contains(where: { $0.spec.name == name }) {
                return .failure(RegistryError("a target named '\(name)' is already in pool '\(pools[p].name)'"))
            }
            guard pools[p].targets.count < TargetMask.capacity else {
                return .failure(RegistryError("pool '\(pools[p].name)' is full (\(TargetMask.capacity) targets)"))
            }
            let wasConfig = pools[p].removedConfigTargets.contains(address)
            pools[p].removedConfigTargets.removeAll { $0 == address }
            pools[p].targets.append(TargetRecord(spec: TargetSpec(address: address, weight: weight ?? 1, name: name),
                                                 origin: wasConfig ? .config : .runtime))
            return .success(.targets(pool: p))
        }
    }

    public mutating func setWeight(pool: String?, address: SocketAddress, weight: Int) -> Result<RegistryChange, RegistryError> {
        locate(pool, address).flatMap { p, t in
            let others = pools[p].targets.indices.filter { $0 != t && pools[p].targets[$0].spec.weight > 0 }
            if weight == 0 && others.isEmpty {
                return .failure(RegistryError("refusing weight 0: no other target in '\(pools[p].name)' has weight"))
            }
            pools[p].targets[t].spec.weight = weight
            return .success(.targets(pool: p))
        }
    }

    /// Starts (or restarts, with new settings) a drain.
    public mutating func drain(pool: String?, address: SocketAddress, mode: DrainMode?, timeoutMs: Millis?, now: Millis) -> Result<RegistryChange, RegistryError> {
        locate(pool, address).flatMap { p, t in
            let m = mode ?? drainModeDefault
            var info = DrainInfo(mode: m, startedMs: now, deadlineMs: now + (timeoutMs ?? drainTimeoutMsDefault))
            // The file's removal still holds: the target leaves at this
            // drain's deadline. The drain itself is now the operator's, so
            // listing the target again keeps it.
            info.removeAtDeadline = pools[p].targets[t].leavingTheFile
            pools[p].targets[t].drain = info
            pools[p].targets[t].state = .draining(m)
            return .success(.state(pool: p, address: address, state: .draining(m)))
        }
    }

    /// `ready` or `maint` from an operator (or discovery). A target the
    /// config file no longer lists cannot be made ready: the file says it
    /// goes, and a ready target would stay until the next restart dropped
    /// it. `maint` on one keeps its removal deadline.
    public mutating func setState(pool: String?, address: SocketAddress, _ state: TargetState) -> Result<RegistryChange, RegistryError> {
        locate(pool, address).flatMap { p, t in
            let record = pools[p].targets[t]
            if record.leavingTheFile {
                guard state != .ready else {
                    return .failure(RegistryError("\(address) is leaving pool '\(pools[p].name)': the config file no longer lists it; list it again and reload (SIGHUP), or add it back once it has left"))
                }
                var removal = record.drain!
                removal.byReload = false
                removal.byDiscovery = false
                pools[p].targets[t].state = state
                pools[p].targets[t].drain = removal
                return .success(.state(pool: p, address: address, state: state))
            }
            pools[p].targets[t].state = state
            pools[p].targets[t].drain = nil
            return .success(.state(pool: p, address: address, state: state))
        }
    }

    /// Removes a target. Without `force` it must have no open connections
    /// (drain it first); with `force`, the workers cut what is left.
    public mutating func remove(pool: String?, address: SocketAddress, force: Bool, openConnections: Int) -> Result<RegistryChange, RegistryError> {
        locate(pool, address).flatMap { p, t in
            if openConnections > 0 && !force {
                return .failure(RegistryError("\(address) still has \(openConnections) connection(s); drain it and wait, or add 'force'"))
            }
            let record = pools[p].targets.remove(at: t)
            // A target the file already dropped was only hurried out: it is
            // not the operator's removal, and listing it again adds it.
            if record.origin == .config && !record.leavingTheFile { pools[p].removedConfigTargets.append(address) }
            return .success(.targets(pool: p))
        }
    }

    /// Drains whose deadline has passed and that were not yet expired;
    /// marks them expired. The caller tells the workers to close what is
    /// left on each.
    public mutating func expireDrains(now: Millis) -> [(pool: Int, address: SocketAddress, mode: DrainMode)] {
        var out: [(Int, SocketAddress, DrainMode)] = []
        for p in pools.indices {
            for t in pools[p].targets.indices {
                guard var d = pools[p].targets[t].drain, !d.expired, now >= d.deadlineMs else { continue }
                d.expired = true
                pools[p].targets[t].drain = d
                out.append((p, pools[p].targets[t].spec.address, d.mode))
            }
        }
        return out
    }
}

/// What a reload changed, for the log line and for the caller to publish.
public struct ReloadPlan: Equatable, Sendable {
    public var added: [(pool: Int, address: SocketAddress)] = []
    /// Listed again while the drain a reload started was running: ready again.
    public var restored: [(pool: Int, address: SocketAddress)] = []
    /// Listed again while leaving, but drained or in `maint` by an operator:
    /// they stay so, and no longer leave.
    public var held: [(pool: Int, address: SocketAddress)] = []
    /// Dropped from the file: leaving the pool at their drain's deadline.
    public var draining: [(pool: Int, address: SocketAddress)] = []
    public var reweighted: [(pool: Int, address: SocketAddress, weight: Int)] = []
    public var changes: [RegistryChange] = []
    public init() {}

    public static func == (a: ReloadPlan, b: ReloadPlan) -> Bool {
        a.added.map { "\($0.pool) \($0.address)" } == b.added.map { "\($0.pool) \($0.address)" }
            && a.restored.map { "\($0.pool) \($0.address)" } == b.restored.map { "\($0.pool) \($0.address)" }
            && a.held.map { "\($0.pool) \($0.address)" } == b.held.map { "\($0.pool) \($0.address)" }
            && a.draining.map { "\($0.pool) \($0.address)" } == b.draining.map { "\($0.pool) \($0.address)" }
            && a.reweighted.map { "\($0.pool) \($0.address) \($0.weight)" } == b.reweighted.map { "\($0.pool) \($0.address) \($0.weight)" }
            && a.changes == b.changes
    }
}

extension TargetRegistry {
    /// Lays a reloaded config's targets over the running registry: the
    /// file is the desired set of config targets (docs/CONFIG.md, "Reload
    /// and restart: the rules"). Only what the config owns changes:
    /// - a target it adds is added, ready;
    /// - a target it lists again while a reload's drain takes it out is
    ///   ready again (`restored`); one an operator drained or put in
    ///   `maint` keeps that state and no longer leaves (`held`);
    /// - a config target it no longer lists leaves the pool at a drain's
    ///   deadline: a ready one is drained with the default mode and timeout
    ///   (`byReload`), an operator's drain keeps its mode and deadline, and
    ///   a `maint` one stays in `maint` until the default timeout;
    /// - a changed weight or name is applied.
    /// Targets added at runtime or by discovery are left alone, and so are
    /// config targets an operator removed at runtime.
    ///
    /// Pools must be the same set, by name: adding or removing a pool
    /// needs a restart (workers size their tables per pool at start). A
    /// pool's `protocol` must stay too: each open connection was set up for
    /// it (an h2c connection is forwarded by the copy engine with a frame
    /// tracker, a tcp one perhaps by splice without), and cannot switch.
    /// Refusing the whole reload says so at once, where applying it to new
    /// connections only would leave a pool of mixed connections, and a drain
    /// that sends GOAWAY to some of them.
    public mutating func reload(_ config: StickyConfig, now: Millis) -> Result<ReloadPlan, RegistryError> {
        let names = pools.map(\.name)
        guard config.pools.map(\.name) == names else {
            return .failure(RegistryError("pools changed (running: \(names.joined(separator: ", ")); file: \(config.pools.map(\.name).joined(separator: ", "))); adding or removing a pool needs a restart"))
        }
        for (p, pool) in config.pools.enumerated() where pool.wireProtocol != pools[p].wireProtocol {
            return .failure(RegistryError("pool '\(pool.name)': protocol changed (running: \(pools[p].wireProtocol.rawValue); file: \(pool.wireProtocol.rawValue)); open connections cannot change protocol, so this needs a restart or an upgrade (docs/OPERATIONS.md)"))
        }
        var plan = ReloadPlan()
        var next = self
        for (p, pool) in config.pools.enumerated() {
            let wanted = Dictionary(uniqueKeysWithValues: pool.targets.map { ($0.address, $0) })
            var membership = false
            for spec in pool.targets {
                if let t = next.pools[p].targets.firstIndex(where: { $0.spec.address == spec.address }) {
                    let record = next.pools[p].targets[t]
                    guard record.origin == .config else { continue }
                    if record.leavingTheFile {
                        if record.drain!.byReload {
                            next.pools[p].targets[t].state = .ready
                            next.pools[p].targets[t].drain = nil
                            plan.restored.append((p, spec.address))
                            plan.changes.append(.state(pool: p, address: spec.address, state: .ready))
                        } else {
                            // The operator's state stays; only the removal ends.
                            if case .draining = record.state {
                                next.pools[p].targets[t].drain!.removeAtDeadline = false
                            } else {
                                next.pools[p].targets[t].drain = nil
                            }
                            plan.held.append((p, spec.address))
                        }
                    }
                    if record.spec.weight != spec.weight {
                        next.pools[p].targets[t].spec.weight = spec.weight
                        plan.reweighted.append((p, spec.address, spec.weight))
                        membership = true
                    }
                    next.pools[p].targets[t].spec.name = spec.name
                } else if !next.pools[p].removedConfigTargets.contains(spec.address) {
                    guard next.pools[p].targets.count < TargetMask.capacity else {
                        return .failure(RegistryError("pool '\(pool.name)' would exceed \(TargetMask.capacity) targets"))
                    }
                    next.pools[p].targets.append(TargetRecord(spec: spec, origin: .config))
                    plan.added.append((p, spec.address))
                    membership = true
                }
            }
            next.pools[p].removedConfigTargets.removeAll { wanted[$0] == nil }
            for t in next.pools[p].targets.indices {
                let record = next.pools[p].targets[t]
                guard record.origin == .config, wanted[record.spec.address] == nil, !record.leavingTheFile else { continue }
                plan.draining.append((p, record.spec.address))
                switch record.state {
                case .draining(let mode):
                    // An operator's drain: its mode and deadline were chosen;
                    // the target leaves when it ends.
                    var info = record.drain ?? DrainInfo(mode: mode, startedMs: now, deadlineMs: now + drainTimeoutMsDefault)
                    info.removeAtDeadline = true
                    next.pools[p].targets[t].drain = info
                case .maint:
                    // Out of service already; its connections end, and it
                    // leaves, at the default drain deadline.
                    var info = DrainInfo(mode: drainModeDefault, startedMs: now, deadlineMs: now + drainTimeoutMsDefault)
                    info.removeAtDeadline = true
                    next.pools[p].targets[t].drain = info
                case .ready, .down:
                    var info = DrainInfo(mode: drainModeDefault, startedMs: now, deadlineMs: now + drainTimeoutMsDefault)
                    info.removeAtDeadline = true
                    info.byReload = true
                    next.pools[p].targets[t].drain = info
                    next.pools[p].targets[t].state = .draining(drainModeDefault)
                    plan.changes.append(.state(pool: p, address: record.spec.address, state: .draining(drainModeDefault)))
                }
            }
            if membership { plan.changes.append(.targets(pool: p)) }
        }
        self = next
        return .success(plan)
    }

    /// Targets whose reload-started drain has run past its deadline plus
    /// `graceMs`: removed now (their connections were cut at the deadline).
    public mutating func removeExpiredReloadDrains(now: Millis, graceMs: Millis) -> [Int] {
        var touched: [Int] = []
        for p in pools.indices {
            let before = pools[p].targets.count
            pools[p].targets.removeAll { t in
                guard let d = t.drain, d.removeAtDeadline, d.expired else { return false }
                return now >= d.deadlineMs + graceMs
            }
            if pools[p].targets.count != before { touched.append(p) }
        }
        return touched
    }
}
