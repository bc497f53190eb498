import StickyCore
import StickyDataPlane

/// Bounded load across an upgrade (docs/OPERATIONS.md, "Upgrade"): the old
/// daemon still holds its connections while it finishes them, and they
/// load their targets as much as the successor's own. So the old daemon
/// sends its open connections per target every half second until it
/// exits, and the successor counts them in the pool-wide loads: new
/// clients are then spread over what every target really carries. (A
/// snapshot taken at the hand-over would overstate them more every second
/// as they end; none at all would pile new clients onto targets the old
/// daemon still loads.)
extension ControlPlane {
    /// This process's open connections per target, from the workers'
    /// latest reports (asked afresh for the next call).
    func openConnections() -> [TakeoverLoad] {
        let chans = channels.withLock { $0 }
        let names = registry.pools.map(\.name)
        var sums: [Int: [SocketAddress: Int]] = [:]
        for report in chans.map(\.report) {
            for (p, pool) in report.pools.enumerated() where p < names.count {
                for t in pool.targets where t.connections > 0 { sums[p, default: [:]][t.address, default: 0] += t.connections }
            }
        }
        for c in chans { c.post(.report(nil, entries: false, request: 0)) }
        return sums.sorted { $0.key < $1.key }.flatMap { p, loads in
            loads.map { TakeoverLoad(pool: names[p], address: "\($0.key)", connections: $0.value) }
        }
    }

    /// The old daemon's loads, in the successor: to the first worker, which
    /// adds them to each pool's shared counts (`WorkerPool.predecessorLoads`).
    func setPredecessorLoads(_ loads: [TakeoverLoad]) {
        guard let first = channels.withLock({ $0.first }) else { return }
        for (p, pool) in registry.pools.enumerated() {
            var m: [SocketAddress: Int] = [:]
            for l in loads where l.pool == pool.name && l.connections > 0 {
                guard let a = SocketAddress(l.address) else { continue }
                m[a, default: 0] += l.connections
            }
            first.post(.predecessorLoads(pool: p, loads: m))
        }
    }
}
