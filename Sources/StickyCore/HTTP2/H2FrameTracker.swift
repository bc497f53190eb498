// Finding frame boundaries in a target's HTTP/2 (h2c) byte stream, so that
// stickyd can end a connection gracefully by writing one GOAWAY to the
// client between two of the target's frames (docs/HTTP2.md).
//
// Only the 9-byte frame headers are read (RFC 9113 §4.1): a 24-bit length,
// the type, the flags and a 31-bit stream id. Payloads are skipped by their
// length without being looked at, so nothing here knows HPACK, and nothing
// of the client→target direction is needed: where the target's frames begin
// depends on the target's bytes alone.

/// Why a connection's frames are no longer followed. Once tracking stops the
/// connection is forwarded as plain TCP: it is never broken because of
/// tracking, only never sent a GOAWAY.
public enum H2TrackerStop: UInt8, Sendable, CaseIterable, CustomStringConvertible {
    /// The target's first frame is not the server connection preface: a
    /// SETTINGS frame (type 0x4) without ACK, on stream 0, whose length is a
    /// multiple of 6 (RFC 9113 §3.4, §6.5). The target does not speak h2c
    /// (HTTP/1.1, TLS, anything else), so there are no frames to follow.
    case notHTTP2
    /// After the preface, a header that RFC 9113 makes a connection error
    /// from the header alone (see `H2FrameTracker`). The target is broken or
    /// the stream is not what it seems; either way its boundaries cannot be
    /// trusted.
    case malformedHeader

    /// snake_case, for metric labels and `show stats` keys.
    public var metricName: String {
        switch self {
        case .notHTTP2: return "not_http2"
        case .malformedHeader: return "malformed_header"
        }
    }

    public var description: String { metricName }
}

/// Follows the frame boundaries of one connection's target→client bytes.
///
/// A value type of a few bytes that allocates nothing and copies nothing:
/// one lives in each h2c connection's slot. A header split across reads is
/// put together field by field as its bytes arrive (at most 9 bytes are
/// ever looked at per frame); a payload is skipped in O(1) however many
/// reads it spans. Feeding the same bytes in any split gives the same
/// boundaries and the same state (`Equatable` compares all of it): the
/// fuzzer (Fuzz/H2Tracker) checks it.
///
/// What it checks, and why no more:
/// - The first frame must be the server's connection preface, a SETTINGS
///   frame; anything else stops tracking (`notHTTP2`). No GOAWAY may be
///   written before that frame has passed whole: a client must see the
///   server's SETTINGS first (RFC 9113 §3.4).
/// - After it, any type is accepted (unknown types are extensions, which a
///   receiver ignores, §5.5) and any 24-bit length (the limit is the
///   client's SETTINGS_MAX_FRAME_SIZE, sent in the direction we never
///   read). A header is malformed (`malformedHeader`) only where the RFC
///   makes it a connection error from the header alone: SETTINGS, PING or
///   GOAWAY on a stream other than 0 (§6.5, §6.7, §6.8); PING whose length
///   is not 8 (§6.7); SETTINGS with ACK and a payload, or a length that is
///   not a multiple of 6 (§6.5); GOAWAY shorter than its 8 fixed bytes
///   (§4.2: too small for its mandatory data).
/// - A GOAWAY from the target itself is recorded (`targetSentGoaway`) and
///   passes through unchanged: after it stickyd must not send its own, since
///   a later GOAWAY must not raise the last-stream-id (§6.8) and ours says
///   2^31-1.
public struct H2FrameTracker: Sendable, Equatable {
    /// A frame header's size on the wire (RFC 9113 §4.1).
    public static let frameHeaderBytes = 9

    /// The frame types the header checks need (RFC 9113 §6).
    @usableFromInline static let settingsType: UInt8 = 0x4
    @usableFromInline static let pingType: UInt8 = 0x6
    @usableFromInline static let goawayType: UInt8 = 0x7
    /// SETTINGS' and PING's ACK flag (bit 0).
    @usableFromInline static let ackFlag: UInt8 = 0x1

    /// How far the stream is past the target's connection preface.
    @usableFromInline enum Preface: UInt8, Sendable {
        /// The first frame's header is not whole yet.
        case awaited
        /// The first frame, a valid SETTINGS, is having its payload skipped.
        case inFirstFrame
        /// The first SETTINGS frame has passed whole: GOAWAY may follow.
        case passed
    }

    // The header being put together, valid once `headerBytesRead` reaches 9
    // (the 32-bit fields first: the struct packs into 20 bytes).
    @usableFromInline var length: UInt32 = 0
    @usableFromInline var streamID: UInt32 = 0
    /// Payload bytes of the current frame still to skip.
    @usableFromInline var payloadLeft: UInt32 = 0
    @usableFromInline var type: UInt8 = 0
    @usableFromInline var flags: UInt8 = 0
    /// Bytes of the current header read so far; 0 between frames and while
    /// a payload is skipped.
    @usableFromInline var headerBytesRead: UInt8 = 0
    @usableFromInline var preface = Preface.awaited

    /// Why tracking stopped, or nil while it goes on. Once set it stays, and
    /// every later byte is consumed unread.
    public private(set) var stopReason: H2TrackerStop?
    /// The target sent a GOAWAY of its own (its header has passed): stickyd
    /// must not send one on this connection (RFC 9113 §6.8: a second
    /// GOAWAY must not raise the last-stream-id, and ours says 2^31-1).
    public private(set) var targetSentGoaway = false
    /// stickyd wrote its GOAWAY on this connection (`recordGoawayWritten`):
    /// it never writes a second one.
    public private(set) var goawayWritten = false

    /// A tracker expecting the target's first frame.
    public init() {}

    /// Whether stickyd may write its GOAWAY to the client right after the
    /// bytes consumed so far: tracking is live, the target's first SETTINGS
    /// frame has passed whole, the stream is exactly between two frames,
    /// and neither the target nor stickyd has sent a GOAWAY yet.
    @inlinable
    public var mayInject: Bool {
        stopReason == nil && preface == .passed && headerBytesRead == 0 && payloadLeft == 0
            && !targetSentGoaway && !goawayWritten
    }

    /// Feeds the next target→client bytes, in order, and returns how many
    /// were consumed (they are forwarded to the client as they are).
    ///
    /// Without `stopAtBoundary` everything is consumed. With it, consuming
    /// stops at the first point where `mayInject` holds: 0 when it holds
    /// already, `bytes.count` when no such point comes within `bytes` (then
    /// `mayInject` tells whether the end of `bytes` is one). The caller
    /// writes its GOAWAY there, calls `recordGoawayWritten`, and feeds the
    /// rest. A stopped tracker consumes everything.
    @inlinable
    public mutating func advance(_ bytes: UnsafeRawBufferPointer, stopAtBoundary: Bool) -> Int {
        let count = bytes.count
        var at = 0
        while at < count {
            guard stopReason == nil else { return count }
            if payloadLeft > 0 {
                let skipped = min(Int(payloadLeft), count - at)
                payloadLeft -= UInt32(skipped)
                at += skipped
                if payloadLeft == 0 { frameEnded() }
                continue
            }
            if stopAtBoundary && mayInject { return at }
            readHeaderByte(bytes[at])
            at += 1
        }
        return count
    }

    /// Marks stickyd's GOAWAY as written (at a point where `mayInject`
    /// held), so that `mayInject` never holds again on this connection.
    public mutating func recordGoawayWritten() {
        precondition(mayInject, "a GOAWAY written where the tracker did not allow one")
        goawayWritten = true
    }

    /// One header byte, in wire order: 24-bit length, type, flags, then the
    /// stream id, whose reserved top bit is ignored as §4.1 says.
    @inlinable
    mutating func readHeaderByte(_ byte: UInt8) {
        switch headerBytesRead {
        case 0: length = UInt32(byte)
        case 1, 2: length = length << 8 | UInt32(byte)
        case 3: type = byte
        case 4: flags = byte
        case 5: streamID = UInt32(byte & 0x7f)
        default: streamID = streamID << 8 | UInt32(byte)
        }
        headerBytesRead += 1
        if headerBytesRead == H2FrameTracker.frameHeaderBytes { headerEnded() }
    }

    /// A whole header: check it, then skip its payload.
    @usableFromInline
    mutating func headerEnded() {
        headerBytesRead = 0
        if preface == .awaited {
            guard type == H2FrameTracker.settingsType, flags & H2FrameTracker.ackFlag == 0,
                  streamID == 0, length % 6 == 0 else {
                stopReason = .notHTTP2
                return
            }
            preface = .inFirstFrame
        } else if !headerIsWellFormed {
            stopReason = .malformedHeader
            return
        }
        if type == H2FrameTracker.goawayType { targetSentGoaway = true }
        payloadLeft = length
        if payloadLeft == 0 { frameEnded() }
    }

    /// The header-only connection errors of RFC 9113 listed on the type;
    /// every other header is accepted.
    @usableFromInline
    var headerIsWellFormed: Bool {
        switch type {
        case H2FrameTracker.settingsType:
            if flags & H2FrameTracker.ackFlag != 0 && length != 0 { return false }
            return streamID == 0 && length % 6 == 0
        case H2FrameTracker.pingType:
            return streamID == 0 && length == 8
        case H2FrameTracker.goawayType:
            return streamID == 0 && length >= 8
        default:
            return true
        }
    }

    /// The current frame's last byte has passed: a boundary.
    @usableFromInline
    mutating func frameEnded() {
        if preface == .inFirstFrame { preface = .passed }
    }
}
