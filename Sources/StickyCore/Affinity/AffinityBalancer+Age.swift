// The one exception to "pinned clients are never moved for load": an h2c
// connection that reached its pool's `max_connection_age` may move its
// client's pin off a target holding more than its bounded-load share, and
// then the data plane ends the connection with a GOAWAY so the client's
// next connection follows the pin (docs/HTTP2.md, docs/AFFINITY.md).
//
// Without it, bounded load only steers clients that have no pin: a target
// added to a pool of gRPC clients, which keep one connection for as long as
// they live, would stay idle while the others stay full.

extension AffinityBalancer {
    /// The age check for one connection, `placement`, of `client`, made by
    /// the data plane when the connection reaches its jittered
    /// `max_connection_age`. True means: end this connection gracefully (a
    /// GOAWAY), because the client's next connection belongs elsewhere.
    ///
    /// - The connection is on its client's pinned target: true only if that
    ///   target holds more than `balance_factor` × its weighted share of the
    ///   connections on the targets that take new clients (the load and
    ///   weight `choose` divides by, pool-wide when workers share loads),
    ///   and some other target would stay within that bound with one more
    ///   connection: the first such target in the client's Maglev walk (its
    ///   next choices, as a spill finds them), else the least loaded one if
    ///   it fits. The pin moves there, counted as a `.age` move. With
    ///   `balance_factor: off`, never.
    /// - The pin is on another target already (a sibling connection's age
    ///   check moved it, or a state change re-pinned the client): true when
    ///   the next connection would follow that pin, with no move counted
    ///   (the move was counted once, when the pin moved).
    /// - No live pin, or a pin to a target that does not take new clients
    ///   (sticky draining, weight 0, deleted): false. Those are the state
    ///   rules' business, not load's.
    ///
    /// The accounting stays as it was: this connection stays counted on its
    /// target until `closed(placement, ...)`, and the entry's connection
    /// count (which keeps the entry from expiry and eviction while the
    /// placement's handle is held) is untouched. Only the pin's target,
    /// generation and pin time change, so the next `place` is a hit on the
    /// new target and `closed` of this placement still lowers the old one.
    /// Until the client reconnects its old target still counts it, so a
    /// burst of checks may move a few more clients than needed; the jitter
    /// on the age spreads the checks, and a target that gets too full
    /// sheds clients at their next age.
    public mutating func rebalanceForAge(_ placement: Placement, client: IPAddress, now: Millis) -> Bool {
        guard let factor = config.balanceFactor else { return false }
        let key = AffinityKey(client, maskV4: config.maskV4, maskV6: config.maskV6)
        let hash = key.hash(hashKey)
        let slot = table.find(key, hash: hash)
        guard slot >= 0 else { return false }
        let e = table[slot]
        let nowSec = AffinityTable.seconds(now)
        guard !table.isExpired(e, nowSec: nowSec) else { return false }
        let pinned = Int(e.target)
        let bit: UInt64 = 1 << UInt64(pinned)
        let pinIsCurrent = generations[pinned] == e.generation
        if pinned != Int(placement.target) {
            return pinIsCurrent && keepsPinned & bit != 0
        }
        guard pinIsCurrent, takesNew & bit != 0 else { return false }

        // c × L / W: a target's bound is this times its weight.
        let (load, weight) = loadAndWeight(over: takesNew)
        let perWeight = factor * Double(load) / Double(weight)
        func fits(_ t: Int, adding: Int) -> Bool {
            Double(self.load(of: t) + adding) <= perWeight * Double(weights[t])
        }
        guard !fits(pinned, adding: 0) else { return false }

        let candidates = takesNew & ~bit
        guard candidates != 0, maglev.size > 0 else { return false }
        var to = -1
        var pos = maglev.slot(hash)
        for _ in 0..<AffinityBalancer.spillWalkMax {
            let t = maglevTarget(pos)
            if candidates & 1 << UInt64(t) != 0 && fits(t, adding: 1) {
                to = t
                break
            }
            pos = nextMaglevSlot(pos)
        }
        if to < 0 {
            let least = leastLoaded(candidates)
            guard fits(least, adding: 1) else { return false }
            to = least
        }
        counts.moves[.age] &+= 1
        table[slot].target = UInt16(to)
        table[slot].generation = generations[to]
        // Absolute expiry counts from the pin, as for any re-pin.
        table[slot].pinnedSec = nowSec
        return true
    }
}
