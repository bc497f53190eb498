// Pins shared with peer instances (docs/SCALING.md): what the data plane
// reads after a placement to know it made or moved a pin, and how a pin
// from a peer is laid into this balancer's table.
//
// The rule: a pin from a peer wins over a fresh pick, since whichever
// instance saw the client first has already sent it somewhere. When both
// instances made a pin to different targets that both still take pinned
// clients (they pinned the client at the same moment, or one of them moved
// it), `PeerPin.wins` decides, the same way on every instance, and the
// conflict is counted. A pin to a target that no longer takes pinned
// clients gives way to any usable one.

/// Unix seconds against the affinity table's seconds (the monotonic clock's
/// seconds, which wrap at 2^32). `epochSec` is fixed when the process
/// starts, so a pin's stamp read back is always the same number: what
/// makes conflicts settle identically on every instance.
public struct PeerClock: Sendable, Equatable {
    /// Unix seconds at table second 0.
    public let epochSec: Int64

    public init(epochSec: Int64) { self.epochSec = epochSec }

    /// From Unix and monotonic milliseconds read together.
    public init(unixMs: Int64, monotonicMs: Millis) {
        epochSec = unixMs / 1000 - Int64(AffinityTable.seconds(monotonicMs))
    }

    /// The Unix second of a table second no later than `nowSec`.
    public func unixSec(ofTableSec s: UInt32, nowSec: UInt32) -> UInt64 {
        UInt64(max(0, epochSec + Int64(nowSec) - Int64(nowSec &- s)))
    }

    /// The table second of a Unix second. One in the future (the other
    /// instance's clock is ahead) is taken as now, so the pin does not read
    /// as lapsed.
    public func tableSec(ofUnix u: UInt64, nowSec: UInt32) -> UInt32 {
        let age = epochSec + Int64(nowSec) - Int64(clamping: u)
        return age <= 0 ? nowSec : nowSec &- UInt32(clamping: age)
    }
}

/// The counts a placement moves when it makes or changes a pin: read before
/// and after `place` to tell a hit from a new pin. Plain fields, so taking
/// one costs no allocation.
public struct PinTally: Sendable, Equatable {
    var misses: UInt64
    var moves: MoveCounts
}

/// What `applyPeerPin` did with a pin.
public enum PeerPinOutcome: Sendable, Equatable {
    /// The client had no live pin here: it has this one now.
    case stored
    /// Already pinned to the same target (the older stamp is kept).
    case same
    /// Pinned here to a target that no longer takes pinned clients: the
    /// peer's pin replaces it. Not a conflict: it is how a move travels.
    case replaced
    /// A conflict the peer's pin won: the client's pin here moved to it.
    case conflictTaken
    /// A conflict this instance's pin won: it stays, and should be sent
    /// back (the entry at this slot) so the peer ends up with it too.
    case conflictKept(entry: Int32)
    /// The target is not in this pool, or takes no pinned clients here.
    case unknownTarget
    /// Lapsed under this balancer's timeout.
    case expired
    /// No room without evicting a live pin: left out.
    case full
}

extension AffinityBalancer {
    public var pinTally: PinTally { PinTally(misses: counts.misses, moves: counts.moves) }

    /// Why the placements since `before` made or moved a pin; nil for hits.
    public func pinReason(since before: PinTally) -> PinReason? {
        let m = counts.moves
        if counts.misses != before.misses { return .new }
        if m.targetDown != before.moves.targetDown { return .targetDown }
        if m.targetDrained != before.moves.targetDrained { return .targetDrained }
        if m.targetMaint != before.moves.targetMaint { return .targetMaint }
        if m.targetRemoved != before.moves.targetRemoved { return .targetRemoved }
        if m.connectFailed != before.moves.connectFailed { return .connectFailed }
        if m.age != before.moves.age { return .age }
        return nil
    }

    /// The pin at a table slot (a `Placement.entry`), as peers get it: key,
    /// target address, and the table seconds of its pin and last activity.
    /// Nil for an empty slot or a pin whose target slot changed hands.
    public func outgoingPin(entry: Int32) -> (key: AffinityKey, target: SocketAddress, pinnedSec: UInt32, seenSec: UInt32)? {
        guard entry >= 0 else { return nil }
        let e = table[entry]
        let t = Int(e.target)
        guard e.keyHi != 0 || e.keyLo != 0, present & 1 << UInt64(t) != 0, generations[t] == e.generation,
              let a = addresses[t] else { return nil }
        return (e.key, a, e.pinnedSec, e.seenSec)
    }

    /// Lays a peer's pin into the table (see the rule at the top of this
    /// file). Never evicts a live pin; never touches connection counts, so
    /// connections open on the old target close against it as placed.
    public mutating func applyPeerPin(_ pin: PeerPin, now: Millis, clock: PeerClock) -> PeerPinOutcome {
        guard let t = targetIndex(of: pin.target), keepsPinned & 1 << UInt64(t) != 0 else { return .unknownTarget }
        let nowSec = AffinityTable.seconds(now)
        let pinnedSec = clock.tableSec(ofUnix: pin.pinnedAt, nowSec: nowSec)
        let seenSec = nowSec &- min(pin.idleSec, nowSec &- pinnedSec)
        let age = config.mode == .idle ? nowSec &- seenSec : nowSec &- pinnedSec
        guard age < table.timeoutSec else { return .expired }
        let hash = pin.key.hash(hashKey)
        let slot = table.find(pin.key, hash: hash)
        guard slot >= 0 else {
            let ok = table.insertImported(pin.key, hash: hash, target: UInt16(t), generation: generations[t],
                                          seenSec: seenSec, pinnedSec: pinnedSec)
            return ok ? .stored : .full
        }
        let e = table[slot]
        if table.isExpired(e, nowSec: nowSec) {
            table.noteExpired()
            table[slot] = AffinityEntry(keyHi: pin.key.hi, keyLo: pin.key.lo, seenSec: seenSec, pinnedSec: pinnedSec,
                                        connections: 0, target: UInt16(t), generation: generations[t])
            return .stored
        }
        let local = Int(e.target)
        let usable = keepsPinned & 1 << UInt64(local) != 0 && generations[local] == e.generation
        let localAt = clock.unixSec(ofTableSec: e.pinnedSec, nowSec: nowSec)
        let newerSeen = nowSec &- seenSec < nowSec &- e.seenSec ? seenSec : e.seenSec
        if usable && local == t {
            // Both picked the same target: keep the older stamp, which is
            // the one every instance ends up holding.
            table.withEntry(slot) {
                if pin.pinnedAt < localAt { $0.pinnedSec = pinnedSec }
                $0.seenSec = newerSeen
            }
            return .same
        }
        if usable, let localAddress = addresses[local],
           !PeerPin.wins(pinnedAt: pin.pinnedAt, target: pin.target, over: localAt, target: localAddress) {
            return .conflictKept(entry: slot)
        }
        table.withEntry(slot) {
            $0.target = UInt16(t)
            $0.generation = generations[t]
            $0.pinnedSec = pinnedSec
            $0.seenSec = newerSeen
        }
        return usable ? .conflictTaken : .replaced
    }
}
