/// A 128-bit SipHash key.
///
/// The affinity table and Maglev both hash with this key. It must be secret,
/// so that no one who picks client addresses can aim them at one bucket of
/// the table; and it must be shared and stable (from config or the state
/// directory), so that two instances, or one instance after a restart,
/// place the same clients the same way.
public struct SipKey: Sendable, Hashable {
    /// The first eight key bytes, read little-endian (the reference
    /// implementation's `U8TO64_LE(k)`).
    public var k0: UInt64
    /// The last eight key bytes, read little-endian.
    public var k1: UInt64

    public init(k0: UInt64, k1: UInt64) {
        self.k0 = k0
        self.k1 = k1
    }

    /// Parses the key as 32 hex digits: the 16 key bytes in order, as the
    /// reference implementation and `hash_key` in the config write them.
    /// Returns nil on any other length or on a non-hex character.
    public init?(hex text: String) {
        let utf8 = Array(text.utf8)
        guard utf8.count == 32 else { return nil }
        var bytes = [UInt8](repeating: 0, count: 16)
        for i in 0..<16 {
            guard let hi = SipKey.nibble(utf8[2 * i]), let lo = SipKey.nibble(utf8[2 * i + 1]) else { return nil }
            bytes[i] = hi << 4 | lo
        }
        var k0: UInt64 = 0
        var k1: UInt64 = 0
        for i in (0..<8).reversed() {
            k0 = k0 << 8 | UInt64(bytes[i])
            k1 = k1 << 8 | UInt64(bytes[i + 8])
        }
        self.init(k0: k0, k1: k1)
    }

    /// A fresh key from the system's CSPRNG. The caller persists it (the
    /// state directory) when it wants placements to survive a restart.
    public static func random() -> SipKey {
        var rng = SystemRandomNumberGenerator()
        return SipKey(k0: rng.next(), k1: rng.next())
    }

    /// The 32 lowercase hex digits that `init?(hex:)` reads back.
    public var hex: String {
        let digits = Array("0123456789abcdef".utf8)
        var out: [UInt8] = []
        out.reserveCapacity(32)
        for word in [k0, k1] {
            for i in 0..<8 {
                let byte = UInt8(truncatingIfNeeded: word >> UInt64(8 * i))
                out.append(digits[Int(byte >> 4)])
                out.append(digits[Int(byte & 0xF)])
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    private static func nibble(_ c: UInt8) -> UInt8? {
        switch c {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return c - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return c - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return c - UInt8(ascii: "A") + 10
        default: return nil
        }
    }
}

extension SipKey: CustomStringConvertible {
    /// Never the key itself: a key printed into a log is a key leaked.
    public var description: String { "SipKey(<secret>)" }
}

/// SipHash-1-3 (Aumasson and Bernstein), 64-bit output: what the affinity
/// table and Maglev hash with.
///
/// 1-3 rather than 2-4 because the table's budget is tens of nanoseconds a
/// lookup, and on a 16-byte key 1-3 runs 6 rounds to 2-4's 10 (the
/// affinity benchmark measured 48 → 61 M lookups/s on a 64k table). It is
/// what Rust's HashMap, Swift's Hasher and CPython use against hash
/// flooding, the same threat here: clients who pick their addresses to pile
/// into one bucket, without knowing the key.
public enum SipHash13 {
    /// The hash of `bytes` under `key`.
    public static func hash<Bytes: Sequence>(_ bytes: Bytes, key: SipKey) -> UInt64 where Bytes.Element == UInt8 {
        sipHash(bytes, key: key, compressionRounds: 1, finalizationRounds: 3)
    }

    /// The hash of exactly 16 bytes given as two words, equal to
    /// `hash(_:key:)` of `a`'s little-endian bytes followed by `b`'s.
    /// The affinity key's hot path: no loop, no buffer.
    @inlinable @inline(__always)
    public static func hash(_ a: UInt64, _ b: UInt64, key: SipKey) -> UInt64 {
        var v0: UInt64 = 0x736f6d65_70736575 ^ key.k0
        var v1: UInt64 = 0x646f7261_6e646f6d ^ key.k1
        var v2: UInt64 = 0x6c796765_6e657261 ^ key.k0
        var v3: UInt64 = 0x74656462_79746573 ^ key.k1
        v3 ^= a
        sipRound(&v0, &v1, &v2, &v3)
        v0 ^= a
        v3 ^= b
        sipRound(&v0, &v1, &v2, &v3)
        v0 ^= b
        // The last block: no bytes left, the length (16) in its top byte.
        let last: UInt64 = 16 << 56
        v3 ^= last
        sipRound(&v0, &v1, &v2, &v3)
        v0 ^= last
        v2 ^= 0xFF
        sipRound(&v0, &v1, &v2, &v3)
        sipRound(&v0, &v1, &v2, &v3)
        sipRound(&v0, &v1, &v2, &v3)
        return v0 ^ v1 ^ v2 ^ v3
    }
}

/// SipHash-2-4, the paper's default, 64-bit output. Kept beside 1-3 so
/// that the shared round and padding code is pinned down by the best-known
/// reference vectors too.
public enum SipHash24 {
    /// The hash of `bytes` under `key`.
    public static func hash<Bytes: Sequence>(_ bytes: Bytes, key: SipKey) -> UInt64 where Bytes.Element == UInt8 {
        sipHash(bytes, key: key, compressionRounds: 2, finalizationRounds: 4)
    }
}

/// SipHash-c-d over a byte sequence. Cold paths only (Maglev identities,
/// tests): the hot path is `SipHash13.hash(_:_:key:)`.
func sipHash<Bytes: Sequence>(_ bytes: Bytes, key: SipKey, compressionRounds: Int, finalizationRounds: Int) -> UInt64
where Bytes.Element == UInt8 {
    var v0: UInt64 = 0x736f6d65_70736575 ^ key.k0
    var v1: UInt64 = 0x646f7261_6e646f6d ^ key.k1
    var v2: UInt64 = 0x6c796765_6e657261 ^ key.k0
    var v3: UInt64 = 0x74656462_79746573 ^ key.k1
    var m: UInt64 = 0
    var count = 0
    for byte in bytes {
        m |= UInt64(byte) << UInt64(8 * (count & 7))
        count += 1
        if count & 7 == 0 {
            v3 ^= m
            for _ in 0..<compressionRounds { sipRound(&v0, &v1, &v2, &v3) }
            v0 ^= m
            m = 0
        }
    }
    // The last block carries the length's low byte in its top byte.
    m |= UInt64(truncatingIfNeeded: count) << 56
    v3 ^= m
    for _ in 0..<compressionRounds { sipRound(&v0, &v1, &v2, &v3) }
    v0 ^= m
    v2 ^= 0xFF
    for _ in 0..<finalizationRounds { sipRound(&v0, &v1, &v2, &v3) }
    return v0 ^ v1 ^ v2 ^ v3
}

/// One SipRound, public-inlinable so that `SipHash24.hash(_:_:key:)`
/// specializes into a caller in another module (the benchmarks).
@inlinable @inline(__always)
func sipRound(_ v0: inout UInt64, _ v1: inout UInt64, _ v2: inout UInt64, _ v3: inout UInt64) {
    v0 &+= v1; v1 = (v1 << 13) | (v1 >> 51); v1 ^= v0; v0 = (v0 << 32) | (v0 >> 32)
    v2 &+= v3; v3 = (v3 << 16) | (v3 >> 48); v3 ^= v2
    v0 &+= v3; v3 = (v3 << 21) | (v3 >> 43); v3 ^= v0
    v2 &+= v1; v1 = (v1 << 17) | (v1 >> 47); v1 ^= v2; v2 = (v2 << 32) | (v2 >> 32)
}
