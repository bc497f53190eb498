/// An IP address, v4 or v6, held by value with no heap storage.
///
/// IPv4 is kept apart from IPv4-mapped IPv6 on purpose: a listener bound to
/// `0.0.0.0` and one bound to `[::]` are different sockets, and their clients
/// are different keys unless the affinity layer decides otherwise.
public enum IPAddress: Hashable, Sendable {
    /// Four octets in network order, packed big-endian into a `UInt32`
    /// (so `127.0.0.1` is `0x7F00_0001`).
    case v4(UInt32)
    /// Sixteen octets in network order, as two big-endian halves.
    case v6(hi: UInt64, lo: UInt64)

    public var isV4: Bool {
        if case .v4 = self { return true }
        return false
    }

    /// Parses dotted-quad IPv4 or RFC 4291 text IPv6 (with `::` and an
    /// embedded dotted quad). Zone ids (`%eth0`) are not accepted: a load
    /// balancer's listeners and targets are never link-local.
    public init?(parsing text: Substring) {
        if let v4 = IPAddress.parseV4(text) {
            self = .v4(v4)
        } else if let (hi, lo) = IPAddress.parseV6(text) {
            self = .v6(hi: hi, lo: lo)
        } else {
            return nil
        }
    }

    public init?(_ text: String) { self.init(parsing: text[...]) }

    static func parseV4(_ text: Substring) -> UInt32? {
        var value: UInt32 = 0
        var octets = 0
        for part in text.split(separator: ".", omittingEmptySubsequences: false) {
            guard !part.isEmpty, part.count <= 3, part.allSatisfy({ $0.isASCII && $0.isNumber }),
                  let octet = UInt32(part), octet <= 255 else { return nil }
            // "01" is ambiguous (octal in inet_aton); refuse it rather than guess.
            if part.count > 1 && part.first == "0" { return nil }
            value = value << 8 | octet
            octets += 1
        }
        return octets == 4 ? value : nil
    }

    static func parseV6(_ text: Substring) -> (UInt64, UInt64)? {
        guard text.contains(":"), text.count <= 45 else { return nil }
        var head: [UInt16] = []
        var tail: [UInt16] = []
        var sawGap = false
        // Split at the one "::" allowed, if any.
        var halves: [String] = [String(text)]
        let chars = Array(text)
        var gapAt: Int? = nil
        for k in 0..<(max(chars.count - 1, 0)) where chars[k] == ":" && chars[k + 1] == ":" {
            if let g = gapAt, k != g + 1 { return nil }
            if gapAt == nil { gapAt = k } else { return nil }
        }
        if let g = gapAt {
            halves = [String(chars[..<g]), String(chars[(g + 2)...])]
            if halves[1].hasPrefix(":") { return nil }
        }
        sawGap = gapAt != nil

        func groups(_ s: String, allowV4Tail: Bool) -> [UInt16]? {
            if s.isEmpty { return [] }
            var out: [UInt16] = []
            let parts = s.split(separator: ":", omittingEmptySubsequences: false)
            for (i, p) in parts.enumerated() {
                if i == parts.count - 1, allowV4Tail, p.contains(".") {
                    guard let v4 = parseV4(p) else { return nil }
                    out.append(UInt16(v4 >> 16))
                    out.append(UInt16(v4 & 0xFFFF))
                    continue
                }
                // Hex digits only: UInt16(_:radix:) alone would take "+2".
                guard !p.isEmpty, p.count <= 4, p.allSatisfy({ $0.isASCII && $0.isHexDigit }),
                      let g = UInt16(p, radix: 16) else { return nil }
                out.append(g)
            }
            return out
        }
        if sawGap {
            guard let h = groups(halves[0], allowV4Tail: false),
                  let t = groups(halves[1], allowV4Tail: true) else { return nil }
            head = h
            tail = t
            guard head.count + tail.count <= 7 else { return nil }
        } else {
            guard let h = groups(halves[0], allowV4Tail: true), h.count == 8 else { return nil }
            head = h
        }
        var all = head
        all.append(contentsOf: repeatElement(0, count: 8 - head.count - tail.count))
        all.append(contentsOf: tail)
        var hi: UInt64 = 0
        var lo: UInt64 = 0
        for i in 0..<4 { hi = hi << 16 | UInt64(all[i]) }
        for i in 4..<8 { lo = lo << 16 | UInt64(all[i]) }
        return (hi, lo)
    }
}

extension IPAddress: CustomStringConvertible {
    public var description: String {
        switch self {
        case .v4(let v):
            return "\(v >> 24).\(v >> 16 & 0xFF).\(v >> 8 & 0xFF).\(v & 0xFF)"
        case .v6(let hi, let lo):
            var g: [UInt16] = []
            for i in stride(from: 48, through: 0, by: -16) { g.append(UInt16(truncatingIfNeeded: hi >> UInt64(i))) }
            for i in stride(from: 48, through: 0, by: -16) { g.append(UInt16(truncatingIfNeeded: lo >> UInt64(i))) }
            // RFC 5952: compress the longest run (length >= 2) of zero groups.
            var bestStart = -1, bestLen = 0, i = 0
            while i < 8 {
                if g[i] == 0 {
                    var j = i
                    while j < 8 && g[j] == 0 { j += 1 }
                    if j - i > bestLen && j - i >= 2 { bestStart = i; bestLen = j - i }
                    i = j
                } else { i += 1 }
            }
            func hex(_ r: ArraySlice<UInt16>) -> String { r.map { String($0, radix: 16) }.joined(separator: ":") }
            if bestStart < 0 { return hex(g[...]) }
            return hex(g[0..<bestStart]) + "::" + hex(g[(bestStart + bestLen)...])
        }
    }
}

/// An IP address and a TCP port: what a listener binds and what a target is.
public struct SocketAddress: Hashable, Sendable {
    public var ip: IPAddress
    public var port: UInt16

    public init(ip: IPAddress, port: UInt16) {
        self.ip = ip
        self.port = port
    }

    /// Parses `1.2.3.4:80` or `[::1]:80`. The port is required and must be
    /// 1...65535 (port 0 means "any" to bind(2), never what a user meant).
    public init?(_ text: String) {
        let s = text[...]
        let hostPart: Substring
        let portPart: Substring
        if s.first == "[" {
            guard let close = s.firstIndex(of: "]") else { return nil }
            hostPart = s[s.index(after: s.startIndex)..<close]
            let rest = s[s.index(after: close)...]
            guard rest.first == ":" else { return nil }
            portPart = rest.dropFirst()
        } else {
            guard let colon = s.lastIndex(of: ":") else { return nil }
            hostPart = s[..<colon]
            // An unbracketed v6 address is ambiguous with its port: refuse it.
            guard !hostPart.contains(":") else { return nil }
            portPart = s[s.index(after: colon)...]
        }
        guard let ip = IPAddress(parsing: hostPart) else { return nil }
        if s.first == "[" && ip.isV4 { return nil }
        guard !portPart.isEmpty, portPart.allSatisfy({ $0.isASCII && $0.isNumber }),
              let port = UInt16(portPart), port > 0 else { return nil }
        self.init(ip: ip, port: port)
    }
}

extension SocketAddress: CustomStringConvertible {
    public var description: String {
        switch ip {
        case .v4: return "\(ip):\(port)"
        case .v6: return "[\(ip)]:\(port)"
        }
    }
}
