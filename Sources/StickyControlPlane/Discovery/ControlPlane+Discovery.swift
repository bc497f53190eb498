import Foundation
import Logging
import StickyCore
import StickyDataPlane

/// What the control plane knows of each pool's discovery: whether its
/// source answers, the last complete set, and the figures of the metrics
/// and `show stats` (CounterTable's `.discovery` fields).
struct DiscoveryPoolState: Sendable {
    var kind: String
    /// The source answered its last request; false while the daemon runs
    /// on the last known set.
    var up = false
    /// The last complete set's addresses; nil before the first one.
    var current: Set<SocketAddress>?
    var endpoints = 0
    var leftOut = 0
    var failures: UInt64 = 0
    var relists: UInt64 = 0
    var changes = [UInt64](repeating: 0, count: DiscoveryChange.allCases.count)
    /// The affinity timeout last taken from the Service, in ms.
    var serviceAffinityMs: Millis?
}

struct DiscoveryBook: Sendable {
    var pools: [Int: DiscoveryPoolState] = [:]

    init(config: StickyConfig) {
        for (p, pool) in config.pools.enumerated() {
            if let d = pool.discovery { pools[p] = DiscoveryPoolState(kind: d.kind) }
        }
    }
}

extension ControlPlane {
    /// A complete, fresh endpoint set for pool `p`: laid over the registry
    /// (`TargetRegistry.applyDiscovery`), published, logged and persisted.
    /// Returns true while some target of the pool is gone and waits for
    /// `discoverySweep` to remove it.
    @discardableResult
    func discoveryApply(pool p: Int, endpoints: [DiscoveredEndpoint]) -> Bool {
        let now = clock.nowMs()
        let current = Set(endpoints.map(\.address))
        let (applied, r, gone) = state.withLock { s -> (DiscoveryApplied, TargetRegistry, [SocketAddress]) in
            let a = s.registry.applyDiscovery(pool: p, endpoints: endpoints, now: now)
            return (a, s.registry, s.registry.discoveryGone(pool: p, current: current))
        }
        // Counted before the change is visible, so whoever sees the new
        // targets (`show targets`) sees them counted too.
        let previous = discovery.withLock { d -> DiscoveryPoolState? in
            let before = d.pools[p]
            d.pools[p]?.current = current
            d.pools[p]?.endpoints = endpoints.count
            d.pools[p]?.leftOut = applied.leftOut.count
            d.pools[p]?.changes[DiscoveryChange.added.rawValue] += UInt64(applied.added.count)
            d.pools[p]?.changes[DiscoveryChange.readied.rawValue] += UInt64(applied.readied.count)
            d.pools[p]?.changes[DiscoveryChange.drained.rawValue] += UInt64(applied.drained.count)
            return before
        }
        for change in applied.changes { publish(change, r) }
        let name = config.pools[p].name
        let why = Dictionary(endpoints.map { ($0.address, $0.reason ?? "gone") }, uniquingKeysWith: { a, _ in a })
        for a in applied.added { logger.notice("discovery: target added", metadata: ["pool": "\(name)", "target": "\(a)"]) }
        for a in applied.readied { logger.notice("discovery: target ready again", metadata: ["pool": "\(name)", "target": "\(a)"]) }
        for a in applied.drained {
            logger.notice("discovery: target draining", metadata: [
                "pool": "\(name)", "target": "\(a)", "reason": "\(why[a] ?? "gone")", "mode": "strict",
                "timeout_ms": "\(config.drain.timeoutMs)",
            ])
        }
        if !applied.leftOut.isEmpty && previous?.leftOut != applied.leftOut.count {
            logger.warning("discovery: more ready endpoints than a pool holds; the rest are left out until targets leave", metadata: [
                "pool": "\(name)", "capacity": "\(TargetMask.capacity)", "left_out": "\(applied.leftOut.count)",
            ])
        }
        if !applied.conflicts.isEmpty && previous?.current == nil {
            logger.warning("discovery: endpoints that are already config or admin targets stay as those are", metadata: [
                "pool": "\(name)", "targets": "\(applied.conflicts.map { "\($0)" }.joined(separator: ","))",
            ])
        }
        if applied.changedAnything { persist() }
        return !gone.isEmpty
    }

    /// Removes pool `p`'s gone targets whose drain is done. The loads come
    /// from fresh reports, asked for after every earlier publish (a
    /// worker's mailbox keeps order), so a connection placed before the
    /// drain reached the workers is counted. Returns whether any gone
    /// target is still waiting.
    @discardableResult
    func discoverySweep(pool p: Int) -> Bool {
        guard let current = discovery.withLock({ $0.pools[p]?.current }) else { return false }
        guard !registry.discoveryGone(pool: p, current: current).isEmpty else { return false }
        let loads = ControlPlane.loads(collect())[p] ?? [:]
        let now = clock.nowMs()
        let (removed, r, left) = state.withLock { s -> ([SocketAddress], TargetRegistry, Int) in
            let gone = s.registry.removeGone(pool: p, current: current, connections: loads.mapValues(\.connections),
                                             now: now, graceMs: config.drain.graceMs)
            return (gone, s.registry, s.registry.discoveryGone(pool: p, current: current).count)
        }
        guard !removed.isEmpty else { return left > 0 }
        // Counted before the removal is visible, as in `discoveryApply`.
        discovery.withLock { $0.pools[p]?.changes[DiscoveryChange.removed.rawValue] += UInt64(removed.count) }
        publish(.targets(pool: p), r)
        for a in removed {
            logger.notice("discovery: target removed", metadata: ["pool": "\(config.pools[p].name)", "target": "\(a)"])
        }
        persist()
        return left > 0
    }

    /// The source answered again (a list, a watch event, a lookup).
    func discoveryReachable(pool p: Int) {
        let was = discovery.withLock { d -> Bool in
            let was = d.pools[p]?.up ?? false
            d.pools[p]?.up = true
            return was
        }
        if !was {
            logger.notice("discovery: source answers; following it", metadata: [
                "pool": "\(config.pools[p].name)", "source": "\(config.pools[p].discovery?.kind ?? "?")",
            ])
        }
    }

    /// A request to the source failed: the last known set stays. `retryMs`
    /// is when the next try is.
    func discoveryFailed(pool p: Int, error: String, retryMs: Millis?) {
        let failures = discovery.withLock { d -> UInt64 in
            d.pools[p]?.up = false
            d.pools[p]?.failures += 1
            return d.pools[p]?.failures ?? 0
        }
        var meta: Logger.Metadata = [
            "pool": "\(config.pools[p].name)", "source": "\(config.pools[p].discovery?.kind ?? "?")",
            "error": "\(error)", "failures": "\(failures)",
        ]
        if let retryMs { meta["retry_in_ms"] = "\(retryMs)" }
        logger.warning("discovery: source failed; keeping the last known targets", metadata: meta)
    }

    func discoveryRelisted(pool p: Int) {
        discovery.withLock { $0.pools[p]?.relists += 1 }
    }

    /// The Service's ClientIP timeout, unless the file sets `affinity.timeout`:
    /// sent to every worker, where it applies to every pin at once (a pin's
    /// age is compared with the timeout when it is looked at or swept).
    func discoveryAffinity(pool p: Int, timeoutSeconds: Int?) {
        guard case .kubernetes(let k)? = config.pools[p].discovery, k.affinityFromService, let seconds = timeoutSeconds,
              seconds >= 0, Millis(seconds) * 1000 <= AffinityConfig.timeoutMsMax else { return }
        let ms = Millis(seconds) * 1000
        let changed = discovery.withLock { d -> Bool in
            let running = d.pools[p]?.serviceAffinityMs ?? config.pools[p].affinity.timeoutMs
            d.pools[p]?.serviceAffinityMs = ms
            return running != ms
        }
        guard changed else { return }
        broadcast(.setAffinityTimeout(pool: p, timeoutMs: ms))
        logger.notice("discovery: affinity timeout from the Service", metadata: [
            "pool": "\(config.pools[p].name)", "service": "\(k.namespace)/\(k.service)", "timeout_s": "\(seconds)",
        ])
    }

    /// Discovery's figures for pool `p`, by field; nil for a pool without discovery.
    func discoveryFigures(pool p: Int) -> DiscoveryPoolState? {
        discovery.withLock { $0.pools[p] }
    }
}

extension DiscoveryPoolState {
    /// One figure's values, each with its `change` label when it has one.
    func series(_ f: DiscoveryFigure) -> [(label: String?, value: UInt64)] {
        switch f {
        case .up: return [(nil, up ? 1 : 0)]
        case .endpoints: return [(nil, UInt64(endpoints))]
        case .leftOut: return [(nil, UInt64(leftOut))]
        case .failures: return [(nil, failures)]
        case .relists: return [(nil, relists)]
        case .changes: return DiscoveryChange.allCases.map { ($0.label, changes[$0.rawValue]) }
        }
    }
}

extension ControlPlane {
    /// `show stats`: a discovery figure summed over the pools that have
    /// discovery (`<key>_<change>` for the labelled one). A daemon without
    /// discovery shows none of these keys: its answer stays as it was.
    func discoveryStats(_ f: DiscoveryFigure, key: String) -> [StatsAnswer.Entry] {
        let pools = discovery.withLock { Array($0.pools.values) }
        var sums: [String: UInt64] = [:]
        var order: [String] = []
        for d in pools {
            for (label, value) in d.series(f) {
                let k = label.map { "\(key)_\($0)" } ?? key
                if sums[k] == nil { order.append(k) }
                sums[k, default: 0] &+= value
            }
        }
        return order.map { StatsAnswer.Entry($0, sums[$0] ?? 0) }
    }
}
