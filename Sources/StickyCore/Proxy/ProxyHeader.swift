// PROXY protocol headers (HAProxy's proxy-protocol.txt, versions 1 and 2):
// what a proxy in front of stickyd writes before the client's first byte so
// that stickyd learns the client's real address, and what stickyd writes in
// turn to a target that wants to learn it.
//
// The parser runs once per accepted connection on the worker's loop, so it
// reads a caller's buffer in place and never allocates. It is fed the whole
// prefix received so far on every call (at most `headerBytesMax` bytes, so
// re-reading is cheaper than keeping state) and answers `needMore` until the
// prefix is a complete header or cannot become one.

/// Which PROXY protocol version a header is written in.
public enum ProxyVersion: String, Sendable, CaseIterable {
    /// The human-readable line: `PROXY TCP4 1.2.3.4 5.6.7.8 1111 80\r\n`.
    case v1
    /// The binary form with a 12-byte signature.
    case v2
}

/// Why a prefix can never become a valid header. Each reason is counted on
/// its own (`show stats`), so an operator can tell a misconfigured proxy
/// (`badSignature`: it sends no header) from a broken one.
public enum ProxyError: UInt8, Error, Sendable, CaseIterable, CustomStringConvertible {
    /// Neither `PROXY ` nor the v2 signature: the peer sends no header.
    case badSignature
    /// A v1 line with no CRLF within 107 bytes, or a v2 header longer than
    /// `ProxyHeader.headerBytesMax`.
    case oversized
    /// v2: the version nibble is not 2.
    case badVersion
    /// v2: the command is neither LOCAL nor PROXY.
    case badCommand
    /// v1: not TCP4, TCP6 or UNKNOWN. v2: not AF_INET, AF_INET6 or
    /// AF_UNSPEC over STREAM (UNIX sockets and datagrams are refused).
    case badFamily
    /// An address that does not parse, is of the wrong family for TCP4 or
    /// TCP6, or (v2) an address block shorter than its family needs.
    case badAddress
    /// v1: a port that is not a decimal 0...65535 without leading zeros.
    case badPort
    /// v1: the line's shape: doubled or missing spaces, a bare LF or CR,
    /// too few or too many fields.
    case badFormat

    /// snake_case, for counters.
    public var metricName: String {
        switch self {
        case .badSignature: return "bad_signature"
        case .oversized: return "oversized"
        case .badVersion: return "bad_version"
        case .badCommand: return "bad_command"
        case .badFamily: return "bad_family"
        case .badAddress: return "bad_address"
        case .badPort: return "bad_port"
        case .badFormat: return "bad_format"
        }
    }

    public var description: String { metricName }
}

/// A parsed header.
///
/// `source` and `destination` are nil for a v1 `UNKNOWN` line, a v2 `LOCAL`
/// command (a health check from the proxy itself) and v2 `AF_UNSPEC`: the
/// connection is then keyed by its socket peer, as the spec asks.
///
/// IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) come out as IPv4, the same
/// rule `Sockets.address` applies to dual-stack peers: one client is one
/// affinity key whichever way its proxy wrote it.
public struct ProxyHeader: Sendable, Equatable {
    /// The largest header accepted: v2's 16 fixed bytes plus 520 of
    /// addresses and TLVs, HAProxy's own receive limit. Anything longer is
    /// `oversized`, so a receive buffer of this size always suffices.
    public static let headerBytesMax = 536
    /// v1: the longest line the spec allows, CRLF included.
    public static let v1LineBytesMax = 107
    /// The longest header `encode` writes (a v1 TCP6 line with both
    /// addresses at full length is 104 bytes; v2 with IPv6 is 52).
    public static let encodedBytesMax = 108

    public var version: ProxyVersion
    public var source: SocketAddress?
    public var destination: SocketAddress?
    /// Bytes of the input that the header took; what follows is the
    /// client's payload.
    public var consumed: Int

    public init(version: ProxyVersion, source: SocketAddress?, destination: SocketAddress?, consumed: Int) {
        self.version = version
        self.source = source
        self.destination = destination
        self.consumed = consumed
    }
}

/// The outcome of `ProxyHeader.parse`.
public enum ProxyParseResult: Sendable, Equatable {
    /// A prefix of a possible header: receive more and call again.
    case needMore
    case complete(ProxyHeader)
    case invalid(ProxyError)
}

extension ProxyHeader {
    /// The v2 signature: `\r\n\r\n\0\r\nQUIT\n`.
    static let v2Signature: (UInt64, UInt32) = (0x0D0A_0D0A_000D_0A51, 0x5549_540A)
    static let v2FixedBytes = 16

    /// Parses the bytes received so far. Never traps, whatever the input.
    public static func parse(_ bytes: UnsafeRawBufferPointer) -> ProxyParseResult {
        let n = bytes.count
        guard n > 0 else { return .needMore }
        switch bytes[0] {
        case UInt8(ascii: "P"): return parseV1(bytes)
        case 0x0D: return parseV2(bytes)
        default: return .invalid(.badSignature)
        }
    }

    /// Convenience for tests and the control plane; the data path passes
    /// its receive buffer directly.
    public static func parse(_ bytes: [UInt8]) -> ProxyParseResult {
        bytes.withUnsafeBytes { parse($0) }
    }

    @inline(__always)
    static func v2SignatureByte(_ k: Int) -> UInt8 {
        k < 8 ? UInt8(truncatingIfNeeded: v2Signature.0 >> UInt64(56 - 8 * k))
              : UInt8(truncatingIfNeeded: v2Signature.1 >> UInt32(24 - 8 * (k - 8)))
    }

    // MARK: - v2

    static func parseV2(_ p: UnsafeRawBufferPointer) -> ProxyParseResult {
        let n = p.count
        for k in 0..<min(n, 12) where p[k] != v2SignatureByte(k) {
            return .invalid(.badSignature)
        }
        guard n >= 13 else { return .needMore }
        let versionCommand = p[12]
        guard versionCommand >> 4 == 2 else { return .invalid(.badVersion) }
        let command = versionCommand & 0x0F
        guard command <= 1 else { return .invalid(.badCommand) }
        guard n >= v2FixedBytes else { return .needMore }
        let familyTransport = p[13]
        let length = Int(p[14]) << 8 | Int(p[15])
        let total = v2FixedBytes + length
        // Known as soon as the length is in: refuse before waiting for it.
        guard total <= headerBytesMax else { return .invalid(.oversized) }
        guard n >= total else { return .needMore }
        if command == 0 {
            // LOCAL: the proxy speaking for itself; the spec says to ignore
            // the family and any address block.
            return .complete(ProxyHeader(version: .v2, source: nil, destination: nil, consumed: total))
        }
        let family = familyTransport >> 4
        let transport = familyTransport & 0x0F
        switch family {
        case 0:
            // AF_UNSPEC: the proxy does not know; use the socket's peer.
            return .complete(ProxyHeader(version: .v2, source: nil, destination: nil, consumed: total))
        case 1:
            guard transport == 1 else { return .invalid(.badFamily) }
            guard length >= 12 else { return .invalid(.badAddress) }
            let src = IPAddress.v4(load32(p, 16))
            let dst = IPAddress.v4(load32(p, 20))
            return .complete(ProxyHeader(version: .v2,
                                         source: SocketAddress(ip: src, port: load16(p, 24)),
                                         destination: SocketAddress(ip: dst, port: load16(p, 26)),
                                         consumed: total))
        case 2:
            guard transport == 1 else { return .invalid(.badFamily) }
            guard length >= 36 else { return .invalid(.badAddress) }
            let src = unmapped(hi: load64(p, 16), lo: load64(p, 24))
            let dst = unmapped(hi: load64(p, 32), lo: load64(p, 40))
            return .complete(ProxyHeader(version: .v2,
                                         source: SocketAddress(ip: src, port: load16(p, 48)),
                                         destination: SocketAddress(ip: dst, port: load16(p, 50)),
                                         consumed: total))
        default:
            // AF_UNIX (3) and undefined families: nothing to key a TCP
            // client by.
            return .invalid(.badFamily)
        }
        // TLVs (what follows the addresses up to `total`) are skipped:
        // stickyd uses none of them, and the length bound covers them.
    }

    @inline(__always)
    static func load16(_ p: UnsafeRawBufferPointer, _ at: Int) -> UInt16 {
        UInt16(p[at]) << 8 | UInt16(p[at + 1])
    }

    @inline(__always)
    static func load32(_ p: UnsafeRawBufferPointer, _ at: Int) -> UInt32 {
        UInt32(load16(p, at)) << 16 | UInt32(load16(p, at + 2))
    }

    @inline(__always)
    static func load64(_ p: UnsafeRawBufferPointer, _ at: Int) -> UInt64 {
        UInt64(load32(p, at)) << 32 | UInt64(load32(p, at + 4))
    }

    /// IPv4-mapped IPv6 comes out as the IPv4 address it carries.
    @inline(__always)
    static func unmapped(hi: UInt64, lo: UInt64) -> IPAddress {
        if hi == 0 && lo >> 32 == 0xFFFF { return .v4(UInt32(truncatingIfNeeded: lo)) }
        return .v6(hi: hi, lo: lo)
    }

    // MARK: - v1

    static let v1Prefix: StaticString = "PROXY "

    static func parseV1(_ p: UnsafeRawBufferPointer) -> ProxyParseResult {
        let n = p.count
        let prefixBytes = 6
        for k in 0..<min(n, prefixBytes) where p[k] != v1Prefix.utf8Start[k] {
            return .invalid(.badSignature)
        }
        guard n > prefixBytes else { return .needMore }
        // Find the end of the line: CR then LF, within 107 bytes.
        var end = -1
        var k = prefixBytes
        let scanEnd = min(n, v1LineBytesMax)
        while k < scanEnd {
            let c = p[k]
            if c == 0x0A { return .invalid(.badFormat) }
            if c == 0x0D {
                end = k
                break
            }
            k += 1
        }
        if end < 0 { return n >= v1LineBytesMax ? .invalid(.oversized) : .needMore }
        guard end + 2 <= v1LineBytesMax else { return .invalid(.oversized) }
        guard end + 1 < n else { return .needMore }
        guard p[end + 1] == 0x0A else { return .invalid(.badFormat) }
        let consumed = end + 2

        // Fields: single spaces between, none before or after.
        var field = (start: prefixBytes, end: prefixBytes)
        func nextField(from start: Int) -> (start: Int, end: Int)? {
            guard start < end else { return nil }
            var e = start
            while e < end && p[e] != 0x20 { e += 1 }
            return (start, e)
        }
        guard let proto = nextField(from: prefixBytes) else { return .invalid(.badFormat) }
        field = proto
        let family: Int
        if matches(p, field, "UNKNOWN") {
            // Anything may follow UNKNOWN up to the CRLF; the spec says to
            // ignore it and use the socket's addresses.
            return .complete(ProxyHeader(version: .v1, source: nil, destination: nil, consumed: consumed))
        } else if matches(p, field, "TCP4") {
            family = 4
        } else if matches(p, field, "TCP6") {
            family = 6
        } else {
            return .invalid(field.end == field.start ? .badFormat : .badFamily)
        }
        var fields: (src: (Int, Int), dst: (Int, Int), sport: (Int, Int), dport: (Int, Int)) = ((0, 0), (0, 0), (0, 0), (0, 0))
        for index in 0..<4 {
            // The previous field must end at a single space.
            guard field.end < end, p[field.end] == 0x20,
                  let f = nextField(from: field.end + 1), f.end > f.start else { return .invalid(.badFormat) }
            field = f
            switch index {
            case 0: fields.src = f
            case 1: fields.dst = f
            case 2: fields.sport = f
            default: fields.dport = f
            }
        }
        guard field.end == end else { return .invalid(.badFormat) }

        var src: IPAddress
        var dst: IPAddress
        if family == 4 {
            guard let s = TextAddress.parseV4(p, fields.src.0, fields.src.1),
                  let d = TextAddress.parseV4(p, fields.dst.0, fields.dst.1) else { return .invalid(.badAddress) }
            src = .v4(s)
            dst = .v4(d)
        } else {
            guard let s = TextAddress.parseV6(p, fields.src.0, fields.src.1),
                  let d = TextAddress.parseV6(p, fields.dst.0, fields.dst.1) else { return .invalid(.badAddress) }
            src = unmapped(hi: s.hi, lo: s.lo)
            dst = unmapped(hi: d.hi, lo: d.lo)
        }
        guard let sport = TextAddress.parsePort(p, fields.sport.0, fields.sport.1),
              let dport = TextAddress.parsePort(p, fields.dport.0, fields.dport.1) else { return .invalid(.badPort) }
        return .complete(ProxyHeader(version: .v1, source: SocketAddress(ip: src, port: sport),
                                     destination: SocketAddress(ip: dst, port: dport), consumed: consumed))
    }

    @inline(__always)
    static func matches(_ p: UnsafeRawBufferPointer, _ field: (start: Int, end: Int), _ word: StaticString) -> Bool {
        guard field.end - field.start == word.utf8CodeUnitCount else { return false }
        for k in 0..<word.utf8CodeUnitCount where p[field.start + k] != word.utf8Start[k] { return false }
        return true
    }
}

/// Allocation-free text parsing of addresses and ports over raw bytes, with
/// the same rules as `IPAddress(parsing:)` (no leading zeros in an IPv4
/// octet, one `::` at most, an embedded dotted quad only at the end).
enum TextAddress {
    static let colon = UInt8(ascii: ":")
    static let dot = UInt8(ascii: ".")

    @inline(__always)
    static func digit(_ c: UInt8) -> UInt32? {
        c >= 0x30 && c <= 0x39 ? UInt32(c - 0x30) : nil
    }

    @inline(__always)
    static func hexDigit(_ c: UInt8) -> UInt32? {
        switch c {
        case 0x30...0x39: return UInt32(c - 0x30)
        case 0x41...0x46: return UInt32(c - 0x41 + 10)
        case 0x61...0x66: return UInt32(c - 0x61 + 10)
        default: return nil
        }
    }

    /// `0`...`65535`, decimal, no sign, no leading zero.
    static func parsePort(_ p: UnsafeRawBufferPointer, _ start: Int, _ end: Int) -> UInt16? {
        let count = end - start
        guard count >= 1, count <= 5 else { return nil }
        if count > 1 && p[start] == UInt8(ascii: "0") { return nil }
        var value: UInt32 = 0
        for k in start..<end {
            guard let d = digit(p[k]) else { return nil }
            value = value * 10 + d
        }
        return value <= 65_535 ? UInt16(value) : nil
    }

    /// Dotted quad, big-endian packed (`127.0.0.1` is `0x7F00_0001`).
    static func parseV4(_ p: UnsafeRawBufferPointer, _ start: Int, _ end: Int) -> UInt32? {
        guard end - start >= 7, end - start <= 15 else { return nil }
        var value: UInt32 = 0
        var octets = 0
        var k = start
        while true {
            var e = k
            while e < end && p[e] != dot { e += 1 }
            let count = e - k
            guard count >= 1, count <= 3 else { return nil }
            // "01" is octal to inet_aton: refuse rather than guess.
            if count > 1 && p[k] == UInt8(ascii: "0") { return nil }
            var octet: UInt32 = 0
            for j in k..<e {
                guard let d = digit(p[j]) else { return nil }
                octet = octet * 10 + d
            }
            guard octet <= 255 else { return nil }
            value = value << 8 | octet
            octets += 1
            if e == end { break }
            k = e + 1
            guard octets < 4, k < end else { return nil }
        }
        return octets == 4 ? value : nil
    }

    /// RFC 4291 text form (no zone id), as two big-endian halves.
    static func parseV6(_ p: UnsafeRawBufferPointer, _ start: Int, _ end: Int) -> (hi: UInt64, lo: UInt64)? {
        guard end - start >= 2, end - start <= 45 else { return nil }
        var head: UInt128 = 0
        var headCount = 0
        var tail: UInt128 = 0
        var tailCount = 0
        var gap = false
        var i = start
        if p[i] == colon {
            // Only "::" may start an address.
            guard p[i + 1] == colon else { return nil }
            gap = true
            i += 2
        }
        while i < end {
            var j = i
            var sawDot = false
            while j < end && p[j] != colon {
                if p[j] == dot { sawDot = true }
                j += 1
            }
            var pieces: UInt128 = 0
            var pieceCount = 0
            if sawDot {
                // An embedded IPv4 address ends the text and fills two groups.
                guard j == end, let v4 = parseV4(p, i, j) else { return nil }
                pieces = UInt128(v4)
                pieceCount = 2
            } else {
                guard j - i >= 1, j - i <= 4 else { return nil }
                var g: UInt32 = 0
                for k in i..<j {
                    guard let d = hexDigit(p[k]) else { return nil }
                    g = g << 4 | d
                }
                pieces = UInt128(g)
                pieceCount = 1
            }
            if gap {
                tail = tail << UInt128(16 * pieceCount) | pieces
                tailCount += pieceCount
            } else {
                head = head << UInt128(16 * pieceCount) | pieces
                headCount += pieceCount
            }
            guard headCount + tailCount <= 8 else { return nil }
            if j == end { break }
            // p[j] is a colon: a group, or "::", must follow.
            i = j + 1
            guard i < end else { return nil }
            if p[i] == colon {
                guard !gap else { return nil }
                gap = true
                i += 1
                guard i == end || p[i] != colon else { return nil }
            }
        }
        let total = headCount + tailCount
        if gap {
            guard total <= 7 else { return nil }
        } else {
            guard total == 8 else { return nil }
        }
        let value = (headCount == 0 ? 0 : head << UInt128(16 * (8 - headCount))) | tail
        return (UInt64(truncatingIfNeeded: value >> 64), UInt64(truncatingIfNeeded: value))
    }
}
