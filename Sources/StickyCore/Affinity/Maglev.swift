/// A weighted Maglev lookup table (Eisenbud et al., NSDI 2016).
///
/// Built off the hot path by the control plane, once per change of the
/// target set or weights, and shared read-only by every worker (it is a
/// value; its arrays are never written after `init`).
///
/// Deterministic: the table depends only on the key and on each target's
/// address and weight, never on the order the targets are listed in nor on
/// their indices. Each target's permutation of slots comes from the keyed
/// SipHash of its address, and targets take their turns in the order of
/// those hashes. So two processes with the same key place clients the same
/// way, and removing one target changes little beyond that target's own
/// slots.
public struct MaglevTable: Sendable, Equatable {
    /// The targets as given, in the caller's order; `slots` holds indices
    /// into this array.
    public let addresses: [SocketAddress]
    public let weights: [Int]
    /// The key the table was built with. A balancer checks it against its
    /// own: clients' slots are hashed with that key.
    public let key: SipKey
    /// A prime. 0 when no target has a positive weight.
    public let size: Int
    /// For each slot, the index in `addresses` of the target that owns it.
    public let slots: [UInt16]

    /// The smallest table size for `targets` targets: a prime at least
    /// 100 × targets and never below 65537, so that each target's share is
    /// within about 1% of its weight's.
    public static func tableSize(targets: Int) -> Int {
        var n = max(65_537, 100 * targets)
        while !isPrime(n) { n += 1 }
        return n
    }

    static func isPrime(_ n: Int) -> Bool {
        if n < 2 { return false }
        if n % 2 == 0 { return n == 2 }
        var d = 3
        while d * d <= n {
            if n % d == 0 { return false }
            d += 2
        }
        return true
    }

    /// The bytes that identify a target: family, address, port. The address
    /// (not the index) so that a target's permutation survives others being
    /// added or removed.
    public static func identity(_ address: SocketAddress) -> [UInt8] {
        var bytes: [UInt8] = []
        switch address.ip {
        case .v4(let v):
            bytes.append(4)
            for i in stride(from: 24, through: 0, by: -8) { bytes.append(UInt8(truncatingIfNeeded: v >> UInt32(i))) }
        case .v6(let hi, let lo):
            bytes.append(6)
            for word in [hi, lo] {
                for i in stride(from: 56, through: 0, by: -8) { bytes.append(UInt8(truncatingIfNeeded: word >> UInt64(i))) }
            }
        }
        bytes.append(UInt8(address.port >> 8))
        bytes.append(UInt8(address.port & 0xFF))
        return bytes
    }

    /// Builds the table. Targets with weight 0 or less get no slots.
    /// Addresses must be distinct and there must be at most 65535 targets.
    ///
    /// Weighted population: the classic algorithm gives each target one
    /// turn per round; here a target earns `weight` credits per round and
    /// takes a turn per `maxWeight` credits, so over the build its share of
    /// turns, and so of slots, is proportional to its weight.
    public init(targets: [TargetSpec], key: SipKey) {
        precondition(targets.count <= Int(UInt16.max), "too many targets for a Maglev table")
        precondition(Set(targets.map(\.address)).count == targets.count, "Maglev targets must be distinct")
        addresses = targets.map(\.address)
        weights = targets.map(\.weight)
        self.key = key

        struct Member {
            var index: Int
            var weight: UInt64
            var offset: Int
            var skip: Int
            var order: UInt64
            var position = 0
        }
        let live = targets.indices.filter { targets[$0].weight > 0 }
        guard !live.isEmpty else {
            size = 0
            slots = []
            return
        }
        let m = MaglevTable.tableSize(targets: live.count)
        var members: [Member] = live.map { i in
            let id = MaglevTable.identity(targets[i].address)
            // Domain bytes keep the three hashes independent.
            let h1 = SipHash13.hash(id + [1], key: key)
            let h2 = SipHash13.hash(id + [2], key: key)
            let h3 = SipHash13.hash(id + [3], key: key)
            let offset = Int(h1 % UInt64(m))
            return Member(index: i, weight: UInt64(targets[i].weight),
                          offset: offset, skip: Int(h2 % UInt64(m - 1)) + 1, order: h3, position: offset)
        }
        // Turn order by hash of identity: independent of the caller's
        // order. Ties (a 2^-64 chance) fall back to the address bytes.
        members.sort {
            $0.order != $1.order ? $0.order < $1.order
                : MaglevTable.identity(targets[$0.index].address).lexicographicallyPrecedes(MaglevTable.identity(targets[$1.index].address))
        }
        let maxWeight = members.map(\.weight).max()!
        // Flat arrays and raw buffers: the fill loop runs about M × ln M
        // times, and array-of-struct accesses cost copies in debug builds.
        let count = members.count
        let owner = members.map { UInt16($0.index) }
        let weight = members.map(\.weight)
        let skip = members.map(\.skip)
        var position = members.map(\.position)
        var credit = [UInt64](repeating: 0, count: count)
        let empty = UInt16.max
        var table = [UInt16](repeating: empty, count: m)
        table.withUnsafeMutableBufferPointer { t in
            var filled = 0
            while true {
                for k in 0..<count {
                    credit[k] += weight[k]
                    while credit[k] >= maxWeight {
                        credit[k] -= maxWeight
                        // Next slot of this target's permutation that is free.
                        var p = position[k]
                        while t[p] != empty {
                            p += skip[k]
                            if p >= m { p -= m }
                        }
                        t[p] = owner[k]
                        p += skip[k]
                        if p >= m { p -= m }
                        position[k] = p
                        filled += 1
                        if filled == m { return }
                    }
                }
            }
        }
        size = m
        slots = table
    }

    /// The slot a client hash maps to: a multiply-shift of the hash into
    /// `0..<size` (fair to within 2^-48, and no division).
    @inlinable @inline(__always)
    public func slot(_ hash: UInt64) -> Int {
        Int(hash.multipliedFullWidth(by: UInt64(size)).high)
    }

    /// The index in `addresses` of the target for `hash`, or nil when no
    /// target has weight.
    @inlinable
    public func lookup(_ hash: UInt64) -> Int? {
        size == 0 ? nil : Int(slots[slot(hash)])
    }

    /// How many slots each target owns, in `addresses` order.
    public func slotCounts() -> [Int] {
        var counts = [Int](repeating: 0, count: addresses.count)
        for s in slots { counts[Int(s)] += 1 }
        return counts
    }
}
