import StickyCore

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
