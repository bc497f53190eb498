/// The affinity key of a client: its IP address masked to the pool's
/// prefix, as one fixed 128-bit value with the address family folded in.
///
/// IPv6 keys are the masked address itself. IPv4 keys live in `ff00::/8`,
/// the IPv6 multicast range: `hi = AffinityKey.v4Tag`, `lo` = the masked
/// IPv4 address. A
/// multicast address is never the source of a TCP connection, so no real
/// IPv6 client can share a key with an IPv4 one, and the key needs no
/// separate family byte: the table entry stays at 32 bytes. (A PROXY
/// header could claim a multicast source; the proxies that send those
/// headers are trusted by configuration, and the worst they could do is
/// share one client's affinity.)
public struct AffinityKey: Sendable, Hashable {
    public var hi: UInt64
    public var lo: UInt64

    /// The top 64 bits of every IPv4 key (`ff00:0:0:4::/64`). Only the
    /// `ff` first byte matters for disjointness; the 4 makes keys readable
    /// in a dump.
    public static let v4Tag: UInt64 = 0xFF00_0000_0000_0004

    public init(hi: UInt64, lo: UInt64) {
        self.hi = hi
        self.lo = lo
    }

    /// The key of `address` with the given prefix lengths. `maskV4` is
    /// clamped to 0...32 and `maskV6` to 0...128 (config validation has
    /// already refused anything outside them).
    @inlinable
    public init(_ address: IPAddress, maskV4: Int, maskV6: Int) {
        switch address {
        case .v4(let v):
            let bits = min(max(maskV4, 0), 32)
            let mask: UInt32 = bits == 0 ? 0 : ~0 << UInt32(32 - bits)
            self.init(hi: AffinityKey.v4Tag, lo: UInt64(v & mask))
        case .v6(let hi, let lo):
            let bits = min(max(maskV6, 0), 128)
            let hiMask: UInt64 = bits >= 64 ? ~0 : (bits == 0 ? 0 : ~0 << UInt64(64 - bits))
            let loMask: UInt64 = bits <= 64 ? 0 : (bits == 128 ? ~0 : ~0 << UInt64(128 - bits))
            self.init(hi: hi & hiMask, lo: lo & loMask)
        }
    }

    /// The keyed hash of this key: SipHash-1-3 of `hi` then `lo`, each as
    /// eight little-endian bytes. Fixed byte order, so every machine that
    /// shares the key computes the same value.
    @inlinable
    public func hash(_ key: SipKey) -> UInt64 {
        SipHash13.hash(hi, lo, key: key)
    }

    /// The address this key stands for (the network, when masked), for
    /// dumps and logs.
    public var address: IPAddress {
        if hi == AffinityKey.v4Tag && lo >> 32 == 0 { return .v4(UInt32(lo)) }
        return .v6(hi: hi, lo: lo)
    }
}
