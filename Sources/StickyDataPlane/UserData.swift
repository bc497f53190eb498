/// What a submitted operation was for, carried in the top byte of `user_data`.
public enum Op: UInt8 {
    /// Completions nobody waits for (never used for connection work).
    case ignore = 0
    case accept = 1
    case connect = 2
    case connectTimeout = 3
    case pollClient = 4
    case pollBackend = 5
    case writableClient = 6
    case writableBackend = 7
    case recvClient = 8
    case recvBackend = 9
    case sendClient = 10
    case sendBackend = 11
    case cancel = 12
    case close = 13
    case tick = 14
    case wake = 15
    case acceptRetry = 16
    case cancelAccept = 17
    /// PROXY header: a recv into the slot's header area, and its linked
    /// timeout (the time left of the listener's `proxy_protocol.timeout`).
    case proxyRecv = 18
    case proxyTimeout = 19
    /// h2c: stickyd's GOAWAY frame, sent to the client (Http2Goaway.swift).
    case sendGoaway = 20
}

/// `user_data` layout, 64 bits:
///
///     63      56 55                  32 31                          0
///     +---------+----------------------+-----------------------------+
///     |   op    |  generation (24 bit) |   index (32 bit)            |
///     +---------+----------------------+-----------------------------+
///
/// `index` is a connection slot (or a listener, for accepts). The generation
/// is the slot's at submission time; a completion whose generation does not
/// match its slot's is a bug, since a slot is only reused once every
/// operation it submitted has completed.
public struct UserData: Equatable {
    public var raw: UInt64

    public static let generationMask: UInt32 = 0xFF_FFFF

    @inlinable
    public init(op: Op, generation: UInt32, index: UInt32) {
        raw = UInt64(op.rawValue) << 56
            | UInt64(generation & UserData.generationMask) << 32
            | UInt64(index)
    }

    @inlinable
    public init(raw: UInt64) { self.raw = raw }

    @inlinable public var op: Op { Op(rawValue: UInt8(truncatingIfNeeded: raw >> 56)) ?? .ignore }
    @inlinable public var generation: UInt32 { UInt32(truncatingIfNeeded: raw >> 32) & UserData.generationMask }
    @inlinable public var index: UInt32 { UInt32(truncatingIfNeeded: raw) }
}
