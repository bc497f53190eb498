/// Affinity entries in a form another process can take over (the
/// zero-downtime upgrade, docs/OPERATIONS.md "Upgrade").
///
/// A table entry is not portable as it is: its target is a balancer slot
/// (which the successor may number differently), its times are seconds on
/// this process's clock, and its connection count belongs to connections
/// that stay with the old process. An exported pin therefore names its
/// target by address and carries ages, not times; connection counts are not
/// carried.
public struct ExportedPin: Sendable, Equatable {
    public var key: AffinityKey
    public var target: SocketAddress
    /// Seconds since the client's last activity when exported.
    public var idleSec: UInt32
    /// Seconds since the client was pinned to `target` when exported.
    public var pinnedAgeSec: UInt32

    public init(key: AffinityKey, target: SocketAddress, idleSec: UInt32, pinnedAgeSec: UInt32) {
        self.key = key
        self.target = target
        self.idleSec = idleSec
        self.pinnedAgeSec = pinnedAgeSec
    }
}

/// What an import did, for the log line.
public struct PinImportResult: Sendable, Equatable {
    public var imported = 0
    /// Pinned to a target this pool no longer has.
    public var unknownTarget = 0
    /// Lapsed by the successor's timeout.
    public var expired = 0
    /// Left out because the table was full (the least recently seen go).
    public var overCapacity = 0
    /// The key was already in the table.
    public var duplicate = 0
    public init() {}
}

extension AffinityBalancer {
    /// Every live pin whose target is still current, most recently seen
    /// first, at most `limit`. Cold path: walks the table and allocates.
    public func exportPins(now: Millis, limit: Int = AffinityConfig.capacityMax) -> [ExportedPin] {
        let nowSec = AffinityTable.seconds(now)
        var out: [ExportedPin] = []
        out.reserveCapacity(min(table.count, max(0, limit)))
        table.forEach { _, e in
            guard !table.isExpired(e, nowSec: nowSec) else { return }
            let t = Int(e.target)
            // A stale pin (its slot changed hands, or the target left) is
            // re-pinned on the client's next connection anyway.
            guard present & 1 << UInt64(t) != 0, generations[t] == e.generation, let a = addresses[t] else { return }
            out.append(ExportedPin(key: e.key, target: a, idleSec: nowSec &- e.seenSec, pinnedAgeSec: nowSec &- e.pinnedSec))
        }
        out.sort { $0.idleSec < $1.idleSec }
        if out.count > limit { out.removeLast(out.count - max(0, limit)) }
        return out
    }

    /// Takes pins exported by another process (`exportPins`) into this
    /// balancer's table, before it places any client. Pins to a target this
    /// pool does not have, and pins lapsed under this balancer's timeout,
    /// are left out; the table is filled most recently seen first and never
    /// beyond its capacity, and nothing already in it is evicted.
    @discardableResult
    public mutating func importPins(_ pins: [ExportedPin], now: Millis) -> PinImportResult {
        var result = PinImportResult()
        let nowSec = AffinityTable.seconds(now)
        let timeoutSec = table.timeoutSec
        let ordered = pins.sorted { $0.idleSec < $1.idleSec }
        for (n, pin) in ordered.enumerated() {
            guard let t = targetIndex(of: pin.target) else {
                result.unknownTarget += 1
                continue
            }
            let age = config.mode == .idle ? pin.idleSec : pin.pinnedAgeSec
            guard age < timeoutSec else {
                result.expired += 1
                continue
            }
            guard table.count < table.capacity else {
                // Everything after this one is seen less recently: none fits.
                result.overCapacity += ordered.count - n
                break
            }
            let key = pin.key
            let hash = key.hash(hashKey)
            guard table.find(key, hash: hash) < 0 else {
                result.duplicate += 1
                continue
            }
            if table.insertImported(key, hash: hash, target: UInt16(t), generation: generations[t],
                                    seenSec: nowSec &- pin.idleSec, pinnedSec: nowSec &- pin.pinnedAgeSec) {
                result.imported += 1
            } else {
                result.overCapacity += 1
            }
        }
        return result
    }
}

/// A set of exported pins per pool, and their byte form for the takeover
/// socket: compact (26 bytes a pin) because a table may hold millions.
///
/// Layout, integers big-endian:
/// `"SKAF"`, version u8, pool count u16; per pool: name (u16 length +
/// UTF-8), target count u16, each target address (u8 length + UTF-8 text),
/// pin count u32, each pin: key hi u64, key lo u64, target index u16,
/// idle s u32, pinned age s u32.
public struct AffinityExport: Sendable, Equatable {
    public static let version: UInt8 = 1
    public static let magic: [UInt8] = Array("SKAF".utf8)

    public struct Pool: Sendable, Equatable {
        public var name: String
        public var pins: [ExportedPin]
        public init(name: String, pins: [ExportedPin]) {
            self.name = name
            self.pins = pins
        }
    }

    public var pools: [Pool]
    public init(pools: [Pool]) { self.pools = pools }

    public var pinCount: Int { pools.reduce(0) { $0 + $1.pins.count } }

    public struct DecodeError: Error, Equatable, CustomStringConvertible {
        public var description: String
        init(_ d: String) { description = "affinity export: \(d)" }
    }

    public func encoded() -> [UInt8] {
        var out: [UInt8] = AffinityExport.magic
        out.append(AffinityExport.version)
        func u16(_ v: Int) { out.append(UInt8(truncatingIfNeeded: v >> 8)); out.append(UInt8(truncatingIfNeeded: v)) }
        func u32(_ v: UInt32) { for s in stride(from: 24, through: 0, by: -8) { out.append(UInt8(truncatingIfNeeded: v >> UInt32(s))) } }
        func u64(_ v: UInt64) { for s in stride(from: 56, through: 0, by: -8) { out.append(UInt8(truncatingIfNeeded: v >> UInt64(s))) } }
        precondition(pools.count <= Int(UInt16.max), "more pools than the format holds")
        u16(pools.count)
        for p in pools {
            let name = Array(p.name.utf8)
            precondition(name.count <= Int(UInt16.max), "pool name longer than the format holds")
            u16(name.count)
            out.append(contentsOf: name)
            var targets: [SocketAddress] = []
            var index: [SocketAddress: Int] = [:]
            for pin in p.pins where index[pin.target] == nil {
                index[pin.target] = targets.count
                targets.append(pin.target)
            }
            precondition(targets.count <= Int(UInt16.max), "more targets than the format holds")
            u16(targets.count)
            for t in targets {
                let text = Array("\(t)".utf8)
                out.append(UInt8(text.count))
                out.append(contentsOf: text)
            }
            u32(UInt32(p.pins.count))
            for pin in p.pins {
                u64(pin.key.hi)
                u64(pin.key.lo)
                u16(index[pin.target]!)
                u32(pin.idleSec)
                u32(pin.pinnedAgeSec)
            }
        }
        return out
    }

    /// Reads `encoded()`'s bytes back; every length is checked against what
    /// is left, so a truncated or hostile blob is an error, not a crash.
    public static func decode(_ bytes: [UInt8]) throws(DecodeError) -> AffinityExport {
        var r = ByteReader(bytes) { DecodeError($0) }
        try r.need(5)
        guard Array(bytes[0..<4]) == magic else { throw DecodeError("not an affinity export (bad magic)") }
        try r.skip(4)
        let v = Int(try r.u8())
        guard v == Int(version) else { throw DecodeError("version \(v); this stickyd reads version \(version)") }
        var pools: [Pool] = []
        for _ in 0..<(try r.u16()) {
            let name = try r.text(try r.u16())
            var targets: [SocketAddress] = []
            for _ in 0..<(try r.u16()) {
                let t = try r.text(Int(try r.u8()))
                guard let a = SocketAddress(t) else { throw DecodeError("pool '\(name)': bad target address '\(t)'") }
                targets.append(a)
            }
            let count = Int(try r.u32())
            guard count <= AffinityConfig.capacityMax else { throw DecodeError("pool '\(name)': \(count) pins is over the maximum") }
            try r.need(count * 26)
            var pins: [ExportedPin] = []
            pins.reserveCapacity(count)
            for _ in 0..<count {
                let hi = try r.u64()
                let lo = try r.u64()
                let t = try r.u16()
                guard t < targets.count else { throw DecodeError("pool '\(name)': target index \(t) out of range") }
                let idle = try r.u32()
                let age = try r.u32()
                pins.append(ExportedPin(key: AffinityKey(hi: hi, lo: lo), target: targets[t], idleSec: idle, pinnedAgeSec: age))
            }
            pools.append(Pool(name: name, pins: pins))
        }
        guard r.remaining == 0 else { throw DecodeError("\(r.remaining) trailing bytes") }
        return AffinityExport(pools: pools)
    }
}
