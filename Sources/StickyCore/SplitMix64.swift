/// A small, fast, seeded generator (Steele, Lea and Flood's SplitMix64):
/// one add and a few multiplies per 64 bits, no syscall, no allocation.
///
/// For spreading things out, never for secrets: the data plane's per-worker
/// draw of each connection's jittered `max_connection_age`
/// (`PoolConfig.connectionAgeMs(random:)`), seeded once from the system
/// generator; and every randomized test and fuzz harness, seeded with a
/// constant so that a failure replays. Keys (`SipKey.random`) come from
/// the system generator.
public struct SplitMix64: RandomNumberGenerator, Sendable {
    public var state: UInt64

    public init(seed: UInt64) { state = seed }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
