// The one HTTP/2 frame stickyd ever writes: a GOAWAY to the client of an
// h2c connection whose target is draining or whose connection has reached
// max_connection_age (docs/HTTP2.md). Written where `H2FrameTracker` says a
// frame boundary is, so the client reads it as if the target had sent it.

/// Encoding the GOAWAY frame (RFC 9113 §6.8).
///
/// With last-stream-id 2^31-1 and NO_ERROR it is the first GOAWAY of a
/// graceful shutdown: the client opens no new streams on the connection,
/// the streams in flight finish, and grpc-core, grpc-go and grpc-java open a
/// new connection for their next call, which stickyd places afresh.
public enum H2Goaway {
    /// The frame type (RFC 9113 §6.8).
    public static let frameType: UInt8 = 0x7
    /// The highest stream id (31 bits): every stream the client may already
    /// have opened is still processed.
    public static let lastStreamIDMax: UInt32 = 0x7fff_ffff
    /// NO_ERROR (RFC 9113 §7): a graceful shutdown, not a failure.
    public static let noError: UInt32 = 0
    /// Last-stream-id and error code, before the debug data.
    public static let fixedPayloadBytes = 8
    /// The frame length field is 24 bits.
    public static let payloadBytesMax = (1 << 24) - 1

    /// Debug data for a connection ended because its target is draining.
    /// Debug data is for diagnostics only (§6.8): it tells someone reading a
    /// client's log who ended the connection, and why.
    public static let drainingDebug: StaticString = "stickyd: target draining"
    /// Debug data for a connection ended at `max_connection_age` so that its
    /// client can be placed on a less loaded target.
    public static let connectionAgeDebug: StaticString = "stickyd: max connection age"

    /// Bytes of a GOAWAY frame with `debugBytes` of debug data.
    public static func frameBytes(debugBytes: Int) -> Int {
        H2FrameTracker.frameHeaderBytes + fixedPayloadBytes + debugBytes
    }

    /// Room for either frame stickyd writes: a worker encodes each once into
    /// a buffer of its own and sends from there (a send in flight needs its
    /// bytes to stay put), so no frame is built per connection.
    public static let stickydFrameBytesMax = frameBytes(
        debugBytes: max(drainingDebug.utf8CodeUnitCount, connectionAgeDebug.utf8CodeUnitCount))

    /// Writes a GOAWAY frame into `out` and returns its length, or 0 if
    /// `out` is too small (`frameBytes(debugBytes:)` always suffices).
    /// Stream id 0 and no flags, as §6.8 requires; the reserved bit of the
    /// last-stream-id is left clear.
    public static func encode(lastStreamID: UInt32 = lastStreamIDMax, errorCode: UInt32 = noError,
                              debug: UnsafeRawBufferPointer, into out: UnsafeMutableRawBufferPointer) -> Int {
        precondition(lastStreamID <= lastStreamIDMax, "a stream id has 31 bits")
        let payload = fixedPayloadBytes + debug.count
        precondition(payload <= payloadBytesMax, "GOAWAY debug data over the 24-bit frame length")
        var w = ByteWriter(out)
        w.byte(UInt8(truncatingIfNeeded: payload >> 16))
        w.u16(UInt16(truncatingIfNeeded: payload))
        w.byte(frameType)
        w.byte(0) // flags: GOAWAY defines none
        w.u32(0) // stream 0: GOAWAY is about the connection
        w.u32(lastStreamID)
        w.u32(errorCode)
        for b in debug { w.byte(b) }
        return w.overflowed ? 0 : w.count
    }

    /// `encode` with a literal as the debug data.
    public static func encode(lastStreamID: UInt32 = lastStreamIDMax, errorCode: UInt32 = noError,
                              debug: StaticString, into out: UnsafeMutableRawBufferPointer) -> Int {
        debug.withUTF8Buffer {
            encode(lastStreamID: lastStreamID, errorCode: errorCode, debug: UnsafeRawBufferPointer($0), into: out)
        }
    }
}
