// Writing PROXY headers for targets that want the client's address
// (`send_proxy` on a pool). The data path calls this once per connection
// into a fixed buffer of its own, so it allocates nothing: addresses are
// formatted digit by digit.

extension ProxyHeader {
    /// Writes a header for a connection from `source` to `destination` into
    /// `out` and returns its length, or 0 if `out` is too small (at least
    /// `encodedBytesMax` always suffices).
    ///
    /// Without both addresses the header says so: `PROXY UNKNOWN` (v1) or
    /// the LOCAL command (v2). The two families cannot be mixed in one
    /// header, so an IPv4 address beside an IPv6 one is written
    /// IPv4-mapped; the parser reads it back as IPv4.
    public static func encode(_ version: ProxyVersion, source: SocketAddress?, destination: SocketAddress?,
                              into out: UnsafeMutableRawBufferPointer) -> Int {
        var w = ByteWriter(out)
        guard let source, let destination else {
            switch version {
            case .v1: w.append("PROXY UNKNOWN\r\n")
            case .v2:
                w.appendV2Signature()
                w.append(byte: 0x20) // version 2, LOCAL
                w.append(byte: 0x00) // AF_UNSPEC, UNSPEC
                w.append(u16: 0)
            }
            return w.failed ? 0 : w.count
        }
        let bothV4 = source.ip.isV4 && destination.ip.isV4
        switch version {
        case .v1:
            w.append(bothV4 ? "PROXY TCP4 " : "PROXY TCP6 ")
            w.appendText(source.ip, asV6: !bothV4)
            w.append(byte: 0x20)
            w.appendText(destination.ip, asV6: !bothV4)
            w.append(byte: 0x20)
            w.appendDecimal(UInt32(source.port))
            w.append(byte: 0x20)
            w.appendDecimal(UInt32(destination.port))
            w.append("\r\n")
        case .v2:
            w.appendV2Signature()
            w.append(byte: 0x21) // version 2, PROXY
            if bothV4 {
                w.append(byte: 0x11) // AF_INET, STREAM
                w.append(u16: 12)
                w.append(u32: v4Bits(source.ip))
                w.append(u32: v4Bits(destination.ip))
            } else {
                w.append(byte: 0x21) // AF_INET6, STREAM
                w.append(u16: 36)
                let s = v6Bits(source.ip)
                let d = v6Bits(destination.ip)
                w.append(u64: s.hi)
                w.append(u64: s.lo)
                w.append(u64: d.hi)
                w.append(u64: d.lo)
            }
            w.append(u16: source.port)
            w.append(u16: destination.port)
        }
        return w.failed ? 0 : w.count
    }

    static func v4Bits(_ ip: IPAddress) -> UInt32 {
        if case .v4(let v) = ip { return v }
        return 0
    }

    /// IPv6 as is; IPv4 as `::ffff:a.b.c.d`.
    static func v6Bits(_ ip: IPAddress) -> (hi: UInt64, lo: UInt64) {
        switch ip {
        case .v4(let v): return (0, 0xFFFF_0000_0000 | UInt64(v))
        case .v6(let hi, let lo): return (hi, lo)
        }
    }
}

/// Appends to a fixed buffer; remembers an overflow instead of trapping.
struct ByteWriter {
    let out: UnsafeMutableRawBufferPointer
    var count = 0
    var failed = false

    init(_ out: UnsafeMutableRawBufferPointer) { self.out = out }

    @inline(__always)
    mutating func append(byte: UInt8) {
        guard count < out.count else {
            failed = true
            return
        }
        out[count] = byte
        count += 1
    }

    mutating func append(_ text: StaticString) {
        for k in 0..<text.utf8CodeUnitCount { append(byte: text.utf8Start[k]) }
    }

    mutating func append(u16 v: UInt16) {
        append(byte: UInt8(v >> 8))
        append(byte: UInt8(truncatingIfNeeded: v))
    }

    mutating func append(u32 v: UInt32) {
        append(u16: UInt16(v >> 16))
        append(u16: UInt16(truncatingIfNeeded: v))
    }

    mutating func append(u64 v: UInt64) {
        append(u32: UInt32(v >> 32))
        append(u32: UInt32(truncatingIfNeeded: v))
    }

    mutating func appendV2Signature() {
        for k in 0..<12 { append(byte: ProxyHeader.v2SignatureByte(k)) }
    }

    mutating func appendDecimal(_ v: UInt32) {
        var divisor: UInt32 = 1
        while divisor <= v / 10 { divisor *= 10 }
        var rest = v
        while divisor > 0 {
            append(byte: UInt8(ascii: "0") + UInt8(rest / divisor))
            rest %= divisor
            divisor /= 10
        }
    }

    mutating func appendHex(_ v: UInt16) {
        var shift = 12
        while shift > 0 && (v >> UInt16(shift)) == 0 { shift -= 4 }
        while shift >= 0 {
            let d = UInt8(truncatingIfNeeded: v >> UInt16(shift)) & 0x0F
            append(byte: d < 10 ? UInt8(ascii: "0") + d : UInt8(ascii: "a") + d - 10)
            shift -= 4
        }
    }

    /// Dotted quad, or RFC 5952 IPv6 (lowercase, longest run of two or more
    /// zero groups, the first on a tie, written `::`).
    mutating func appendText(_ ip: IPAddress, asV6: Bool) {
        if !asV6, case .v4(let v) = ip {
            for k in 0..<4 {
                if k > 0 { append(byte: TextAddress.dot) }
                appendDecimal(v >> UInt32(24 - 8 * k) & 0xFF)
            }
            return
        }
        let (hi, lo) = ProxyHeader.v6Bits(ip)
        @inline(__always) func group(_ k: Int) -> UInt16 {
            UInt16(truncatingIfNeeded: (k < 4 ? hi : lo) >> UInt64(48 - 16 * (k % 4)))
        }
        var bestStart = -1
        var bestLength = 0
        var k = 0
        while k < 8 {
            guard group(k) == 0 else {
                k += 1
                continue
            }
            var j = k
            while j < 8 && group(j) == 0 { j += 1 }
            if j - k > bestLength && j - k >= 2 {
                bestStart = k
                bestLength = j - k
            }
            k = j
        }
        k = 0
        while k < 8 {
            if k == bestStart {
                append(byte: TextAddress.colon)
                append(byte: TextAddress.colon)
                k += bestLength
                continue
            }
            if k > 0 && k != bestStart + bestLength { append(byte: TextAddress.colon) }
            appendHex(group(k))
            k += 1
        }
    }
}
