import Foundation

/// The parts of a `discovery.k8s.io/v1` EndpointSlice that targets need.
/// Unknown fields are ignored, as every Kubernetes client must.
public struct EndpointSlice: Sendable, Equatable, Decodable {
    public struct Meta: Sendable, Equatable, Decodable {
        public var name: String?
        public var resourceVersion: String?
    }
    public struct Conditions: Sendable, Equatable, Decodable {
        public var ready: Bool?
        public var serving: Bool?
        public var terminating: Bool?
        public init(ready: Bool?, serving: Bool?, terminating: Bool?) {
            self.ready = ready
            self.serving = serving
            self.terminating = terminating
        }
    }
    public struct Ref: Sendable, Equatable, Decodable {
        public var name: String?
        public init(name: String?) { self.name = name }
    }
    public struct Endpoint: Sendable, Equatable, Decodable {
        public var addresses: [String]
        public var conditions: Conditions?
        public var hostname: String?
        public var targetRef: Ref?
        public init(addresses: [String], conditions: Conditions?, hostname: String?, targetRef: Ref?) {
            self.addresses = addresses
            self.conditions = conditions
            self.hostname = hostname
            self.targetRef = targetRef
        }
    }
    public struct Port: Sendable, Equatable, Decodable {
        public var name: String?
        public var port: Int?
        public var `protocol`: String?
        public init(name: String?, port: Int?, protocol: String?) {
            self.name = name
            self.port = port
            self.protocol = `protocol`
        }
    }

    public var metadata: Meta
    public var addressType: String?
    public var endpoints: [Endpoint]?
    public var ports: [Port]?

    public init(name: String, addressType: String = "IPv4", endpoints: [Endpoint], ports: [Port]) {
        metadata = Meta(name: name, resourceVersion: nil)
        self.addressType = addressType
        self.endpoints = endpoints
        self.ports = ports
    }
}

/// A list's answer: the items and the version to watch from.
public struct EndpointSliceList: Sendable, Decodable {
    public struct Meta: Sendable, Decodable {
        public var resourceVersion: String?
        /// Set when the list has more pages (`limit`).
        public var `continue`: String?
    }
    public var metadata: Meta
    public var items: [EndpointSlice]
}

/// One line of a watch stream.
public enum KubeWatchEvent: Sendable, Equatable {
    case added(EndpointSlice)
    case modified(EndpointSlice)
    case deleted(EndpointSlice)
    /// Only a resourceVersion: nothing changed up to it.
    case bookmark(resourceVersion: String)
    /// A `Status` in the stream; 410 means the version is too old: relist.
    case error(code: Int, message: String)

    private struct Raw: Decodable {
        var type: String
        var object: Object
    }
    private struct Object: Decodable {
        var kind: String?
        var metadata: EndpointSlice.Meta?
        var addressType: String?
        var endpoints: [EndpointSlice.Endpoint]?
        var ports: [EndpointSlice.Port]?
        var code: Int?
        var message: String?
    }

    public static func decode(_ line: [UInt8]) throws -> KubeWatchEvent {
        let raw = try JSONDecoder().decode(Raw.self, from: Data(line))
        let o = raw.object
        func slice() throws -> EndpointSlice {
            guard let meta = o.metadata, meta.name != nil else { throw KubeDecodeError("watch event \(raw.type) without metadata.name") }
            var s = EndpointSlice(name: meta.name ?? "", addressType: o.addressType ?? "", endpoints: o.endpoints ?? [], ports: o.ports ?? [])
            s.metadata = meta
            return s
        }
        switch raw.type {
        case "ADDED": return .added(try slice())
        case "MODIFIED": return .modified(try slice())
        case "DELETED": return .deleted(try slice())
        case "BOOKMARK":
            guard let rv = o.metadata?.resourceVersion else { throw KubeDecodeError("BOOKMARK without a resourceVersion") }
            return .bookmark(resourceVersion: rv)
        case "ERROR": return .error(code: o.code ?? 0, message: o.message ?? "")
        default: throw KubeDecodeError("unknown watch event type '\(raw.type)'")
        }
    }
}

public struct KubeDecodeError: Error, Sendable, CustomStringConvertible {
    public var description: String
    public init(_ d: String) { description = d }
}

/// The part of a Service that stickyd reads: the ClientIP affinity timeout.
public struct KubeService: Sendable, Decodable {
    struct Spec: Decodable {
        struct AffinityConfig: Decodable {
            struct ClientIP: Decodable { var timeoutSeconds: Int? }
            var clientIP: ClientIP?
        }
        var sessionAffinity: String?
        var sessionAffinityConfig: AffinityConfig?
    }
    var spec: Spec?

    /// `timeoutSeconds` when the Service asks for ClientIP affinity. With
    /// `sessionAffinity: None` the pool keeps its own timeout: a stickyd
    /// pool is always sticky, and the Service then says nothing about how long.
    public var affinityTimeoutSeconds: Int? {
        guard spec?.sessionAffinity == "ClientIP" else { return nil }
        // Kubernetes defaults it to 10800 and bounds it to 1..86400.
        return spec?.sessionAffinityConfig?.clientIP?.timeoutSeconds ?? 10_800
    }

    public static func decode(_ data: [UInt8]) throws -> KubeService {
        try JSONDecoder().decode(KubeService.self, from: Data(data))
    }
}

public enum KubeEndpoints {
    /// The endpoints of `slices` on `port`, each address once. An endpoint
    /// in two slices (a slice being split or mirrored) is merged: it is
    /// terminating if any copy says so (a pod never stops terminating, so
    /// that copy is the newer), else ready if any copy says so. Conditions
    /// left out mean ready and not terminating, as the API documents.
    public static func merge(_ slices: [EndpointSlice], port: KubernetesPort) -> [DiscoveredEndpoint] {
        struct Seen { var ready = false; var terminating = false; var serving = false; var name: String? }
        var seen: [SocketAddress: Seen] = [:]
        var order: [SocketAddress] = []
        for slice in slices {
            guard slice.addressType == "IPv4" || slice.addressType == "IPv6" else { continue }
            let match = (slice.ports ?? []).first { p in
                guard (p.protocol ?? "TCP") == "TCP" else { return false }
                switch port {
                case .name(let n): return (p.name ?? "") == n
                case .number(let n): return p.port == n
                }
            }
            guard let portNumber = match?.port, (1...65_535).contains(portNumber) else { continue }
            for e in slice.endpoints ?? [] {
                // The API keeps one address per endpoint and says to use the first.
                guard let text = e.addresses.first, let ip = IPAddress(text) else { continue }
                let address = SocketAddress(ip: ip, port: UInt16(portNumber))
                let ready = e.conditions?.ready ?? true
                let terminating = e.conditions?.terminating ?? false
                var s = seen[address] ?? { order.append(address); return Seen() }()
                s.ready = s.ready || ready
                s.terminating = s.terminating || terminating
                s.serving = s.serving || (e.conditions?.serving ?? ready)
                let name = e.targetRef?.name ?? e.hostname
                if s.name == nil, let name, checkName(name, what: "") == nil { s.name = name }
                seen[address] = s
            }
        }
        return order.map { a in
            let s = seen[a]!
            let ready = s.ready && !s.terminating
            let reason = ready ? nil : s.terminating ? (s.serving ? "terminating" : "terminating, not serving") : "not ready"
            return DiscoveredEndpoint(address: a, ready: ready, name: s.name, reason: reason)
        }
    }
}
