// What the daemon tells the outside about itself: the metrics endpoint, the
// format of its own log lines, and the access log. Kept apart from
// Config.swift so the rest of the config model does not grow with it.

/// How the daemon's own log lines (not the access log) are written.
public enum LogFormat: String, Sendable, CaseIterable {
    /// logfmt: `level=info msg="ready" listeners=...`, one line each.
    case text
    /// One JSON object a line.
    case json
}

/// Where the access log (one line per closed connection) goes.
public enum AccessLogDestination: Sendable, Equatable {
    case none
    case stderr
    /// An absolute path, opened for appending; reopened on SIGHUP.
    case file(String)

    /// `none`, `stderr` or an absolute path; nil for anything else.
    public init?(_ text: String) {
        switch text {
        case "none": self = .none
        case "stderr": self = .stderr
        default:
            guard text.hasPrefix("/") else { return nil }
            self = .file(text)
        }
    }
}

/// The `metrics` and `log` sections' settings, beyond `log.level`.
public struct ObservabilityConfig: Sendable, Equatable {
    /// The Prometheus endpoint's address; nil (the default) serves none.
    public var metricsListen: SocketAddress?
    public var logFormat: LogFormat = .text
    public var accessLog: AccessLogDestination = .none
    /// `log.access_placement`: add `placement=` to each access log line.
    /// Off by default: it lengthens every line, and most readers want
    /// traffic, not the affinity engine's reasoning.
    public var accessLogPlacement = false

    public init() {}
}

extension StickyConfig {
    /// Checks that need the whole config: the metrics listener must not
    /// collide with a traffic or admin listener.
    func validateObservability(_ failure: (String, String) -> ConfigError, firstUse: (String) -> String) throws {
        guard let m = observability.metricsListen else { return }
        if let index = listeners.firstIndex(where: { $0.address == m }) {
            throw failure("metrics.listen", "metrics.listen \(m) is also a traffic listener (\(firstUse("listeners[\(index)].address"))); the metrics endpoint needs an address of its own")
        }
        if let remote = adminRemote, remote.listen == m {
            throw failure("metrics.listen", "metrics.listen \(m) is also admin.remote.listen; the metrics endpoint needs an address of its own")
        }
    }
}
