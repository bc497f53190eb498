// The daemon's configuration: what it listens on, where it sends clients,
// and the limits it runs within. A value from `ConfigLoader` or `quick` has
// been through `validate`, so the data path can trust every number in it.

/// How bytes are moved between a client and its target.
public enum ForwardingEngine: String, Sendable, CaseIterable {
    /// Non-blocking splice(2) through a pipe, driven by ring readiness polls.
    case splice
    /// Multishot recv into a provided-buffer ring, then send.
    case copy
}

/// What a pool's targets speak, as far as stickyd reads it.
public enum PoolProtocol: String, Sendable, CaseIterable {
    /// Bytes that stickyd never looks into. Also the right choice for TLS,
    /// gRPC with TLS included: nothing in it can be read.
    case tcp
    /// Cleartext HTTP/2 (gRPC without TLS). stickyd follows the frame
    /// headers of the target→client bytes (`H2FrameTracker`) so that it can
    /// end a connection gracefully with a GOAWAY: when its target drains,
    /// and at `max_connection_age` (docs/HTTP2.md).
    case h2c
}

public struct ListenerConfig: Sendable, Equatable {
    /// The kernel's default somaxconn cap; a burst of new clients larger than
    /// this is refused by the kernel before the daemon ever sees it.
    public static let defaultBacklog = 4096

    public var address: SocketAddress
    /// Name of the pool this listener's clients are placed in.
    public var pool: String
    public var backlog: Int
    /// When set, every connection must open with a PROXY header, sent from
    /// one of the allowed networks (docs/PROXY.md).
    public var proxyProtocol: ProxyAcceptConfig?

    public init(address: SocketAddress, pool: String, backlog: Int = ListenerConfig.defaultBacklog,
                proxyProtocol: ProxyAcceptConfig? = nil) {
        self.address = address
        self.pool = pool
        self.backlog = backlog
        self.proxyProtocol = proxyProtocol
    }
}

/// A listener's `proxy_protocol`: who may send a PROXY header, and how long
/// the header may take to arrive.
public struct ProxyAcceptConfig: Sendable, Equatable {
    /// A header may come from a proxy in a load balancer's own network; a
    /// few seconds is already slow for it, and a connection waiting for its
    /// header holds a slot.
    public static let defaultTimeoutMs: Millis = 3_000

    /// Networks whose connections may carry a header; a connection from
    /// anywhere else is closed at once, since its header would let it claim
    /// any client address.
    public var from: [CIDR]
    /// The whole header must have arrived this long after the accept.
    public var timeoutMs: Millis

    public init(from: [CIDR], timeoutMs: Millis = ProxyAcceptConfig.defaultTimeoutMs) {
        self.from = from
        self.timeoutMs = timeoutMs
    }
}

public struct PoolConfig: Sendable, Equatable {
    public var name: String
    public var targets: [TargetSpec]
    /// Capacity here is the pool's total; each worker gets its share.
    public var affinity: AffinityConfig
    /// The PROXY header written to a target before any client byte; nil
    /// (`none`) writes none.
    public var sendProxy: ProxyVersion?
    /// Active checks, passive detection and damping (docs/HEALTH.md).
    public var health: HealthConfig
    /// `protocol` in the file (a Swift keyword, hence the name). A
    /// connection keeps it from accept to close, so a reload may not change
    /// it (`TargetRegistry.reload` refuses).
    public var wireProtocol: PoolProtocol
    /// `max_connection_age`: nil (`off`) or at least a second; only with
    /// `protocol: h2c`. Each connection's own limit is this ±10%
    /// (`connectionAgeMs(random:)`).
    public var maxConnectionAgeMs: Millis?
    /// Where targets come from besides `targets`: a Kubernetes Service's
    /// EndpointSlices or DNS records (docs/DISCOVERY.md). Nil: only the file
    /// and the admin socket.
    public var discovery: DiscoveryConfig?

    public init(name: String, targets: [TargetSpec], affinity: AffinityConfig = AffinityConfig(),
                sendProxy: ProxyVersion? = nil, health: HealthConfig = HealthConfig(),
                wireProtocol: PoolProtocol = .tcp, maxConnectionAgeMs: Millis? = nil) {
        self.name = name
        self.targets = targets
        self.affinity = affinity
        self.sendProxy = sendProxy
        self.health = health
        self.wireProtocol = wireProtocol
        self.maxConnectionAgeMs = maxConnectionAgeMs
    }

    /// How far a connection's age limit may stray from `maxConnectionAgeMs`,
    /// either way: as gRPC's MaxConnectionAge, so that connections opened
    /// together (a restart, a burst of clients) do not all reach their age,
    /// and reconnect, together.
    public static let connectionAgeJitter = 0.1

    /// One connection's age limit, nil when `max_connection_age` is off:
    /// `maxConnectionAgeMs` moved by up to ±10%, chosen by `random` (any 64
    /// bits; the data plane draws one per connection, from a per-worker
    /// `SplitMix64`). The age limit is when the data plane asks
    /// `AffinityBalancer.rebalanceForAge`.
    public func connectionAgeMs(random: UInt64) -> Millis? {
        maxConnectionAgeMs.map { PoolConfig.connectionAgeMs($0, random: random) }
    }

    /// `ageMs` moved by up to ±10%, chosen by `random`: the one rule, for
    /// the config and for the data plane, which holds only the number.
    public static func connectionAgeMs(_ ageMs: Millis, random: UInt64) -> Millis {
        let spread = Millis(Double(ageMs) * PoolConfig.connectionAgeJitter)
        return ageMs - spread + Millis(random % UInt64(2 * spread + 1))
    }
}

/// What `drain target` does when the command does not say.
public struct DrainDefaults: Sendable, Equatable {
    public var mode: DrainMode = .strict
    /// The seed's NLB connection-draining timeout.
    public var timeoutMs: Millis = 60_000
    /// After a strict drain's deadline, connections get a FIN; those still
    /// open this much later are reset.
    public var graceMs: Millis = 5_000
    public init() {}
}

/// The admin listener for a controller on another host: TCP with mutual
/// TLS. Files are checked for shape here and loaded at start.
public struct RemoteAdminConfig: Sendable, Equatable {
    public var listen: SocketAddress
    /// PEM: the server's certificate (a chain may follow it) and its key.
    public var certificate: String
    public var privateKey: String
    /// PEM: the CA (or CAs) that client certificates must chain to.
    public var clientCA: String
    /// Verified clients that are let in; empty refuses everyone.
    public var allow: [AllowedClient]

    public init(listen: SocketAddress, certificate: String, privateKey: String, clientCA: String,
                allow: [AllowedClient]) {
        self.listen = listen
        self.certificate = certificate
        self.privateKey = privateKey
        self.clientCA = clientCA
        self.allow = allow
    }
}

/// One entry of `admin.remote.allow`: a client certificate named by its
/// SHA-256 fingerprint, or by its subject's common name. Either only ever
/// matches a certificate that `client_ca` has already verified.
public enum AllowedClient: Sendable, Equatable, CustomStringConvertible {
    /// The digest of the certificate's DER bytes: 64 uppercase hex digits.
    case sha256(String)
    /// The subject CN, compared exactly (case included).
    case commonName(String)

    /// `sha256:AB:CD:...` (colons optional, any case; the form
    /// `openssl x509 -fingerprint -sha256` prints) or `CN=name`.
    public init?(_ text: String) {
        if text.lowercased().hasPrefix("sha256:") {
            let hex = text.dropFirst(7).filter { $0 != ":" }.uppercased()
            guard hex.count == 64, hex.allSatisfy({ $0.isHexDigit && $0.isASCII }) else { return nil }
            self = .sha256(hex)
        } else if text.uppercased().hasPrefix("CN=") {
            let name = String(text.dropFirst(3))
            guard !name.isEmpty else { return nil }
            self = .commonName(name)
        } else {
            return nil
        }
    }

    public func matches(sha256 hex: String, commonName: String?) -> Bool {
        switch self {
        case .sha256(let want): return want == hex.uppercased()
        case .commonName(let want): return want == commonName
        }
    }

    /// Colon-separated pairs, as `openssl x509 -fingerprint` prints them.
    public static func fingerprint(_ hex: String) -> String {
        var out = ""
        for (i, c) in hex.enumerated() {
            if i > 0 && i % 2 == 0 { out.append(":") }
            out.append(c)
        }
        return out
    }

    public var description: String {
        switch self {
        case .sha256(let hex): return "sha256:\(AllowedClient.fingerprint(hex))"
        case .commonName(let name): return "CN=\(name)"
        }
    }
}

public struct Limits: Sendable, Equatable {
    /// Proxied connections across all workers; each one holds two fds.
    public var maxConnections = 10_000
    /// Pipes per worker for the splice engine; pipe-user-pages caps the total.
    public var pipePool = 256
    /// Bytes per pipe (F_SETPIPE_SZ rounds to a power of two anyway).
    public var pipeSize = 65_536
    /// Provided buffers per worker for the copy engine (a ring: power of two).
    public var bufferCount = 256
    /// Bytes per provided buffer.
    public var bufferSize = 65_536

    public init() {}
}

public struct Timeouts: Sendable, Equatable {
    /// How long a backend connect may take before the next target is tried.
    public var connectMs: Millis = 3_000
    /// How long a proxied connection may carry no bytes before it is closed.
    public var idleMs: Millis = 300_000
    /// How long a graceful shutdown waits for connections to end.
    public var shutdownMs: Millis = 60_000
    /// How long, from accept, a client's connect may keep failing over to
    /// further targets: no new attempt starts after it (one in flight runs
    /// to `connectMs`).
    public var connectBudgetMs: Millis = 5_000

    public init() {}
}

/// `takeover_socket`: a path, `none`, or (unset) derived from the admin
/// socket's path, so two daemons with their own admin sockets in one
/// directory never share a takeover socket.
public enum TakeoverSocketSetting: Sendable, Equatable {
    case besideAdminSocket
    case path(String)
    case none
}

public struct StickyConfig: Sendable, Equatable {
    /// copy by default: on the project's benchmark it matched or beat splice
    /// on bulk and won on small requests and new connections (docs/BENCH.md).
    public var engine: ForwardingEngine = .copy
    /// Worker threads, each with its own ring and listener sockets; 0 = one per CPU.
    public var workers = 0
    public var listeners: [ListenerConfig]
    public var pools: [PoolConfig]
    public var limits = Limits()
    public var timeouts = Timeouts()
    /// Further targets tried after a failed backend connect, per client connection.
    public var connectRetries = 2
    /// Path of the admin Unix socket; nil runs without one.
    public var adminSocket: String? = StickyConfig.adminSocketDefault
    public static let adminSocketDefault = "/run/stickyd/admin.sock"
    /// Where the running daemon listens for a successor (the zero-downtime
    /// upgrade, docs/OPERATIONS.md "Upgrade").
    public var takeoverSocket: TakeoverSocketSetting = .besideAdminSocket
    /// Besides root and the daemon's own user, who may use the admin socket.
    public var adminAllowUIDs: [Int] = []
    public var adminAllowGIDs: [Int] = []
    /// The TCP admin listener with mutual TLS; nil runs without one.
    public var adminRemote: RemoteAdminConfig?
    public var drain = DrainDefaults()
    /// Where runtime state (targets changed over the admin socket, the
    /// generated hash key) is kept across restarts; nil keeps none.
    public var stateDir: String? = StickyConfig.stateDirDefault
    public static let stateDirDefault = "/var/lib/stickyd"
    /// One of `StickyConfig.logLevels` (swift-log's level names).
    public var logLevel = "info"
    /// The metrics endpoint, log format and access log (ObservabilityConfig.swift).
    public var observability = ObservabilityConfig()
    /// Several instances sharing pins (docs/SCALING.md); nil: on its own.
    public var peers: PeersConfig?
    /// The service address this instance announces while ready.
    public var vip: VIPConfig?

    /// swift-log's `Logger.Level` raw values, lowest first. Kept as strings so
    /// the core does not depend on swift-log.
    public static let logLevels = ["trace", "debug", "info", "notice", "warning", "error", "critical"]

    /// The takeover socket's path, nil when there is none. Unless
    /// `takeover_socket` says, it is the admin socket's path with `.sock`
    /// replaced by `.takeover.sock` (`/run/stickyd/admin.takeover.sock`).
    public var takeoverSocketPath: String? {
        switch takeoverSocket {
        case .none: return nil
        case .path(let p): return p
        case .besideAdminSocket:
            guard let admin = adminSocket else { return nil }
            let stem = admin.hasSuffix(".sock") ? String(admin.dropLast(5)) : admin
            return stem + ".takeover.sock"
        }
    }

    public init(listeners: [ListenerConfig], pools: [PoolConfig]) {
        self.listeners = listeners
        self.pools = pools
    }

    public func pool(named name: String) -> PoolConfig? {
        pools.first { $0.name == name }
    }

    /// The engine that forwards `pool`'s connections: `engine`, except that
    /// an h2c pool's go through the copy engine (both directions), because
    /// splice moves bytes from socket to socket through the kernel and
    /// never shows them to the frame tracker.
    public func engine(for pool: PoolConfig) -> ForwardingEngine {
        pool.wireProtocol == .h2c ? .copy : engine
    }

    /// Whether workers set up the provided-buffer ring: the copy engine
    /// needs it, and so does any h2c pool under `engine: splice`.
    public var needsBufferRing: Bool {
        pools.contains { engine(for: $0) == .copy }
    }

    /// The pool name quick mode uses, so admin commands can address it.
    public static let quickPoolName = "default"

    /// Quick mode: one pool named "default" holding the targets, every
    /// listener pointing at it, every target with weight 1 and no name.
    /// Throws `ConfigError` (file "<command line>") on invalid input.
    public static func quick(listen: [String], targets: [String]) throws -> StickyConfig {
        let file = "<command line>"
        var listeners: [ListenerConfig] = []
        for text in listen {
            guard let address = SocketAddress(text) else {
                throw ConfigError(file: file, message: "--listen '\(text)' is not an address; \(addressHint)")
            }
            listeners.append(ListenerConfig(address: address, pool: quickPoolName))
        }
        var specs: [TargetSpec] = []
        for text in targets {
            guard let address = SocketAddress(text) else {
                throw ConfigError(file: file, message: "--target '\(text)' is not an address; \(addressHint)")
            }
            specs.append(TargetSpec(address: address))
        }
        var config = StickyConfig(listeners: listeners, pools: [PoolConfig(name: quickPoolName, targets: specs)])
        // A throwaway run keeps nothing on the host unless its flags name a
        // place: the global state file and admin socket would let two quick
        // runs (or a quick run and the service) read each other's state and
        // fight over the socket. The takeover socket follows the admin socket.
        config.adminSocket = nil
        config.stateDir = nil
        try config.validate(file: file)
        return config
    }

    /// Semantic checks: ranges, references between sections, uniqueness.
    /// Throws the first problem found as a `ConfigError` without a line.
    public func validate(file: String) throws {
        try validate(file: file, locate: { _ in nil })
    }

    /// The one home of every semantic rule. The YAML loader passes `locate`,
    /// which maps a path such as `pools[0].targets[2].weight` to where that
    /// node (or its nearest written ancestor) sits in the file, so a rule is
    /// written once and still reports a line when there is one.
    func validate(file: String, locate: (String) -> SourcePosition?) throws {
        func failure(_ path: String, _ message: String) -> ConfigError {
            let at = locate(path)
            return ConfigError(file: file, line: at?.line, column: at?.column, message: message)
        }
        // Points a duplicate back at its first use, in the user's terms.
        func firstUse(_ path: String) -> String {
            locate(path).map { "line \($0.line)" } ?? path
        }

        if let message = Bounds.workers.check(workers) { throw failure("workers", message) }

        if let message = Bounds.listenerCount.check(listeners.count) { throw failure("listeners", message) }
        if let message = Bounds.poolCount.check(pools.count) { throw failure("pools", message) }
        let poolNames = pools.map(\.name)

        var listenerAt: [SocketAddress: Int] = [:]
        for (index, listener) in listeners.enumerated() {
            let at = "listeners[\(index)]"
            let who = "listener \(listener.address)"
            if let first = listenerAt[listener.address] {
                throw failure("\(at).address", "\(who) is listed twice (first at \(firstUse("listeners[\(first)].address")))")
            }
            listenerAt[listener.address] = index
            if let message = Bounds.backlog.check(listener.backlog) { throw failure("\(at).backlog", "\(who): \(message)") }
            if listener.pool.isEmpty {
                throw failure("\(at).pool", "\(who) names no pool; 'pool' may be left out only when there is exactly one pool (there are \(pools.count): \(poolNames.joined(separator: ", ")))")
            }
            if pool(named: listener.pool) == nil {
                throw failure("\(at).pool", "\(who): no pool named '\(listener.pool)'\(suggestion(for: listener.pool, among: poolNames))")
            }
            if let proxy = listener.proxyProtocol {
                let pat = "\(at).proxy_protocol"
                if let message = Bounds.proxyFromCount.check(proxy.from.count) {
                    throw failure("\(pat).from", "\(who): \(message)")
                }
                if proxy.timeoutMs <= 0 || proxy.timeoutMs > Bounds.proxyTimeoutMaxMs {
                    throw failure("\(pat).timeout", "\(who): proxy_protocol.timeout must be more than 0 and at most \(formatDuration(Bounds.proxyTimeoutMaxMs)), got \(formatDuration(proxy.timeoutMs))")
                }
            }
        }

        var poolAt: [String: Int] = [:]
        for (index, pool) in pools.enumerated() {
            let at = "pools[\(index)]"
            if let message = checkName(pool.name, what: "pool name") { throw failure("\(at).name", message) }
            if let first = poolAt[pool.name] {
                throw failure("\(at).name", "pool name '\(pool.name)' is used twice (first at \(firstUse("pools[\(first)].name")))")
            }
            poolAt[pool.name] = index
            let who = "pool '\(pool.name)'"
            // With discovery the file's targets are optional: they come and go.
            let targetBound = pool.discovery == nil ? Bounds.targetCount : Bounds.discoveredTargetCount
            if let message = targetBound.check(pool.targets.count) { throw failure("\(at).targets", "\(who): \(message)") }

            var targetAt: [SocketAddress: Int] = [:]
            var nameAt: [String: Int] = [:]
            for (t, target) in pool.targets.enumerated() {
                let tat = "\(at).targets[\(t)]"
                if let first = targetAt[target.address] {
                    throw failure("\(tat).address", "\(who) lists target \(target.address) twice (first at \(firstUse("\(at).targets[\(first)].address")))")
                }
                targetAt[target.address] = t
                if let message = Bounds.weight.check(target.weight) {
                    throw failure("\(tat).weight", "\(who), target \(target.address): \(message)")
                }
                if let name = target.name {
                    if let message = checkName(name, what: "target name") { throw failure("\(tat).name", "\(who): \(message)") }
                    // Admin commands address a target by name, so a name must pick one target.
                    if let first = nameAt[name] {
                        throw failure("\(tat).name", "\(who) has two targets named '\(name)' (first at \(firstUse("\(at).targets[\(first)].name")))")
                    }
                    nameAt[name] = t
                }
            }
            if !pool.targets.isEmpty || pool.discovery == nil, !pool.targets.contains(where: { $0.weight > 0 }) {
                throw failure("\(at).targets", "\(who) has no target with a weight above 0, so no client could ever be placed")
            }
            if let problem = pool.affinity.validate().first {
                throw failure("\(at).affinity.\(problem.key)", "\(who): \(problem)")
            }
            if let problem = pool.health.validate() {
                throw failure("\(at).health.\(problem.key)", "\(who): \(problem.message)")
            }
            if let problem = pool.discovery?.validate() {
                throw failure("\(at).discovery.\(problem.key)", "\(who): \(problem.message)")
            }
            if let age = pool.maxConnectionAgeMs {
                guard pool.wireProtocol == .h2c else {
                    throw failure("\(at).max_connection_age", "\(who): max_connection_age needs protocol: h2c; it ends a connection with an HTTP/2 GOAWAY, which a \(pool.wireProtocol.rawValue) pool cannot send")
                }
                if age < Bounds.connectionAgeMinMs || age >= Bounds.timeoutCeiling {
                    throw failure("\(at).max_connection_age", "\(who): max_connection_age must be at least \(formatDuration(Bounds.connectionAgeMinMs)) and less than \(formatDuration(Bounds.timeoutCeiling)), or off, got \(formatDuration(age))")
                }
            }
        }

        let limitChecks: [(String, IntBound, Int)] = [
            ("limits.max_connections", Bounds.maxConnections, limits.maxConnections),
            ("limits.pipe_pool", Bounds.pipePool, limits.pipePool),
            ("limits.pipe_size", Bounds.pipeSize, limits.pipeSize),
            ("limits.buffer_count", Bounds.bufferCount, limits.bufferCount),
            ("limits.buffer_size", Bounds.bufferSize, limits.bufferSize),
        ]
        for (path, bound, value) in limitChecks {
            if let message = bound.check(value) { throw failure(path, message) }
        }

        let timeoutChecks: [(String, Millis)] = [
            ("timeouts.connect", timeouts.connectMs),
            ("timeouts.idle", timeouts.idleMs),
            ("timeouts.shutdown", timeouts.shutdownMs),
            ("timeouts.connect_budget", timeouts.connectBudgetMs),
        ]
        for (path, value) in timeoutChecks where value <= 0 || value >= Bounds.timeoutCeiling {
            throw failure(path, "\(path) must be more than 0 and less than \(formatDuration(Bounds.timeoutCeiling)), got \(formatDuration(value))")
        }

        if let message = Bounds.connectRetries.check(connectRetries) { throw failure("connect_retries", message) }

        for (path, value) in [("drain.timeout", drain.timeoutMs), ("drain.grace", drain.graceMs)]
        where value <= 0 || value >= Bounds.timeoutCeiling {
            throw failure(path, "\(path) must be more than 0 and less than \(formatDuration(Bounds.timeoutCeiling)), got \(formatDuration(value))")
        }
        for (path, ids) in [("admin.allow_uids", adminAllowUIDs), ("admin.allow_gids", adminAllowGIDs)] {
            if let bad = ids.first(where: { $0 < 0 || $0 > Int(UInt32.max) }) {
                throw failure(path, "\(path) holds \(bad), which is not a user or group id")
            }
        }
        if case .path(let socket) = takeoverSocket {
            guard socket.hasPrefix("/") else {
                throw failure("takeover_socket", "takeover_socket must be an absolute path or none, got '\(socket)'")
            }
            guard socket.utf8.count < Bounds.unixPathBytes else {
                throw failure("takeover_socket", "takeover_socket is \(socket.utf8.count) bytes long; a Unix socket path must be under \(Bounds.unixPathBytes) bytes")
            }
        }
        if let dir = stateDir, !dir.hasPrefix("/") {
            throw failure("state_dir", "state_dir must be an absolute path, got '\(dir)'")
        }
        if let socket = adminSocket {
            guard socket.hasPrefix("/") else {
                throw failure("admin.socket", "admin.socket must be an absolute path, got '\(socket)'")
            }
            // sun_path is 108 bytes including the terminating NUL.
            guard socket.utf8.count < Bounds.unixPathBytes else {
                throw failure("admin.socket", "admin.socket is \(socket.utf8.count) bytes long; a Unix socket path must be under \(Bounds.unixPathBytes) bytes")
            }
            if case .besideAdminSocket = takeoverSocket, let derived = takeoverSocketPath,
               derived.utf8.count >= Bounds.unixPathBytes {
                throw failure("admin.socket", "the takeover socket derived from admin.socket (\(derived)) would be \(derived.utf8.count) bytes long, over the \(Bounds.unixPathBytes - 1) a Unix socket path may have; shorten admin.socket or set takeover_socket")
            }
        }

        if let remote = adminRemote {
            let files = [("admin.remote.cert", remote.certificate), ("admin.remote.key", remote.privateKey),
                         ("admin.remote.client_ca", remote.clientCA)]
            // The daemon may run from any directory (systemd uses /), so a
            // relative path would mean something else there.
            for (path, file) in files where !file.hasPrefix("/") {
                throw failure(path, "\(path) must be an absolute path, got '\(file)'")
            }
            if let index = listeners.firstIndex(where: { $0.address == remote.listen }) {
                throw failure("admin.remote.listen", "admin.remote.listen \(remote.listen) is also a traffic listener (\(firstUse("listeners[\(index)].address"))); the admin listener needs an address of its own")
            }
        }

        try validateObservability(failure, firstUse: firstUse)
        if let peers {
            try peers.validate(failure, trafficListeners: listeners.map(\.address))
            // Instances place new clients alike only with one key; a
            // generated one differs per instance.
            if let i = pools.firstIndex(where: { $0.affinity.hashKey == nil }) {
                throw failure("pools[\(i)].affinity", "pools[\(i)] ('\(pools[i].name)') needs affinity.hash_key with peers: every instance must place clients with the same key")
            }
        }
        if let vip { try vip.validate(failure) }

        if !Self.logLevels.contains(logLevel) {
            throw failure("log.level", notOneOf("log.level", logLevel, Self.logLevels))
        }
    }
}

/// A config problem, with where it is when that is known.
public struct ConfigError: Error, CustomStringConvertible, Equatable {
    /// The config file's path, or "<command line>" for quick mode.
    public var file: String
    /// 1-based line, when the problem comes from a file.
    public var line: Int?
    /// 1-based column in Unicode scalars (libyaml's count), when known.
    public var column: Int?
    public var message: String

    public init(file: String, line: Int? = nil, column: Int? = nil, message: String) {
        self.file = file
        self.line = line
        self.column = column
        self.message = message
    }

    /// `FILE:LINE:COL: MESSAGE`, the form editors and compilers use, so a
    /// terminal or an IDE can jump to the spot. Absent parts are left out.
    public var description: String {
        var location = file
        if let line {
            location += ":\(line)"
            if let column { location += ":\(column)" }
        }
        return "\(location): \(message)"
    }
}

/// A 1-based line and column in a config file.
struct SourcePosition: Sendable, Equatable {
    var line: Int
    var column: Int
}

let addressHint = "expected IP:PORT such as 127.0.0.1:7001 or [::1]:7001 (host names are not resolved)"

/// An allowed range for one integer setting, and how to say it is broken.
struct IntBound: Sendable {
    var name: String
    var range: ClosedRange<Int>
    var powerOfTwo = false
    /// Echo values as sizes ("64KiB") because that is how they are written.
    var isByteSize = false

    func check(_ value: Int) -> String? {
        let isPowerOfTwo = value > 0 && value & (value - 1) == 0
        if range.contains(value) && (isPowerOfTwo || !powerOfTwo) { return nil }
        func show(_ n: Int) -> String { isByteSize ? formatByteSize(n) : "\(n)" }
        let kind = powerOfTwo ? "a power of two " : ""
        return "\(name) must be \(kind)from \(show(range.lowerBound)) to \(show(range.upperBound)), got \(show(value))"
    }
}

/// Every limit in one place, so the docs, the loader and `validate` agree.
enum Bounds {
    static let workers = IntBound(name: "workers", range: 0...256)
    // One listener socket per worker each: 64 × 256 workers stays far below fd limits.
    static let listenerCount = IntBound(name: "the number of listeners", range: 1...64)
    static let poolCount = IntBound(name: "the number of pools", range: 1...64)
    // TargetMask, which records failed targets per connect, holds 64.
    static let targetCount = IntBound(name: "the number of targets", range: 1...TargetMask.capacity)
    static let discoveredTargetCount = IntBound(name: "the number of targets", range: 0...TargetMask.capacity)
    static let weight = IntBound(name: "weight", range: 0...10_000)
    static let backlog = IntBound(name: "backlog", range: 1...65_535)
    static let maxConnections = IntBound(name: "limits.max_connections", range: 1...1_000_000)
    static let pipePool = IntBound(name: "limits.pipe_pool", range: 1...65_536)
    static let pipeSize = IntBound(name: "limits.pipe_size", range: 4096...(1 << 20), powerOfTwo: true, isByteSize: true)
    static let bufferCount = IntBound(name: "limits.buffer_count", range: 16...32_768, powerOfTwo: true)
    static let bufferSize = IntBound(name: "limits.buffer_size", range: 1024...(1 << 20), isByteSize: true)
    static let connectRetries = IntBound(name: "connect_retries", range: 0...16)
    /// Timeouts are more than zero and under this: past 30 days a timer is a
    /// typo, not a policy.
    static let timeoutCeiling: Millis = 30 * 86_400_000
    static let unixPathBytes = 108
    /// An allow-list names the proxies in front, a handful of networks; it
    /// is walked once per accepted connection.
    static let proxyFromCount = IntBound(name: "the number of proxy_protocol.from networks", range: 1...256)
    /// A proxy writes its header with its first segment; a minute is
    /// already a stuck peer holding a slot.
    static let proxyTimeoutMaxMs: Millis = 60_000
    static let nameLength = 1...64
    /// Every age check may end a connection: under a second, clients would
    /// spend their time reconnecting.
    static let connectionAgeMinMs: Millis = 1_000
}

/// Pool and target names appear in admin commands, which split on spaces,
/// and in metric labels; so keep them to a plain, bounded alphabet.
func checkName(_ name: String, what: String) -> String? {
    let plain = name.unicodeScalars.allSatisfy { c in
        c.isASCII && (c.properties.isAlphabetic || ("0"..."9").contains(c) || c == "-" || c == "_" || c == ".")
    }
    if Bounds.nameLength.contains(name.count) && plain { return nil }
    return "\(what) '\(name)' must be 1 to \(Bounds.nameLength.upperBound) characters of letters, digits, '.', '_' and '-'"
}

/// "NAME must be one of a, b, got 'x' (did you mean 'a'?)": the one wording
/// for a value outside a fixed set of words, wherever it is checked.
func notOneOf(_ name: String, _ value: String, _ words: [String]) -> String {
    "\(name) must be one of \(words.joined(separator: ", ")), got '\(value)'\(suggestion(for: value, among: words))"
}

/// " (did you mean 'x'?)" for the closest candidate, or "" when none is close.
/// Compares with case, '_' and '-' ignored, so `maxConnections` finds
/// `max_connections`, and accepts a prefix, so `warn` finds `warning`.
func suggestion(for word: String, among candidates: [String]) -> String {
    func normal(_ s: String) -> [Character] { Array(s.lowercased().filter { $0 != "_" && $0 != "-" }) }
    let target = normal(word)
    var best: (candidate: String, distance: Int)?
    for candidate in candidates {
        let other = normal(candidate)
        var distance = editDistance(target, other)
        if target.count >= 3 && (other.starts(with: target) || target.starts(with: other)) { distance = min(distance, 1) }
        let shorter = min(target.count, other.count)
        // A one-letter name is one edit from every other one-letter name.
        if distance <= max(1, shorter / 3), distance < shorter, distance < (best?.distance ?? .max) {
            best = (candidate, distance)
        }
    }
    return best.map { " (did you mean '\($0.candidate)'?)" } ?? ""
}

/// Levenshtein distance; inputs are config keys, so quadratic is fine.
func editDistance(_ a: [Character], _ b: [Character]) -> Int {
    if a.isEmpty { return b.count }
    var previous = Array(0...b.count)
    for i in 1...a.count {
        var current = [i] + Array(repeating: 0, count: b.count)
        for j in stride(from: 1, through: b.count, by: 1) {
            let substitution = previous[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)
            current[j] = min(previous[j] + 1, current[j - 1] + 1, substitution)
        }
        previous = current
    }
    return previous[b.count]
}
