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
            case .v1: w.ascii("PROXY UNKNOWN\r\n")
            case .v2:
                for k in 0..<12 { w.byte(v2SignatureByte(k)) }
                w.byte(0x20) // version 2, LOCAL
                w.byte(0x00) // AF_UNSPEC, UNSPEC
                w.u16(0)
            }
            return w.overflowed ? 0 : w.count
        }
        let bothV4 = source.ip.isV4 && destination.ip.isV4
        switch version {
        case .v1:
            w.ascii(bothV4 ? "PROXY TCP4 " : "PROXY TCP6 ")
            w.ip(bothV4 ? source.ip : v6Form(source.ip))
            w.byte(0x20)
            w.ip(bothV4 ? destination.ip : v6Form(destination.ip))
            w.byte(0x20)
            w.decimal(UInt64(source.port))
            w.byte(0x20)
            w.decimal(UInt64(destination.port))
            w.ascii("\r\n")
        case .v2:
            for k in 0..<12 { w.byte(v2SignatureByte(k)) }
            w.byte(0x21) // version 2, PROXY
            if bothV4 {
                w.byte(0x11) // AF_INET, STREAM
                w.u16(12)
                w.u32(v4Bits(source.ip))
                w.u32(v4Bits(destination.ip))
            } else {
                w.byte(0x21) // AF_INET6, STREAM
                w.u16(36)
                let s = v6Bits(source.ip)
                let d = v6Bits(destination.ip)
                w.u64(s.hi)
                w.u64(s.lo)
                w.u64(d.hi)
                w.u64(d.lo)
            }
            w.u16(source.port)
            w.u16(destination.port)
        }
        return w.overflowed ? 0 : w.count
    }

    static func v4Bits(_ ip: IPAddress) -> UInt32 {
        if case .v4(let v) = ip { return v }
        return 0
    }

    /// The address as IPv6: a v1 TCP6 line cannot carry a dotted quad.
    static func v6Form(_ ip: IPAddress) -> IPAddress {
        let (hi, lo) = v6Bits(ip)
        return .v6(hi: hi, lo: lo)
    }

    /// IPv6 as is; IPv4 as `::ffff:a.b.c.d`.
    static func v6Bits(_ ip: IPAddress) -> (hi: UInt64, lo: UInt64) {
        switch ip {
        case .v4(let v): return (0, 0xFFFF_0000_0000 | UInt64(v))
        case .v6(let hi, let lo): return (hi, lo)
        }
    }
}
