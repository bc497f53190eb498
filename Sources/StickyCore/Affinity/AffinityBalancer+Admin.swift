/// Cold-path operations for the admin socket: counting and clearing pins.
extension AffinityBalancer {
    /// Live pins per target slot (`maxTargets` long). Walks the table.
    public func entriesPerTarget(now: Millis) -> [Int] {
        var out = Array(repeating: 0, count: AffinityBalancer.maxTargets)
        let nowSec = AffinityTable.seconds(now)
        table.forEach { _, e in
            let t = Int(e.target)
            guard !table.isExpired(e, nowSec: nowSec), generations[t] == e.generation else { return }
            out[t] += 1
        }
        return out
    }

    /// Removes pins: one client's, one target's, or all. A pin whose client
    /// has connections open stays (the data path holds its handle); it
    /// lapses as usual once they close. Returns how many were removed.
    @discardableResult
    public mutating func clearAffinity(_ scope: AffinityScope, now: Millis) -> Int {
        var doomed: [Int32] = []
        switch scope {
        case .client(let ip):
            let key = AffinityKey(ip, maskV4: config.maskV4, maskV6: config.maskV6)
            let slot = table.find(key, hash: key.hash(hashKey))
            if slot >= 0 { doomed.append(slot) }
        case .target(let address):
            guard let t = addresses.firstIndex(of: address) else { return 0 }
            table.forEach { slot, e in
                if Int(e.target) == t && generations[t] == e.generation { doomed.append(slot) }
            }
        case .all:
            table.forEach { slot, _ in doomed.append(slot) }
        }
        var removed = 0
        for slot in doomed where table[slot].connections == 0 {
            table.remove(slot)
            removed += 1
        }
        return removed
    }
}

extension AffinityBalancer {
    private struct Enough: Error {}

    /// At most `limit` live pins, stopping the walk once it has them, so a
    /// `show affinity` on a big table costs the data path little.
    public func pins(now: Millis, limit: Int) -> [AffinityPin] {
        var out: [AffinityPin] = []
        guard limit > 0 else { return out }
        out.reserveCapacity(min(limit, 4096))
        let nowSec = AffinityTable.seconds(now)
        try? table.forEach { _, e in
            guard !table.isExpired(e, nowSec: nowSec) else { return }
            out.append(pinInfo(e))
            if out.count >= limit { throw Enough() }
        }
        return out
    }
}
