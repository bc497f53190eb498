/// One client's affinity: 32 bytes, two to a cache line.
///
/// Times are whole seconds on the caller's monotonic clock, truncated to 32
/// bits and compared with wrapping subtraction, so they stay right for 136
/// years of uptime whatever the clock's origin.
public struct AffinityEntry: Sendable, Equatable {
    public var keyHi: UInt64
    public var keyLo: UInt64
    /// Last activity: a connection placed or closed. Drives idle expiry and
    /// the least-recently-used choice.
    public var seenSec: UInt32
    /// When the client was pinned to `target`. Drives absolute expiry.
    public var pinnedSec: UInt32
    /// Connections placed and not yet closed or failed. Counted from
    /// `place` (not from `opened`) so that an entry whose connect is still
    /// in flight is as safe from eviction as one with an open connection:
    /// the data path holds its handle either way.
    public var connections: UInt32
    /// The balancer's target slot.
    public var target: UInt16
    /// The slot's generation when pinned: a slot that later holds a
    /// different target has another generation, so the pin reads as stale.
    /// (It wraps after 65536 reuses of one slot; a pin idle through all of
    /// them would read as current again, which needs 65536 target changes
    /// within one timeout.)
    public var generation: UInt16

    @inlinable
    public var key: AffinityKey { AffinityKey(hi: keyHi, lo: keyLo) }
}

/// A fixed-capacity hash table from `AffinityKey` to `AffinityEntry`.
///
/// Layout: a flat array of entries in buckets of 8 ways, plus one 64-bit
/// tag word per bucket (one byte per way: 0 = free, else 8 bits of the
/// key's hash). Each key may live in either of two buckets chosen by its
/// keyed hash (two-choice hashing), so a lookup reads at most two tag words
/// and compares full keys only where a tag byte matches. The probe length
/// is therefore bounded at 16 ways whatever the keys are; and since the
/// bucket choice is keyed SipHash, nobody without the key can pick client
/// addresses that pile into one bucket.
///
/// Capacity: `capacity` live entries at most, in about 1/8 more slots.
/// When both of a new key's buckets are full before the table is, one
/// cuckoo step moves a resident to its other bucket (`relocate`), so the
/// table fills to capacity (89% of its slots) without evicting early: the
/// tests fill 100k entries with no eviction.
///
/// Eviction, when a new key finds no room (the table holds `capacity`
/// entries, or both its buckets are full):
/// 1. a bounded sweep (`sweepOnFullSlots` slots from a clock hand) removes
///    expired entries it passes;
/// 2. then an expired entry among the candidates is reused;
/// 3. else the least recently seen entry with no open connection among a
///    bounded sample (the key's 16 ways, plus the slots the sweep just
///    passed when the key's buckets have a free way) is evicted and
///    counted. This is sampled LRU, as Redis does it: the victim is the
///    oldest of up to 48 entries, not of the whole table, and the cost of
///    an insert stays bounded.
/// An entry with open connections is never evicted nor expired; if all
/// candidates have some, the insert fails and the caller places the client
/// without recording it (counted).
///
/// A value with one owner at a time: each worker owns its table (see
/// DESIGN "Threads"), and nothing here locks.
public struct AffinityTable: Sendable {
    public static let ways = 8
    /// How many slots an insert into a full table sweeps for expired
    /// entries before it evicts a live one. Bounds the cost of a miss on a
    /// full table to a couple of kilobytes read in sequence.
    public static let sweepOnFullSlots = 32

    public let capacity: Int
    public let bucketCount: Int
    public let mode: AffinityConfig.Mode
    /// The timeout in whole seconds (rounded up from the config's ms).
    /// Discovery may change it at runtime (a Service's ClientIP timeout):
    /// every pin is judged by the value in force when it is looked at.
    public internal(set) var timeoutSec: UInt32

    @usableFromInline var tags: [UInt64]
    @usableFromInline var entries: [AffinityEntry]
    public private(set) var count = 0
    /// Next slot the sweep looks at.
    @usableFromInline var hand = 0
    public private(set) var evictions: UInt64 = 0
    public private(set) var expirations: UInt64 = 0
    /// Inserts refused because every candidate had open connections.
    public private(set) var insertFailures: UInt64 = 0

    /// The SipHash key callers hash keys with; the table needs it only to
    /// find a resident entry's other bucket when it relocates it.
    public let hashKey: SipKey

    public init(capacity: Int, mode: AffinityConfig.Mode = .idle,
                timeoutMs: Int64 = AffinityConfig.timeoutMsDefault, hashKey: SipKey) {
        precondition(capacity >= 1, "table capacity must be positive")
        precondition(capacity <= AffinityConfig.capacityMax, "table capacity over the maximum")
        precondition(timeoutMs >= 0, "timeout must not be negative")
        precondition(timeoutMs <= AffinityConfig.timeoutMsMax, "timeout over the maximum")
        self.capacity = capacity
        // capacity × 9/8 slots, at least two buckets so that the two
        // choices differ.
        bucketCount = max(2, (capacity * 9 + 8 * AffinityTable.ways - 1) / (8 * AffinityTable.ways))
        self.mode = mode
        self.hashKey = hashKey
        timeoutSec = UInt32((timeoutMs + 999) / 1000)
        tags = Array(repeating: 0, count: bucketCount)
        let empty = AffinityEntry(keyHi: 0, keyLo: 0, seenSec: 0, pinnedSec: 0, connections: 0, target: 0, generation: 0)
        entries = Array(repeating: empty, count: bucketCount * AffinityTable.ways)
    }

    /// Slots allocated (entries plus slack).
    public var slotCount: Int { entries.count }

    /// Bytes this table holds per entry of capacity: the entry stride and
    /// the tag byte for every slot, slack included.
    public var bytesPerEntry: Double {
        Double(slotCount * (MemoryLayout<AffinityEntry>.stride + 1)) / Double(capacity)
    }

    @inlinable @inline(__always)
    public static func seconds(_ now: Millis) -> UInt32 {
        UInt32(truncatingIfNeeded: now / 1000)
    }

    // MARK: hashing

    /// The key's two buckets and tag byte. The first bucket comes from the
    /// hash's low 32 bits, the second from its high 32 bits, each scaled
    /// with a multiply-shift (no modulo, no power-of-two size); the tag is
    /// the low byte, which the scaling barely uses.
    @inlinable @inline(__always)
    func buckets(_ hash: UInt64) -> (b1: Int, b2: Int, tag: UInt8) {
        let n = UInt64(bucketCount)
        let b1 = Int(((hash & 0xFFFF_FFFF) &* n) >> 32)
        var b2 = Int(((hash >> 32) &* n) >> 32)
        if b2 == b1 { b2 = b1 + 1 == bucketCount ? 0 : b1 + 1 }
        let low = UInt8(truncatingIfNeeded: hash)
        return (b1, b2, low == 0 ? 1 : low)
    }

    /// The ways of `word` whose tag byte equals `tag`, as the high bit of
    /// each matching byte. Exact (no false positives), since a free way's
    /// stale key must never match.
    @inlinable @inline(__always)
    static func matches(_ word: UInt64, _ tag: UInt8) -> UInt64 {
        let x = word ^ (UInt64(tag) &* 0x0101_0101_0101_0101)
        let low7: UInt64 = 0x7F7F_7F7F_7F7F_7F7F
        return ~(((x & low7) &+ low7) | x | low7)
    }

    // MARK: lookup

    /// The slot holding `key`, or -1. Expired entries are found too: the
    /// caller decides what an expired entry means.
    @inlinable
    public func find(_ key: AffinityKey, hash: UInt64) -> Int32 {
        let (b1, b2, tag) = buckets(hash)
        return tags.withUnsafeBufferPointer { tagBuf in
            entries.withUnsafeBufferPointer { entryBuf in
                var m = AffinityTable.matches(tagBuf[b1], tag)
                while m != 0 {
                    let i = b1 &* AffinityTable.ways &+ m.trailingZeroBitCount >> 3
                    if entryBuf[i].keyLo == key.lo && entryBuf[i].keyHi == key.hi { return Int32(truncatingIfNeeded: i) }
                    m &= m &- 1
                }
                m = AffinityTable.matches(tagBuf[b2], tag)
                while m != 0 {
                    let i = b2 &* AffinityTable.ways &+ m.trailingZeroBitCount >> 3
                    if entryBuf[i].keyLo == key.lo && entryBuf[i].keyHi == key.hi { return Int32(truncatingIfNeeded: i) }
                    m &= m &- 1
                }
                return -1
            }
        }
    }

    @inlinable
    public subscript(slot: Int32) -> AffinityEntry {
        get { entries[Int(slot)] }
        _modify { yield &entries[Int(slot)] }
    }

    /// Changes one entry in one access (one uniqueness check, one bounds
    /// check), for the data path's updates.
    @inlinable @inline(__always)
    public mutating func withEntry(_ slot: Int32, _ body: (inout AffinityEntry) -> Void) {
        entries.withUnsafeMutableBufferPointer { body(&$0[Int(slot)]) }
    }

    /// Whether the slot holds an entry.
    public func isOccupied(_ slot: Int32) -> Bool {
        let i = Int(slot)
        return tags[i / AffinityTable.ways] >> UInt64(8 * (i % AffinityTable.ways)) & 0xFF != 0
    }

    /// Whether `entry` has lapsed at `nowSec`. An entry with open
    /// connections never has.
    @inlinable @inline(__always)
    public func isExpired(_ entry: AffinityEntry, nowSec: UInt32) -> Bool {
        guard entry.connections == 0 else { return false }
        let since = mode == .idle ? entry.seenSec : entry.pinnedSec
        return nowSec &- since >= timeoutSec
    }

    // MARK: insert and remove

    /// Records `key` (which must be absent) pinned to `target`, with one
    /// connection counted. Returns its slot, or -1 when every candidate
    /// way has open connections.
    public mutating func insert(_ key: AffinityKey, hash: UInt64, target: UInt16, generation: UInt16, now: Millis) -> Int32 {
        assert(find(key, hash: hash) < 0, "insert of a key already present")
        let nowSec = AffinityTable.seconds(now)
        let (b1, b2, tag) = buckets(hash)
        if count >= capacity { sweep(nowSec: nowSec, slots: AffinityTable.sweepOnFullSlots) }
        let free1 = AffinityTable.matches(tags[b1], 0)
        let free2 = AffinityTable.matches(tags[b2], 0)
        var slot = -1
        if count < capacity && free1 == 0 && free2 == 0 {
            slot = relocate(b1, b2)
        }
        if slot >= 0 {
            // A resident moved to its other bucket and left this way free.
        } else if count < capacity && (free1 != 0 || free2 != 0) {
            // Two-choice: the emptier bucket, so that bucket loads stay even.
            let b = free1.nonzeroBitCount >= free2.nonzeroBitCount ? b1 : b2
            let free = b == b1 ? free1 : free2
            slot = b * AffinityTable.ways + free.trailingZeroBitCount >> 3
        } else {
            // No room without dropping an entry. Candidates are the key's
            // occupied ways; when one of its ways is free (the table is at
            // capacity), the slots the sweep just passed too.
            let sampleSweep = free1 != 0 || free2 != 0
            var victim = -1
            var victimExpired = false
            var victimAge: UInt32 = 0
            func consider(_ i: Int) {
                let e = entries[i]
                guard e.connections == 0 else { return }
                let expired = isExpired(e, nowSec: nowSec)
                let age = nowSec &- e.seenSec
                if victim < 0 || (expired && !victimExpired) || (expired == victimExpired && age > victimAge) {
                    victim = i
                    victimExpired = expired
                    victimAge = age
                }
            }
            for pass in 0..<2 {
                let b = pass == 0 ? b1 : b2
                var occupied = ~AffinityTable.matches(tags[b], 0) & 0x8080_8080_8080_8080
                while occupied != 0 {
                    consider(b * AffinityTable.ways + occupied.trailingZeroBitCount >> 3)
                    occupied &= occupied &- 1
                }
            }
            if sampleSweep {
                var i = hand
                for _ in 0..<min(AffinityTable.sweepOnFullSlots, entries.count) {
                    i = i == 0 ? entries.count - 1 : i - 1
                    if isOccupied(Int32(i)) { consider(i) }
                }
            }
            guard victim >= 0 else {
                insertFailures += 1
                return -1
            }
            if victimExpired { expirations += 1 } else { evictions += 1 }
            remove(Int32(victim))
            let vb = victim / AffinityTable.ways
            if vb == b1 || vb == b2 {
                slot = victim
            } else {
                let free = free1 != 0 ? free1 : free2
                slot = (free1 != 0 ? b1 : b2) * AffinityTable.ways + free.trailingZeroBitCount >> 3
            }
        }
        let b = slot / AffinityTable.ways
        let shift = UInt64(8 * (slot % AffinityTable.ways))
        tags[b] = tags[b] & ~(0xFF << shift) | UInt64(tag) << shift
        entries[slot] = AffinityEntry(
            keyHi: key.hi, keyLo: key.lo, seenSec: nowSec, pinnedSec: nowSec,
            connections: 1, target: target, generation: generation)
        count += 1
        return Int32(slot)
    }

    /// Frees a way in bucket `b1` or `b2` by moving one of their entries
    /// to its other bucket, when that has a free way (one step of cuckoo
    /// hashing). Returns the freed slot, or -1. Without it two-choice
    /// buckets start evicting at about 80% full; with it, only past 99%.
    /// Only entries with no connections move: the data path holds the
    /// slot of the others as a handle. Costs up to 16 hashes, and runs
    /// only when both of a new key's buckets are full.
    mutating func relocate(_ b1: Int, _ b2: Int) -> Int {
        for pass in 0..<2 {
            let b = pass == 0 ? b1 : b2
            for way in 0..<AffinityTable.ways {
                let i = b * AffinityTable.ways + way
                let e = entries[i]
                guard e.connections == 0 else { continue }
                let (c1, c2, tag) = buckets(e.key.hash(hashKey))
                let other = c1 == b ? c2 : c1
                let free = AffinityTable.matches(tags[other], 0)
                guard free != 0 else { continue }
                let j = other * AffinityTable.ways + free.trailingZeroBitCount >> 3
                let shift = UInt64(8 * (j % AffinityTable.ways))
                tags[other] |= UInt64(tag) << shift
                entries[j] = e
                tags[b] &= ~(0xFF << UInt64(8 * way))
                return i
            }
        }
        return -1
    }

    /// Counts an expired entry the caller reused in place (a lapsed client
    /// that came back).
    mutating func noteExpired() { expirations += 1 }

    /// Frees a slot. The entry's bytes stay; only its tag is cleared.
    public mutating func remove(_ slot: Int32) {
        let i = Int(slot)
        precondition(isOccupied(slot), "remove of a free slot")
        precondition(entries[i].connections == 0, "remove of an entry with open connections")
        let shift = UInt64(8 * (i % AffinityTable.ways))
        tags[i / AffinityTable.ways] &= ~(0xFF << shift)
        count -= 1
    }

    /// Removes the expired entries among the next `slots` slots of the
    /// clock hand; returns how many. The event loop calls this from a timer
    /// so that lapsed entries leave before the table fills (and so that
    /// "expired first" holds table-wide, not only among an insert's sample).
    @discardableResult
    public mutating func sweep(nowSec: UInt32, slots: Int) -> Int {
        var removed = 0
        for _ in 0..<min(max(slots, 0), entries.count) {
            let i = hand
            hand = hand + 1 == entries.count ? 0 : hand + 1
            if isOccupied(Int32(i)) && isExpired(entries[i], nowSec: nowSec) {
                remove(Int32(i))
                removed += 1
            }
        }
        expirations += UInt64(removed)
        return removed
    }

    /// Records an imported pin with no connection counted, seen and pinned
    /// at the given times. Returns false when the table is at capacity or
    /// the key's buckets are full of entries it must not drop: an import
    /// never evicts.
    mutating func insertImported(_ key: AffinityKey, hash: UInt64, target: UInt16, generation: UInt16,
                                 seenSec: UInt32, pinnedSec: UInt32) -> Bool {
        guard count < capacity else { return false }
        let (b1, b2, tag) = buckets(hash)
        var slot = -1
        let free1 = AffinityTable.matches(tags[b1], 0)
        let free2 = AffinityTable.matches(tags[b2], 0)
        if free1 == 0 && free2 == 0 {
            slot = relocate(b1, b2)
            guard slot >= 0 else { return false }
        } else {
            let b = free1.nonzeroBitCount >= free2.nonzeroBitCount ? b1 : b2
            let free = b == b1 ? free1 : free2
            slot = b * AffinityTable.ways + free.trailingZeroBitCount >> 3
        }
        let b = slot / AffinityTable.ways
        let shift = UInt64(8 * (slot % AffinityTable.ways))
        tags[b] = tags[b] & ~(0xFF << shift) | UInt64(tag) << shift
        entries[slot] = AffinityEntry(keyHi: key.hi, keyLo: key.lo, seenSec: seenSec, pinnedSec: pinnedSec,
                                      connections: 0, target: target, generation: generation)
        count += 1
        return true
    }

    /// Calls `body` with each occupied slot and its entry. Cold path
    /// (dumps, tests): it walks every slot.
    public func forEach(_ body: (Int32, AffinityEntry) throws -> Void) rethrows {
        for b in 0..<bucketCount {
            var occupied = ~AffinityTable.matches(tags[b], 0) & 0x8080_8080_8080_8080
            while occupied != 0 {
                let i = b * AffinityTable.ways + occupied.trailingZeroBitCount >> 3
                try body(Int32(i), entries[i])
                occupied &= occupied &- 1
            }
        }
    }
}
