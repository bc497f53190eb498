/// Why a pin was made: a fresh pick, or a move and its reason. Carried to
/// peers so that `show peers` and the logs can say what they were sent.
public enum PinReason: UInt8, Sendable, Equatable, CustomStringConvertible {
    case new = 0
    case targetDown = 1
    case targetDrained = 2
    case targetMaint = 3
    case targetRemoved = 4
    case connectFailed = 5
    case age = 6
    /// Sent back to a peer whose pin lost a conflict here: the winner, so
    /// that both ends hold the same one.
    case conflict = 7
    /// Part of a full-table pull (a starting instance).
    case sync = 8

    public init(_ move: MoveReason) {
        switch move {
        case .targetDown: self = .targetDown
        case .targetDrained: self = .targetDrained
        case .targetMaint: self = .targetMaint
        case .targetRemoved: self = .targetRemoved
        case .connectFailed: self = .connectFailed
        case .age: self = .age
        }
    }

    /// The move reason this stands for, if it is one.
    public var move: MoveReason? {
        switch self {
        case .targetDown: return .targetDown
        case .targetDrained: return .targetDrained
        case .targetMaint: return .targetMaint
        case .targetRemoved: return .targetRemoved
        case .connectFailed: return .connectFailed
        case .age: return .age
        case .new, .conflict, .sync: return nil
        }
    }

    public var description: String {
        switch self {
        case .new: return "new"
        case .conflict: return "conflict"
        case .sync: return "sync"
        default: return move.map { "\($0)" } ?? "unknown"
        }
    }
}

/// One pin as instances exchange it. The target is named by address (slots
/// are per process), and the time it was pinned is an absolute Unix second
/// stamped by the instance that made the pin: every instance then holds the
/// same number for the same pin, which is what lets two of them settle a
/// conflict the same way without talking (`PeerPin.wins`).
public struct PeerPin: Sendable, Equatable {
    public var key: AffinityKey
    public var target: SocketAddress
    /// Seconds since the client's last activity, when sent.
    public var idleSec: UInt32
    /// Unix seconds, on the clock of the instance that made the pin.
    public var pinnedAt: UInt64
    public var reason: PinReason

    public init(key: AffinityKey, target: SocketAddress, idleSec: UInt32, pinnedAt: UInt64, reason: PinReason) {
        self.key = key
        self.target = target
        self.idleSec = idleSec
        self.pinnedAt = pinnedAt
        self.reason = reason
    }

    /// The conflict rule: of two live pins of one key to different targets
    /// that both still take pinned clients, the older wins (the client has
    /// been going there longest), and at the same second the lower target
    /// address. A total order on values both instances hold identically, so
    /// each reaches the same verdict on its own.
    public static func wins(pinnedAt a: UInt64, target ta: SocketAddress, over b: UInt64, target tb: SocketAddress) -> Bool {
        if a != b { return a < b }
        return SocketAddress.ordered(ta, tb)
    }
}

extension SocketAddress {
    /// A fixed total order (family, address bytes, port) for tie-breaks.
    static func ordered(_ a: SocketAddress, _ b: SocketAddress) -> Bool {
        func words(_ s: SocketAddress) -> (UInt64, UInt64, UInt64) {
            switch s.ip {
            case .v4(let v): return (0, UInt64(v), UInt64(s.port))
            case .v6(let hi, let lo): return (1 << 63 | hi >> 1, hi << 63 | lo >> 1, UInt64(s.port) | (lo & 1) << 16)
            }
        }
        let x = words(a), y = words(b)
        if x.0 != y.0 { return x.0 < y.0 }
        if x.1 != y.1 { return x.1 < y.1 }
        return x.2 < y.2
    }
}

/// A message between peers.
public enum PeerMessage: Sendable, Equatable {
    /// First on every connection, both ways: who is speaking. `fingerprint`
    /// is a digest of the hash key (`PeerWire.keyFingerprint`): instances
    /// with different keys place clients differently, and refuse each other.
    case hello(name: String, fingerprint: UInt64)
    /// A batch of pins of one pool. `sentAtMs` (Unix ms, the sender's
    /// clock) gives the receiver the link's lag.
    case pins(pool: String, sentAtMs: UInt64, pins: [PeerPin])
    /// Asks for the whole table: the answer is `pins` frames, then `syncEnd`.
    case syncRequest
    /// The end of a full-table answer, with the number of pins sent.
    case syncEnd(count: UInt32)
    /// Keeps an idle link proven alive (and its lag measured).
    case heartbeat(sentAtMs: UInt64)
}

/// The peer protocol's frames: `u32 length | u8 type | payload`, integers
/// big-endian, the length counting type and payload. Pure: the control
/// plane owns the sockets.
///
/// - hello (1): version u8, name (u8 length + UTF-8), key fingerprint u64
/// - pins (2): pool (u16 length + UTF-8), sent-at ms u64, count u16, per
///   pin: key hi u64, key lo u64, target (u8 length + text), idle s u32,
///   pinned-at s u64, reason u8
/// - syncRequest (3): empty
/// - syncEnd (4): count u32
/// - heartbeat (5): sent-at ms u64
public enum PeerWire {
    public static let version: UInt8 = 1
    /// Largest frame either end sends or takes: a bad length is an error,
    /// not an allocation.
    public static let frameMax = 1 << 20
    /// Most pins in one `pins` frame; a batch of this many fits `frameMax`
    /// (at most 78 bytes a pin).
    public static let pinsPerFrameMax = 8_192

    public struct DecodeError: Error, Equatable, CustomStringConvertible {
        public var description: String
        init(_ d: String) { description = "peer message: \(d)" }
    }

    /// A digest of the hash key, so two instances can check they share it
    /// without sending it.
    public static func keyFingerprint(_ key: SipKey) -> UInt64 {
        SipHash13.hash(0x7374_6963_6b79_6470, 0x6565_7273_2D6B_6579, key: key)
    }

    public static func encode(_ message: PeerMessage) -> [UInt8] {
        var out: [UInt8] = [0, 0, 0, 0]
        func u8(_ v: UInt8) { out.append(v) }
        func u16(_ v: Int) { out.append(UInt8(truncatingIfNeeded: v >> 8)); out.append(UInt8(truncatingIfNeeded: v)) }
        func u32(_ v: UInt32) { for s in stride(from: 24, through: 0, by: -8) { out.append(UInt8(truncatingIfNeeded: v >> UInt32(s))) } }
        func u64(_ v: UInt64) { for s in stride(from: 56, through: 0, by: -8) { out.append(UInt8(truncatingIfNeeded: v >> UInt64(s))) } }
        switch message {
        case .hello(let name, let fingerprint):
            u8(1)
            u8(version)
            let n = Array(name.utf8.prefix(255))
            u8(UInt8(n.count))
            out.append(contentsOf: n)
            u64(fingerprint)
        case .pins(let pool, let sentAtMs, let pins):
            precondition(pins.count <= pinsPerFrameMax, "split pins into frames of at most pinsPerFrameMax")
            u8(2)
            let p = Array(pool.utf8.prefix(Int(UInt16.max)))
            u16(p.count)
            out.append(contentsOf: p)
            u64(sentAtMs)
            u16(pins.count)
            for pin in pins {
                u64(pin.key.hi)
                u64(pin.key.lo)
                let t = Array("\(pin.target)".utf8)
                u8(UInt8(t.count))
                out.append(contentsOf: t)
                u32(pin.idleSec)
                u64(pin.pinnedAt)
                u8(pin.reason.rawValue)
            }
        case .syncRequest:
            u8(3)
        case .syncEnd(let count):
            u8(4)
            u32(count)
        case .heartbeat(let sentAtMs):
            u8(5)
            u64(sentAtMs)
        }
        let length = UInt32(out.count - 4)
        for i in 0..<4 { out[i] = UInt8(truncatingIfNeeded: length >> UInt32(24 - 8 * i)) }
        return out
    }

    /// Takes one whole frame off the front of `buffer`: nil while it is
    /// incomplete; an error for a frame no peer of this version sends
    /// (the connection is then closed, and the pins in it counted lost).
    public static func decodeFrame(_ buffer: inout [UInt8]) throws(DecodeError) -> PeerMessage? {
        guard buffer.count >= 4 else { return nil }
        let length = buffer[0..<4].reduce(0) { $0 << 8 | Int($1) }
        guard length >= 1, length <= frameMax else { throw DecodeError("frame length \(length) outside 1...\(frameMax)") }
        guard buffer.count >= 4 + length else { return nil }
        let frame = Array(buffer[4..<(4 + length)])
        buffer.removeFirst(4 + length)
        return try decode(frame)
    }

    /// One frame's type and payload (without the length).
    public static func decode(_ bytes: [UInt8]) throws(DecodeError) -> PeerMessage {
        var r = ByteReader(bytes) { DecodeError($0) }
        let type = try r.u8()
        let message: PeerMessage
        switch type {
        case 1:
            let v = try r.u8()
            guard v == version else { throw DecodeError("version \(v); this stickyd speaks version \(version)") }
            let name = try r.text(Int(try r.u8()), validating: true)
            message = .hello(name: name, fingerprint: try r.u64())
        case 2:
            let pool = try r.text(try r.u16(), validating: true)
            let sentAt = try r.u64()
            let count = try r.u16()
            guard count <= pinsPerFrameMax else { throw DecodeError("\(count) pins in one frame is over \(pinsPerFrameMax)") }
            var pins: [PeerPin] = []
            pins.reserveCapacity(count)
            for _ in 0..<count {
                let hi = try r.u64()
                let lo = try r.u64()
                let t = try r.text(Int(try r.u8()), validating: true)
                guard let target = SocketAddress(t) else { throw DecodeError("pool '\(pool)': bad target address '\(t)'") }
                let idle = try r.u32()
                let at = try r.u64()
                let r = try r.u8()
                guard let reason = PinReason(rawValue: r) else { throw DecodeError("unknown pin reason \(r)") }
                pins.append(PeerPin(key: AffinityKey(hi: hi, lo: lo), target: target, idleSec: idle, pinnedAt: at, reason: reason))
            }
            message = .pins(pool: pool, sentAtMs: sentAt, pins: pins)
        case 3:
            message = .syncRequest
        case 4:
            message = .syncEnd(count: try r.u32())
        case 5:
            message = .heartbeat(sentAtMs: try r.u64())
        default:
            throw DecodeError("unknown message type \(type)")
        }
        guard r.remaining == 0 else { throw DecodeError("\(r.remaining) trailing bytes after message type \(type)") }
        return message
    }
}
