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
    /// On true, `placement` is marked `leavingForAge`: until it closes, the
    /// age checks of the target's other connections do not count it, so a
    /// burst of checks sheds only the connections over the bound (the
    /// client's new connection may land before or after the old one ends).
    public mutating func rebalanceForAge(_ placement: inout Placement, client: IPAddress, now: Millis) -> Bool {
        guard !placement.leavingForAge else { return false }
        guard let to = decideAgeMove(placement, client: client, now: now) else { return false }
        placement.leavingForAge = true
        placement.ageMoveTarget = Int8(to)
        if let shared = sharedLoads {
            shared.ageMove(from: Int(placement.target), to: to, 1)
        } else {
            leavingForAge[Int(placement.target)] += 1
            arrivingForAge[to] += 1
        }
        return true
    }

    /// The leaving connection closed: its move is no longer in flight.
    mutating func endAgeMove(from: Int, to: Int) {
        precondition(to >= 0 && to < AffinityBalancer.maxTargets, "an age move with no destination")
        if let shared = sharedLoads {
            shared.ageMove(from: from, to: to, -1)
        } else {
            precondition(leavingForAge[from] > 0 && arrivingForAge[to] > 0, "an age move not counted")
            leavingForAge[from] -= 1
            arrivingForAge[to] -= 1
        }
    }

    func leaving(_ t: Int) -> Int { sharedLoads?.leaving(t) ?? leavingForAge[t] }
    func arriving(_ t: Int) -> Int { sharedLoads?.arriving(t) ?? arrivingForAge[t] }

    /// Where an age check moves the pin of `placement`'s client: nil for
    /// no move; the pin's current target when the pin already moved.
    mutating func decideAgeMove(_ placement: Placement, client: IPAddress, now: Millis) -> Int? {
        guard let factor = config.balanceFactor else { return nil }
        let key = AffinityKey(client, maskV4: config.maskV4, maskV6: config.maskV6)
        let hash = key.hash(hashKey)
        let slot = table.find(key, hash: hash)
        guard slot >= 0 else { return nil }
        let e = table[slot]
        let nowSec = AffinityTable.seconds(now)
        guard !table.isExpired(e, nowSec: nowSec) else { return nil }
        let pinned = Int(e.target)
        let bit: UInt64 = 1 << UInt64(pinned)
        let pinIsCurrent = generations[pinned] == e.generation
        if pinned != Int(placement.target) {
            return pinIsCurrent && keepsPinned & bit != 0 ? pinned : nil
        }
        guard pinIsCurrent, takesNew & bit != 0 else { return nil }

        // c × L / W: a target's bound is this times its weight.
        let (load, weight) = loadAndWeight(over: takesNew)
        let perWeight = factor * Double(load) / Double(weight)
        func fits(_ t: Int, adding: Int) -> Bool {
            Double(self.load(of: t) + adding) <= perWeight * Double(weights[t])
        }
        // Connections already told to leave no longer weigh on it.
        guard !fits(pinned, adding: -leaving(pinned)) else { return nil }

        let candidates = takesNew & ~bit
        guard candidates != 0, maglev.size > 0 else { return nil }
        var to = -1
        var pos = maglev.slot(hash)
        for _ in 0..<AffinityBalancer.spillWalkMax {
            let t = maglevTarget(pos)
            // Clients already moving there count as arrived.
            if candidates & 1 << UInt64(t) != 0 && fits(t, adding: 1 + arriving(t)) {
                to = t
                break
            }
            pos = nextMaglevSlot(pos)
        }
        if to < 0 {
            let least = leastLoaded(candidates)
            guard fits(least, adding: 1 + arriving(least)) else { return nil }
            to = least
        }
        counts.moves[.age] &+= 1
        table[slot].target = UInt16(to)
        table[slot].generation = generations[to]
        // Absolute expiry counts from the pin, as for any re-pin.
        table[slot].pinnedSec = nowSec
        return to
    }
}
