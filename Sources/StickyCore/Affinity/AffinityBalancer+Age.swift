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
        guard !placement.leavingForAge, placement.entry >= 0 else { return false }
        // Too many moves unsettled: wait for some to settle rather than
        // lose track of one (the data path does not grow the list).
        guard ageMoves.count < AffinityBalancer.ageMovesMax else { return false }
        // decideAgeMove claimed the move's leaving and arriving places.
        guard let to = decideAgeMove(placement, client: client, now: now) else { return false }
        placement.leavingForAge = true
        placement.ageMoveTarget = Int8(to)
        ageMoves.append(AgeMoveInFlight(entry: placement.entry, to: Int8(to),
                                        arrivalDeadlineSec: AffinityTable.seconds(now) &+ AffinityBalancer.ageArrivalWaitSec))
        return true
    }

    /// The age-moved connection closed: it no longer weighs on its target.
    /// The client counts as arriving at the move's target until its next
    /// connection lands there (`arrived`) or the wait runs out, and in
    /// between it is in transit, counted in the pool's total: a client that
    /// reconnects late would otherwise vanish from every count, shrink the
    /// bound and set off moves of clients the bound does not call for.
    mutating func leftForAge(_ placement: Placement, nowSec: UInt32) {
        let to = Int(placement.ageMoveTarget)
        precondition(to >= 0 && to < AffinityBalancer.maxTargets, "an age move with no destination")
        precondition(addLeaving(Int(placement.target), -1) > 0, "an age move not counted")
        if let i = ageMoves.firstIndex(where: { $0.entry == placement.entry && Int($0.to) == to && !$0.oldClosed }) {
            if ageMoves[i].arrived {
                ageMoves.swapAt(i, ageMoves.count - 1)
                ageMoves.removeLast()
            } else {
                ageMoves[i].oldClosed = true
                _ = addInTransit(1)
            }
        } else {
            // Not tracked (it cannot be, as placed today): give the
            // arrival back rather than hold a place on `to` for good.
            precondition(addArriving(to, -1) > 0, "an age arrival not counted")
        }
        settleOverdueArrivals(nowSec: nowSec)
    }

    /// A connection of the client in `entry` opened on `t`: the first
    /// unsettled move of that client to `t` has arrived.
    @usableFromInline mutating func arrived(entry: Int32, at t: Int) {
        if let i = ageMoves.firstIndex(where: { $0.entry == entry && Int($0.to) == t && !$0.arrived }) {
            precondition(addArriving(t, -1) > 0, "an age arrival not counted")
            if ageMoves[i].oldClosed {
                _ = addInTransit(-1)
                ageMoves.swapAt(i, ageMoves.count - 1)
                ageMoves.removeLast()
            } else {
                ageMoves[i].arrived = true
            }
        }
    }

    /// A client that has not reconnected within `ageArrivalWaitSec` may
    /// never come back: stop holding a place for it.
    @usableFromInline mutating func settleOverdueArrivals(nowSec: UInt32) {
        var i = 0
        while i < ageMoves.count {
            let m = ageMoves[i]
            guard !m.arrived, nowSec >= m.arrivalDeadlineSec else { i += 1; continue }
            precondition(addArriving(Int(m.to), -1) > 0, "an age arrival not counted")
            if m.oldClosed {
                _ = addInTransit(-1)
                ageMoves.swapAt(i, ageMoves.count - 1)
                ageMoves.removeLast()
            } else {
                ageMoves[i].arrived = true
                i += 1
            }
        }
    }

    mutating func addInTransit(_ delta: Int) -> Int {
        if let shared = sharedLoads { return shared.addInTransit(delta) }
        defer { inTransitForAge += delta }
        return inTransitForAge
    }

    var inTransit: Int { sharedLoads?.inTransit ?? inTransitForAge }

    /// Claims (1) or gives back (-1) an age move leaving `t`; returns the
    /// count before. Pool-wide when workers share loads, so the claim is
    /// the atomic step that keeps two workers from shedding one excess twice.
    mutating func addLeaving(_ t: Int, _ delta: Int) -> Int {
        if let shared = sharedLoads { return shared.addLeaving(t, delta) }
        defer { leavingForAge[t] += delta }
        return leavingForAge[t]
    }

    mutating func addArriving(_ t: Int, _ delta: Int) -> Int {
        if let shared = sharedLoads { return shared.addArriving(t, delta) }
        defer { arrivingForAge[t] += delta }
        return arrivingForAge[t]
    }

    /// Where an age check moves the pin of `placement`'s client: nil for
    /// no move; the pin's current target when the pin already moved. A
    /// non-nil answer has claimed the move's leaving and arriving places.
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
            guard pinIsCurrent && keepsPinned & bit != 0 else { return nil }
            _ = addLeaving(Int(placement.target), 1)
            _ = addArriving(pinned, 1)
            return pinned
        }
        guard pinIsCurrent, takesNew & bit != 0 else { return nil }

        // c × L / W: a target's bound is this times its weight.
        // Clients in transit are the pool's too, between connections.
        let (load, weight) = loadAndWeight(over: takesNew)
        let perWeight = factor * Double(load + inTransit) / Double(weight)
        func fits(_ t: Int, adding: Int) -> Bool {
            Double(self.load(of: t) + adding) <= perWeight * Double(weights[t])
        }
        // Connections already told to leave no longer weigh on it. Claim
        // this one's leave before the check, so a concurrent check on
        // another worker counts it.
        let leavingBefore = addLeaving(pinned, 1)
        guard !fits(pinned, adding: -leavingBefore) else {
            _ = addLeaving(pinned, -1)
            return nil
        }
        // Clients already moving to `t` count as arrived; the claim makes
        // this client one of them before the check, as for the leave.
        func claimArrival(_ t: Int) -> Bool {
            let arrivingBefore = addArriving(t, 1)
            if fits(t, adding: 1 + arrivingBefore) { return true }
            _ = addArriving(t, -1)
            return false
        }

        let candidates = takesNew & ~bit
        var to = -1
        if candidates != 0, maglev.size > 0 {
            var pos = maglev.slot(hash)
            for _ in 0..<AffinityBalancer.spillWalkMax {
                let t = maglevTarget(pos)
                if candidates & 1 << UInt64(t) != 0 && claimArrival(t) {
                    to = t
                    break
                }
                pos = nextMaglevSlot(pos)
            }
            if to < 0 {
                let least = leastLoaded(candidates)
                if claimArrival(least) { to = least }
            }
        }
        guard to >= 0 else {
            _ = addLeaving(pinned, -1)
            return nil
        }
        counts.moves[.age] &+= 1
        table[slot].target = UInt16(to)
        table[slot].generation = generations[to]
        // Absolute expiry counts from the pin, as for any re-pin.
        table[slot].pinnedSec = nowSec
        return to
    }
}

/// One age move until both ends are settled: the old connection closed
/// (`oldClosed`), and the client's next connection landed on `to` or the
/// wait for it ran out (`arrived`). Either may come first: a gRPC client
/// opens its next connection as soon as the GOAWAY arrives, while the old
/// one finishes its streams; a slow one reconnects after the close.
@usableFromInline struct AgeMoveInFlight: Sendable {
    var entry: Int32
    var to: Int8
    var arrivalDeadlineSec: UInt32
    var oldClosed = false
    var arrived = false

    init(entry: Int32, to: Int8, arrivalDeadlineSec: UInt32) {
        self.entry = entry
        self.to = to
        self.arrivalDeadlineSec = arrivalDeadlineSec
    }
}

extension AffinityBalancer {
    /// Unsettled age moves one balancer tracks. An age check finds the
    /// list full only if hundreds of clients are between connections; it
    /// then leaves its connection for a later check.
    static let ageMovesMax = 256
    /// How long a moved client's place on its new target is held for its
    /// next connection. gRPC reconnects at once; 5 s covers a loaded host.
    static let ageArrivalWaitSec: UInt32 = 5
}
