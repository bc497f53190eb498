import StickyCore

/// Where a connection slot is in its life.
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

/// Why a connection ended, for counters (and the access log, later).
public enum CloseReason: UInt8, Sendable, CaseIterable {
    case none
    /// Both sides finished with a FIN.
    case done
    /// One side reset (or errored); the reset was passed on.
    case reset
    case idleTimeout
    case connectFailed
    case noTarget
    case shutdown
    case resources
    /// Cut at a strict drain's deadline.
    case drainDeadline
    /// Its PROXY header was malformed, too slow, or cut short
    /// (`ProxyRejection` says which).
    case proxyHeader
}

extension CloseReason {
    /// snake_case, as a StaticString for the access log's records
    /// (plain data, no String to allocate or retain per connection).
    var staticName: StaticString {
        switch self {
        case .none: return "none"
        case .done: return "done"
        case .reset: return "reset"
        case .idleTimeout: return "idle_timeout"
        case .connectFailed: return "connect_failed"
        case .noTarget: return "no_target"
        case .shutdown: return "shutdown"
        case .resources: return "resources"
        case .drainDeadline: return "drain_deadline"
        case .proxyHeader: return "proxy_header"
        }
    }

    /// snake_case, for stats and metrics; the same words as `staticName`.
    public var metricName: String { staticName.description }
}

/// Why a connection on a `proxy_protocol` listener was closed before it
/// was placed, for `show stats` (`proxy_rejected_<reason>`).
public enum ProxyRejection: UInt8, Sendable, CaseIterable {
    /// The socket's peer is not in `proxy_protocol.from`.
    case notAllowed
    /// The header had not arrived whole within `proxy_protocol.timeout`.
    case timeout
    /// The client closed before its header was whole.
    case truncated
    /// The client reset, or the receive failed.
    case readError
    // The parser's reasons, one each.
    case badSignature
    case oversized
    case badVersion
    case badCommand
    case badFamily
    case badAddress
    case badPort
    case badFormat

    public init(_ error: ProxyError) {
        switch error {
        case .badSignature: self = .badSignature
        case .oversized: self = .oversized
        case .badVersion: self = .badVersion
        case .badCommand: self = .badCommand
        case .badFamily: self = .badFamily
        case .badAddress: self = .badAddress
        case .badPort: self = .badPort
        case .badFormat: self = .badFormat
        }
    }

    /// snake_case, for stats.
    public var metricName: String {
        switch self {
        case .notAllowed: return "not_allowed"
        case .timeout: return "timeout"
        case .truncated: return "truncated"
        case .readError: return "read_error"
        case .badSignature: return ProxyError.badSignature.metricName
        case .oversized: return ProxyError.oversized.metricName
        case .badVersion: return ProxyError.badVersion.metricName
        case .badCommand: return ProxyError.badCommand.metricName
        case .badFamily: return ProxyError.badFamily.metricName
        case .badAddress: return ProxyError.badAddress.metricName
        case .badPort: return ProxyError.badPort.metricName
        case .badFormat: return ProxyError.badFormat.metricName
        }
    }
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
}
