/// A pool's `discovery` section: where its targets come from besides the
/// file and the admin socket (docs/DISCOVERY.md). One source per pool: two
/// would each drain what the other adds.
public enum DiscoveryConfig: Sendable, Equatable {
    case kubernetes(KubernetesDiscoveryConfig)
    case dns(DNSDiscoveryConfig)

    /// A problem with its key (relative to `discovery.`), or nil.
    public func validate() -> (key: String, message: String)? {
        switch self {
        case .kubernetes(let k): return k.validate()
        case .dns(let d): return d.validate()
        }
    }

    /// What the log and `show targets` call the source.
    public var kind: String {
        switch self {
        case .kubernetes: return "kubernetes"
        case .dns: return "dns"
        }
    }
}

/// Which of an EndpointSlice's ports the targets use.
public enum KubernetesPort: Sendable, Equatable, CustomStringConvertible {
    /// The port's name, as the Service names it (the slices carry it).
    case name(String)
    /// The port number on the pods (the Service's `targetPort`).
    case number(Int)

    public var description: String {
        switch self {
        case .name(let n): return n
        case .number(let n): return "\(n)"
        }
    }
}

/// `discovery.kubernetes`: follow one Service's EndpointSlices.
public struct KubernetesDiscoveryConfig: Sendable, Equatable {
    public var service: String
    public var namespace = "default"
    public var port: KubernetesPort
    /// A kubeconfig file; nil uses the in-cluster service account.
    public var kubeconfig: String?
    /// The kubeconfig context; nil uses its `current-context`.
    public var context: String?
    /// The Service's `sessionAffinityConfig.clientIP.timeoutSeconds` becomes
    /// the pool's affinity timeout: true unless the file writes
    /// `affinity.timeout` (set by the loader, which sees what was written).
    public var affinityFromService = true

    public init(service: String, namespace: String = "default", port: KubernetesPort, kubeconfig: String? = nil,
                context: String? = nil) {
        self.service = service
        self.namespace = namespace
        self.port = port
        self.kubeconfig = kubeconfig
        self.context = context
    }

    func validate() -> (key: String, message: String)? {
        // Kubernetes' own rules (RFC 1035/1123 labels): a name that breaks
        // them can never match, so say so now rather than watch nothing.
        if !DiscoveryNames.isLabel(service, allowLeadingDigit: false) {
            return ("kubernetes.service", "discovery.kubernetes.service must be a Service name (1-63 lower-case letters, digits and '-', starting with a letter), got '\(service)'")
        }
        if !DiscoveryNames.isLabel(namespace, allowLeadingDigit: true) {
            return ("kubernetes.namespace", "discovery.kubernetes.namespace must be a namespace name (1-63 lower-case letters, digits and '-'), got '\(namespace)'")
        }
        switch port {
        case .number(let n) where !(1...65_535).contains(n):
            return ("kubernetes.port", "discovery.kubernetes.port must be a port name or a number from 1 to 65535, got \(n)")
        case .name(let n) where n.isEmpty || n.count > 63 || !n.allSatisfy({ $0.isASCII && ($0.isLowercase || $0.isNumber || $0 == "-") }):
            return ("kubernetes.port", "discovery.kubernetes.port must be a port name (lower-case letters, digits and '-') or a number, got '\(n)'")
        default: break
        }
        if let path = kubeconfig, !path.hasPrefix("/") {
            return ("kubernetes.kubeconfig", "discovery.kubernetes.kubeconfig must be an absolute path, got '\(path)'")
        }
        if context != nil && kubeconfig == nil {
            return ("kubernetes.context", "discovery.kubernetes.context needs a kubeconfig; in-cluster credentials have no contexts")
        }
        return nil
    }
}

/// `discovery.dns`: follow an SRV name, or an A/AAAA name with a port.
public struct DNSDiscoveryConfig: Sendable, Equatable {
    public var name: String
    /// Set: A and AAAA records of `name`, each address on this port.
    /// Nil: SRV records, which carry their own ports.
    public var port: Int?
    public var resolvers: [SocketAddress]
    /// The longest time between two lookups; a shorter TTL brings the
    /// next one forward (`DNSRefresh`).
    public var intervalMs: Millis = 10_000

    public static let resolversMax = 8
    public static let intervalMinMs: Millis = 1_000
    public static let intervalMaxMs: Millis = 3_600_000

    public init(name: String, port: Int? = nil, resolvers: [SocketAddress], intervalMs: Millis = 10_000) {
        self.name = name
        self.port = port
        self.resolvers = resolvers
        self.intervalMs = intervalMs
    }

    func validate() -> (key: String, message: String)? {
        if !DiscoveryNames.isDNSName(name) {
            return ("dns.name", "discovery.dns.name must be a DNS name (labels of letters, digits, '-' and '_', at most 253 characters), got '\(name)'")
        }
        if let p = port, !(1...65_535).contains(p) {
            return ("dns.port", "discovery.dns.port must be from 1 to 65535, got \(p)")
        }
        if resolvers.isEmpty || resolvers.count > DNSDiscoveryConfig.resolversMax {
            return ("dns.resolvers", "discovery.dns.resolvers must list 1 to \(DNSDiscoveryConfig.resolversMax) addresses, got \(resolvers.count)")
        }
        if intervalMs < DNSDiscoveryConfig.intervalMinMs || intervalMs > DNSDiscoveryConfig.intervalMaxMs {
            return ("dns.interval", "discovery.dns.interval must be from \(formatDuration(DNSDiscoveryConfig.intervalMinMs)) to \(formatDuration(DNSDiscoveryConfig.intervalMaxMs)), got \(formatDuration(intervalMs))")
        }
        return nil
    }
}

enum DiscoveryNames {
    /// An RFC 1123 label (RFC 1035 when a leading digit is not allowed), as
    /// Kubernetes checks Service and namespace names.
    static func isLabel(_ s: String, allowLeadingDigit: Bool) -> Bool {
        guard (1...63).contains(s.count), let first = s.first, let last = s.last else { return false }
        guard s.allSatisfy({ $0.isASCII && ($0.isLowercase || $0.isNumber || $0 == "-") }) else { return false }
        guard first != "-", last != "-" else { return false }
        return allowLeadingDigit || first.isLetter
    }

    /// A host or SRV name: labels of 1-63 characters (letters, digits, '-',
    /// and '_' for SRV's `_service._proto`), 253 in all, an optional final dot.
    static func isDNSName(_ s: String) -> Bool {
        let name = s.hasSuffix(".") ? String(s.dropLast()) : s
        guard (1...253).contains(name.count) else { return false }
        return name.split(separator: ".", omittingEmptySubsequences: false).allSatisfy { label in
            (1...63).contains(label.count) && label.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-" || $0 == "_") }
        }
    }
}
