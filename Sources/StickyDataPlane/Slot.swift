import StickyCore

/// Where a connection slot is in its life. Every change goes through
/// `Slot.enter`, which asserts that the change is one of the few the life
/// of a connection allows: a handler that finds its slot in a state it did
/// not expect is a bug, not something to step around.
///
///     free ─▶ proxyHeader ─▶ connecting ─▶ open
///       │                      ▲  │          │
///       └──────────────────────┘  ▼          ▼
///                   (any live state) ─▶ closing ─▶ free
enum SlotState: UInt8 {
    case free
    /// Accepted on a `proxy_protocol` listener; its PROXY header is being
    /// received. No target is chosen yet: the header names the client.
    case proxyHeader
    /// Accepted; a backend connect is in flight.
    case connecting
    /// Both sides connected; bytes are forwarded.
    case open
    /// Descriptors are being cancelled and closed; the slot returns to the
    /// free list once its last submitted operation has completed.
    case closing
}

/// One forwarding direction: `up` is client to backend, `down` is backend
/// to client.
struct Direction {
    static let noBuffer: UInt16 = 0xFFFF

    /// Splice engine: the pipe held while bytes are in flight, or -1.
    var pipe: Int32 = -1
    /// Splice engine: bytes sitting in `pipe`.
    var pipeBytes: Int32 = 0
    /// The source sent FIN (or the engine saw EOF).
    var sourceEOF = false
    /// The EOF was passed on with shutdown(SHUT_WR): this direction is done.
    var finished = false
    /// Waiting for the destination to become writable.
    var awaitingWritable = false
    /// On the worker's list of directions waiting for a free pipe.
    var awaitingPipe = false
    /// Bytes delivered to the destination.
    var bytes: UInt64 = 0

    // Copy engine: received buffers waiting to be sent, as a FIFO linked
    // through the worker's per-buffer `next` array (so no per-direction
    // array, and no bound to get wrong: the ring bounds it).
    var queueHead: UInt16 = Direction.noBuffer
    var queueTail: UInt16 = Direction.noBuffer
    var queuedBuffers: UInt16 = 0
    /// Bytes of the head buffer already sent (a short send).
    var headOffset: UInt32 = 0
    /// h2c, target→client: bytes of the head buffer the frame tracker has
    /// read, and so may be sent; a send never goes past them, so a GOAWAY
    /// can follow exactly at a frame boundary (Http2Goaway.swift).
    var trackedEnd: UInt32 = 0
    /// A send is in flight: at most one per direction, or the stream reorders.
    var sending = false
    /// A multishot recv is armed on the source.
    var receiving = false
    /// The recv was cancelled for backpressure; re-arm once the queue drains.
    var recvPaused = false
    /// The buffer ring ran dry (ENOBUFS); re-arm once buffers return.
    var starved = false
}

/// One proxied connection. Lives in a fixed array owned by its worker and is
/// addressed from `user_data` by index and generation.
struct Slot {
    var generation: UInt32 = 0
    var state: SlotState = .free
    /// Submitted operations that have not yet delivered their final
    /// completion. The slot is reused only at zero, so a late completion can
    /// never be mistaken for the next connection's.
    var inflight: Int32 = 0
    /// Owned descriptors; -1 once their close has been submitted.
    var clientFD: Int32 = -1
    var backendFD: Int32 = -1
    var pool: Int32 = 0
    var placement = Placement(target: -1)
    /// `policy.opened` was called, so `policy.closed` is owed.
    var placed = false
    var excluded = TargetMask()
    /// For the access log's `placement=`: what this connection's placements
    /// did to its client's pin, and the target last chosen (even when no
    /// connect could start). Failover and a connect parked for a descriptor
    /// place again, and the later placement finds the pin the earlier one
    /// made as a hit: the move is what the line must say.
    var logKind: PlacementKind = .none
    var logMove: MoveReason = .targetDown
    var logTarget: Int32 = -1
    var connectAttempts: Int32 = 0
    var client: IPAddress = .v4(0)
    /// For the access log, with `client`; and when the client came.
    var clientPort: UInt16 = 0
    var acceptedMs: Millis = 0
    var lastActive: Millis = 0
    var closeReason: CloseReason = .none
    // Intrusive lists: the free list and the idle (LRU) list share no slot.
    var next: Int32 = -1
    var prev: Int32 = -1
    var onIdleList = false
    var clientPollArmed = false
    var backendPollArmed = false
    var up = Direction()
    var down = Direction()
    /// The listener it was accepted on (for its `proxy_protocol`).
    var listener: Int32 = 0
    /// PROXY header: bytes received into the slot's header area, and how
    /// many of them the header took once whole. Bytes between the two are
    /// the client's first payload, sent to the target before any other.
    var proxyReceived: UInt16 = 0
    var proxyConsumed: UInt16 = 0
    /// How this connection's bytes move: the worker's engine, or the copy
    /// engine for a pool whose bytes must be seen (docs/HTTP2.md).
    var engine: ForwardingEngine = .copy
    /// h2c pools: the target→client frame tracker is live for this
    /// connection. Cleared when tracking stops; it then runs as plain TCP.
    var h2c = false
    var h2 = H2FrameTracker()
    var goaway = GoawayState.none
    /// Bytes of the GOAWAY frame already sent (a short send).
    var goawaySent: UInt8 = 0
    /// When an h2c connection's pin is next checked for `max_connection_age`
    /// (0: never).
    var ageCheckAt: Millis = 0

    /// Moves to `next`, asserting the move is one the life of a
    /// connection allows (`SlotState.allows`).
    @inline(__always)
    mutating func enter(_ next: SlotState) {
        precondition(SlotState.allows(from: state, to: next), "slot moved \(state) → \(next)")
        state = next
    }
}

/// Where a connection is with stickyd's GOAWAY (docs/HTTP2.md).
enum GoawayState: UInt8 {
    case none
    /// Its target is leaving (drain, maint, down, removed): to be written
    /// at the next frame boundary.
    case wantedDrain
    /// It reached `max_connection_age` and its pin moved: likewise.
    case wantedAge
    /// Being written.
    case sending
    /// Written whole: the client opens no new streams on this connection.
    case sent

    var wanted: Bool { self == .wantedDrain || self == .wantedAge }
}

extension SlotState {
    /// The transitions a connection may make, and no others.
    static func allows(from: SlotState, to: SlotState) -> Bool {
        switch (from, to) {
        case (.free, .proxyHeader), (.free, .connecting):
            return true
        case (.proxyHeader, .connecting):
            return true
        case (.connecting, .open):
            return true
        case (.proxyHeader, .closing), (.connecting, .closing), (.open, .closing):
            return true
        case (.closing, .free):
            return true
        default:
            return false
        }
    }

    /// Still holding a client: accepted and not yet closing.
    var isLive: Bool { self == .proxyHeader || self == .connecting || self == .open }
}
