/// The framing of the zero-downtime upgrade's socket (docs/OPERATIONS.md,
/// "Upgrade"): `u32 length (big-endian) | u8 type | payload`, `length`
/// counting the type byte and the payload.
///
/// Only the bytes live here, with no socket and no clock, so the decoder a
/// successor runs on whatever its peer sends can be unit-tested and fuzzed
/// (`make fuzz-takeover-frame`). The control plane's `TakeoverChannel` owns
/// the socket, the descriptors and the deadlines.
public enum TakeoverFrame: UInt8, Sendable, CaseIterable {
    case hello = 1
    case fds = 2
    case state = 3
    case affinity = 4
    case ready = 5
    case failed = 6
    case commit = 7
    /// The successor accepts: the running daemon may now let go (its
    /// listeners, ports and the service); see docs/OPERATIONS.md, "Commit".
    case serving = 8
    /// The old daemon's open connections per target, every half second
    /// while it finishes them (bounded load counts them in the successor).
    case loads = 9

    /// Length field plus type byte.
    public static let headerBytes = 5
    /// Largest `length`: a shard of 2^27 pins is 3.5 GB, far past any real
    /// table; 1 GiB holds some 40 M pins a worker. A peer that announces
    /// more is not a stickyd, and it must not make us buffer that much.
    public static let lengthMax = 1 << 30

    /// What the front of a receive buffer holds.
    public enum Decoded: Equatable, Sendable {
        /// Not a whole frame yet: read more and decode again.
        case needMore
        /// One frame; its payload is `payload` (indices into the bytes
        /// given) and it ends at `payload.upperBound`.
        case frame(TakeoverFrame, payload: Range<Int>)
        /// Not a takeover peer; the reason reads after "upgrade: ".
        case invalid(String)
    }

    /// Decodes the frame at the front of `bytes`. The length is checked as
    /// soon as the 5-byte header has arrived, so an absurd one fails before
    /// anything is buffered for it; the type only once the frame is
    /// complete, as the channel always did.
    public static func decode(_ bytes: ArraySlice<UInt8>) -> Decoded {
        guard bytes.count >= headerBytes else { return .needMore }
        let s = bytes.startIndex
        let length = Int(bytes[s]) << 24 | Int(bytes[s + 1]) << 16 | Int(bytes[s + 2]) << 8 | Int(bytes[s + 3])
        guard length >= 1, length <= lengthMax else {
            return .invalid("frame of \(length) bytes; not a stickyd takeover peer")
        }
        guard bytes.count >= 4 + length else { return .needMore }
        guard let type = TakeoverFrame(rawValue: bytes[s + 4]) else {
            return .invalid("unknown frame type \(bytes[s + 4])")
        }
        return .frame(type, payload: (s + headerBytes)..<(s + 4 + length))
    }

    /// One frame's bytes. The caller keeps payloads under `lengthMax`
    /// (the largest is an affinity export, bounded by the table capacity).
    public static func encode(_ type: TakeoverFrame, _ payload: [UInt8]) -> [UInt8] {
        precondition(payload.count < lengthMax, "takeover frame over its limit")
        let length = UInt32(payload.count + 1)
        var out: [UInt8] = []
        out.reserveCapacity(payload.count + headerBytes)
        out += [UInt8(length >> 24), UInt8(length >> 16 & 0xFF), UInt8(length >> 8 & 0xFF), UInt8(length & 0xFF), type.rawValue]
        out.append(contentsOf: payload)
        return out
    }
}
