#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Yams

/// Reads the YAML config file into a validated `StickyConfig`.
///
/// It walks Yams' node tree rather than decoding with `Codable` because every
/// node keeps its mark: each error, from a YAML typo to a duplicate target,
/// can name the file, line and column the operator has to fix.
public enum ConfigLoader {
    /// A config lists a few pools of at most 64 targets; a file this large is
    /// a wrong path (a log, a core dump), and reading it all would be the bug.
    static let maxFileBytes = 1 << 20

    public static func load(path: String) throws -> StickyConfig {
        try parse(readFile(path), file: path)
    }

    public static func parse(_ text: String, file: String) throws -> StickyConfig {
        let root: Node?
        do {
            root = try Yams.compose(yaml: text)
        } catch let error as YamlError {
            throw syntaxError(error, text: text, file: file)
        }
        guard let root else {
            throw ConfigError(file: file, message: "the file holds no settings; it needs at least 'listeners' and 'pools'")
        }
        var reader = NodeReader(file: file)
        do {
            let config = try reader.config(root)
            try config.validate(file: file, locate: reader.position(of:))
            return config
        } catch let error as ConfigError {
            throw insideText(error, lines: yamlLines(text))
        }
    }

    /// At the end of the text libyaml starts a new line even when the text
    /// does not end with one, so a mark there (a syntax error, or the empty
    /// node of "---") named the line after the last: it is moved to the end
    /// of the last line.
    static func insideText(_ error: ConfigError, lines: [Substring.UnicodeScalarView]) -> ConfigError {
        guard let line = error.line, line > lines.count, let last = lines.last else { return error }
        var moved = error
        moved.line = lines.count
        moved.column = last.count + 1
        return moved
    }

    static func readFile(_ path: String) throws -> String {
        func failure(_ message: String) -> ConfigError { ConfigError(file: path, message: message) }
        func reason() -> String { String(cString: strerror(errno)) }

        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw failure("cannot open: \(reason())") }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            let count = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if count < 0 {
                if errno == EINTR { continue }
                throw failure("cannot read: \(reason())")
            }
            if count == 0 { break }
            bytes.append(contentsOf: chunk[..<count])
            guard bytes.count <= maxFileBytes else {
                throw failure("larger than \(formatByteSize(maxFileBytes)); is this the right file?")
            }
        }
        guard let text = String(validating: bytes, as: UTF8.self) else {
            throw failure("not valid UTF-8")
        }
        return text
    }

    static func syntaxError(_ error: YamlError, text: String, file: String) -> ConfigError {
        let lines = yamlLines(text)
        func located(_ mark: Mark, _ message: String) -> ConfigError {
            insideText(ConfigError(file: file, line: mark.line, column: mark.column, message: message), lines: lines)
        }
        func yamlSyntax(_ context: YamlError.Context?, _ problem: String, _ mark: Mark) -> ConfigError {
            guard let context else { return located(mark, "YAML syntax error: \(problem)") }
            // Yams words some errors as "<context> but <problem>".
            if problem.hasPrefix("but ") {
                return located(mark, "YAML syntax error: \(context.text), \(problem)")
            }
            // libyaml's context points at the construct it was in the middle of,
            // which is often where the real mistake is (an unclosed quote).
            var message = "YAML syntax error: \(problem) (\(context.text) at line \(context.mark.line), column \(context.mark.column))"
            if lines.dropFirst(mark.line - 1).first?.dropFirst(mark.column - 1).first == "\t" {
                message += "; YAML does not allow tabs for indentation"
            }
            return located(mark, message)
        }
        switch error {
        case let .scanner(context, problem, mark, _),
             let .parser(context, problem, mark, _),
             let .composer(context, problem, mark, _):
            return yamlSyntax(context, problem, mark)
        case let .duplicatedKeysInMapping(duplicates, context):
            // Yams gives only the first of the clashing keys' marks.
            let keys = duplicates.map { "'\($0)'" }.joined(separator: ", ")
            return located(context.mark, "key \(keys) appears more than once in this mapping")
        case let .reader(problem, offset, _, _):
            guard let offset else { return ConfigError(file: file, message: "YAML: \(problem)") }
            let line = text.utf8.prefix(offset).reduce(1) { $1 == UInt8(ascii: "\n") ? $0 + 1 : $0 }
            return ConfigError(file: file, line: line, message: "YAML: \(problem)")
        default:
            return ConfigError(file: file, message: "YAML: \(error)")
        }
    }

    /// The text's lines as libyaml numbers them, in Unicode scalars (its
    /// columns): a line ends at LF, CR, CRLF, NEL, LS or PS. Splitting the
    /// `String` on "\n" saw a CRLF file as one line, "\r\n" being one
    /// `Character`.
    static func yamlLines(_ text: String) -> [Substring.UnicodeScalarView] {
        let scalars = text.unicodeScalars
        var lines: [Substring.UnicodeScalarView] = []
        var start = scalars.startIndex
        var i = start
        while i < scalars.endIndex {
            let c = scalars[i]
            guard c == "\n" || c == "\r" || c == "\u{85}" || c == "\u{2028}" || c == "\u{2029}" else {
                i = scalars.index(after: i)
                continue
            }
            lines.append(scalars[start..<i])
            i = scalars.index(after: i)
            if c == "\r", i < scalars.endIndex, scalars[i] == "\n" { i = scalars.index(after: i) }
            start = i
        }
        lines.append(scalars[start...])
        return lines
    }
}

/// The keys of one YAML mapping, already checked against the schema.
struct Fields {
    var node: Node
    var values: [String: Node]
    /// What the mapping is, for messages ("listener", "limits").
    var what: String
    /// Prepended to a key in messages, so `connect` reads `timeouts.connect`.
    var prefix: String

    subscript(key: String) -> Node? { values[key] }
}

/// Turns nodes into config values, remembering where each one was written.
/// Only shape and type are checked here; ranges and cross-references are
/// `StickyConfig.validate`'s, which asks `position(of:)` for the lines.
struct NodeReader {
    let file: String
    /// Paths like `pools[0].targets[1].weight`, the same ones `validate` uses.
    var positions: [String: SourcePosition] = [:]

    init(file: String) { self.file = file }

    /// The written node at `path`, or else its nearest written ancestor: a
    /// value left at its default has no node, but its mapping does.
    func position(of path: String) -> SourcePosition? {
        var path = Substring(path)
        while true {
            if let found = positions[String(path)] { return found }
            guard let cut = path.lastIndex(where: { $0 == "." || $0 == "[" }) else { break }
            path = path[..<cut]
        }
        return positions[""]
    }

    mutating func config(_ root: Node) throws -> StickyConfig {
        let top = try fields(
            root, path: "", what: "the top level", prefix: "",
            known: ["engine", "workers", "listeners", "pools", "limits", "timeouts", "connect_retries", "admin", "log",
                    "drain", "state_dir", "takeover_socket", "metrics", "health", "peers", "vip"])
        if let node = top["health"] {
            // Health is per pool: pools differ in what a check means.
            throw failure(node, "'health' is set per pool: move it under pools[].health")
        }

        let listenerNodes = try list(required("listeners", in: top), path: "listeners", name: "listeners")
        var listeners: [(address: SocketAddress, pool: String?, backlog: Int, proxy: ProxyAcceptConfig?)] = []
        for (index, node) in listenerNodes.enumerated() {
            listeners.append(try listener(node, path: "listeners[\(index)]"))
        }

        let poolNodes = try list(required("pools", in: top), path: "pools", name: "pools")
        var pools: [PoolConfig] = []
        for (index, node) in poolNodes.enumerated() {
            pools.append(try pool(node, path: "pools[\(index)]"))
        }

        // An omitted pool stays empty unless it is unambiguous; validate says why.
        let onlyPool = pools.count == 1 ? pools[0].name : ""
        var config = StickyConfig(
            listeners: listeners.map {
                ListenerConfig(address: $0.address, pool: $0.pool ?? onlyPool, backlog: $0.backlog, proxyProtocol: $0.proxy)
            },
            pools: pools)

        if let node = top["engine"] { config.engine = try choice(node, name: "engine") }
        if let node = top["workers"] { config.workers = try int(node, name: "workers") }
        if let node = top["connect_retries"] { config.connectRetries = try int(node, name: "connect_retries") }

        if let node = top["limits"] {
            let limits = try fields(
                node, path: "limits", what: "limits", prefix: "limits.",
                known: ["max_connections", "pipe_pool", "pipe_size", "buffer_count", "buffer_size"])
            if let node = limits["max_connections"] { config.limits.maxConnections = try int(node, name: "limits.max_connections") }
            if let node = limits["pipe_pool"] { config.limits.pipePool = try int(node, name: "limits.pipe_pool") }
            if let node = limits["pipe_size"] { config.limits.pipeSize = try byteSize(node, name: "limits.pipe_size") }
            if let node = limits["buffer_count"] { config.limits.bufferCount = try int(node, name: "limits.buffer_count") }
            if let node = limits["buffer_size"] { config.limits.bufferSize = try byteSize(node, name: "limits.buffer_size") }
        }
        if let node = top["timeouts"] {
            let timeouts = try fields(
                node, path: "timeouts", what: "timeouts", prefix: "timeouts.", known: ["connect", "idle", "shutdown", "connect_budget"])
            if let node = timeouts["connect"] { config.timeouts.connectMs = try duration(node, name: "timeouts.connect") }
            if let node = timeouts["idle"] { config.timeouts.idleMs = try duration(node, name: "timeouts.idle") }
            if let node = timeouts["shutdown"] { config.timeouts.shutdownMs = try duration(node, name: "timeouts.shutdown") }
            if let node = timeouts["connect_budget"] { config.timeouts.connectBudgetMs = try duration(node, name: "timeouts.connect_budget") }
        }
        if let node = top["admin"] {
            let admin = try fields(node, path: "admin", what: "admin", prefix: "admin.", known: ["socket", "allow_uids", "allow_gids", "remote"])
            if let node = admin["socket"] {
                let text = try string(node, name: "admin.socket")
                config.adminSocket = text == "none" ? nil : text
            }
            if let node = admin["allow_uids"] { config.adminAllowUIDs = try ints(node, path: "admin.allow_uids") }
            if let node = admin["allow_gids"] { config.adminAllowGIDs = try ints(node, path: "admin.allow_gids") }
            if let node = admin["remote"] { config.adminRemote = try remoteAdmin(node, path: "admin.remote") }
        }
        if let node = top["drain"] {
            let drain = try fields(node, path: "drain", what: "drain", prefix: "drain.", known: ["mode", "timeout", "grace"])
            if let node = drain["mode"] {
                let text = try string(node, name: "drain.mode")
                guard let mode = DrainMode(rawValue: text) else {
                    throw failure(node, "drain.mode must be strict or sticky, got '\(text)'")
                }
                config.drain.mode = mode
            }
            if let node = drain["timeout"] { config.drain.timeoutMs = try duration(node, name: "drain.timeout") }
            if let node = drain["grace"] { config.drain.graceMs = try duration(node, name: "drain.grace") }
        }
        if let node = top["state_dir"] {
            let text = try string(node, name: "state_dir")
            config.stateDir = text == "none" ? nil : text
        }
        if let node = top["takeover_socket"] {
            let text = try string(node, name: "takeover_socket")
            config.takeoverSocket = text == "none" ? .none : .path(text)
        }
        if let node = top["log"] {
            let log = try fields(node, path: "log", what: "log", prefix: "log.", known: ["level", "format", "access", "access_placement"])
            if let node = log["level"] { config.logLevel = try string(node, name: "log.level") }
            if let node = log["format"] { config.observability.logFormat = try choice(node, name: "log.format") }
            if let node = log["access"] {
                let text = try string(node, name: "log.access")
                guard let destination = AccessLogDestination(text) else {
                    throw failure(node, "log.access must be none, stderr or an absolute file path, got '\(text)'")
                }
                config.observability.accessLog = destination
            }
            if let node = log["access_placement"] {
                config.observability.accessLogPlacement = try bool(node, name: "log.access_placement")
            }
        }
        if let node = top["metrics"] {
            let metrics = try fields(node, path: "metrics", what: "metrics", prefix: "metrics.", known: ["listen"])
            // The section without `listen` serves nothing: off is the default.
            if let node = metrics["listen"] { config.observability.metricsListen = try address(node, name: "metrics.listen") }
        }
        if let node = top["peers"] { config.peers = try peers(node) }
        if let node = top["vip"] {
            let vip = try fields(node, path: "vip", what: "vip", prefix: "vip.", known: ["address", "interface"])
            let addressNode = try required("address", in: vip)
            let text = try string(addressNode, name: "vip.address")
            guard let ip = IPAddress(text) else {
                throw failure(addressNode, "vip.address must be one IPv4 or IPv6 address (it is added as a /32 or /128), got '\(text)'")
            }
            config.vip = VIPConfig(address: ip, interface: try string(required("interface", in: vip), name: "vip.interface"))
        }
        return config
    }

    private mutating func peers(_ node: Node) throws -> PeersConfig {
        let keys = try fields(node, path: "peers", what: "peers", prefix: "peers.",
                              known: ["name", "listen", "members", "sync_timeout", "queue", "tls"])
        let name = try string(required("name", in: keys), name: "peers.name")
        let listen = try address(required("listen", in: keys), name: "peers.listen")
        var members: [PeersConfig.Member] = []
        for (i, m) in try list(required("members", in: keys), path: "peers.members", name: "peers.members").enumerated() {
            let path = "peers.members[\(i)]"
            let f = try fields(m, path: path, what: path, prefix: path + ".", known: ["name", "address"])
            members.append(.init(name: try string(required("name", in: f), name: path + ".name"),
                                 address: try address(required("address", in: f), name: path + ".address")))
        }
        var peers = PeersConfig(name: name, listen: listen, members: members)
        if let n = keys["sync_timeout"] { peers.syncTimeoutMs = try duration(n, name: "peers.sync_timeout") }
        if let n = keys["queue"] { peers.queue = try int(n, name: "peers.queue") }
        if let n = keys["tls"] {
            // All three, or the link would be half-secured: a certificate
            // without a CA cannot verify members.
            let f = try fields(n, path: "peers.tls", what: "peers.tls", prefix: "peers.tls.", known: ["cert", "key", "ca"])
            peers.tls = PeersConfig.TLS(certificate: try string(required("cert", in: f), name: "peers.tls.cert"),
                                        privateKey: try string(required("key", in: f), name: "peers.tls.key"),
                                        ca: try string(required("ca", in: f), name: "peers.tls.ca"))
        }
        return peers
    }

    private mutating func listener(_ node: Node, path: String) throws
        -> (address: SocketAddress, pool: String?, backlog: Int, proxy: ProxyAcceptConfig?) {
        let keys = try fields(node, path: path, what: "listener", prefix: "",
                              known: ["address", "pool", "backlog", "proxy_protocol"])
        let address = try address(required("address", in: keys), name: "address")
        let pool = try keys["pool"].map { try string($0, name: "pool") }
        let backlog = try keys["backlog"].map { try int($0, name: "backlog") } ?? ListenerConfig.defaultBacklog
        let proxy = try keys["proxy_protocol"].map { try proxyAccept($0, path: "\(path).proxy_protocol") }
        return (address, pool, backlog, proxy)
    }

    /// Shapes, types and each network; the count and the timeout's range
    /// are `validate`'s.
    private mutating func proxyAccept(_ node: Node, path: String) throws -> ProxyAcceptConfig {
        let keys = try fields(node, path: path, what: "proxy_protocol", prefix: "proxy_protocol.",
                              known: ["from", "timeout"])
        // Required: a listener that trusts headers must say from whom.
        let fromNodes = try list(required("from", in: keys), path: "\(path).from", name: "proxy_protocol.from")
        var from: [CIDR] = []
        for (index, node) in fromNodes.enumerated() {
            let name = "proxy_protocol.from[\(index)]"
            let text = try scalar(node, name: name, expected: "a network such as 10.0.0.0/8")
            switch CIDR.parse(text) {
            case .success(let network): from.append(network)
            case .failure(let e): throw failure(node, "\(name): \(e)")
            }
        }
        var proxy = ProxyAcceptConfig(from: from)
        if let node = keys["timeout"] { proxy.timeoutMs = try duration(node, name: "proxy_protocol.timeout") }
        return proxy
    }

    private mutating func pool(_ node: Node, path: String) throws -> PoolConfig {
        let keys = try fields(node, path: path, what: "pool", prefix: "",
                              known: ["name", "targets", "affinity", "send_proxy", "health", "protocol", "max_connection_age",
                                      "discovery"])
        let name = try string(required("name", in: keys), name: "name")
        let discovery = try keys["discovery"].map { try self.discovery($0, path: "\(path).discovery") }
        // With discovery the targets come from it; a file may still list some.
        let targetNodes = discovery != nil && keys["targets"] == nil
            ? [] : try list(required("targets", in: keys), path: "\(path).targets", name: "targets")
        var targets: [TargetSpec] = []
        for (index, node) in targetNodes.enumerated() {
            targets.append(try target(node, path: "\(path).targets[\(index)]"))
        }
        var pool = PoolConfig(name: name, targets: targets)
        pool.discovery = discovery
        if let node = keys["affinity"] { pool.affinity = try affinity(node, path: "\(path).affinity") }
        if let node = keys["send_proxy"] {
            // nil, the default, is written `none`.
            let text = try choice(node, name: "send_proxy", among: ["none"] + ProxyVersion.allCases.map(\.rawValue))
            pool.sendProxy = ProxyVersion(rawValue: text)
        }
        if let node = keys["health"] { pool.health = try health(node, path: "\(path).health") }
        if let node = keys["protocol"] { pool.wireProtocol = try choice(node, name: "protocol") }
        if case .kubernetes(var k)? = pool.discovery {
            // An affinity.timeout written in the file wins over the Service's.
            k.affinityFromService = positions["\(path).affinity.timeout"] == nil
            pool.discovery = .kubernetes(k)
        }
        if let node = keys["max_connection_age"] {
            // Whether the pool may have one, and its range, are validate's.
            let text = try scalar(node, name: "max_connection_age", expected: "a duration or off")
            let off = text == "off" || text == "false"
            pool.maxConnectionAgeMs = off ? nil : try duration(node, name: "max_connection_age")
        }
        return pool
    }

    // MARK: Health

    /// Shapes and types only; ranges are `HealthConfig.validate`'s. A
    /// written `health` section means active checks: `type` defaults to tcp.
    private mutating func health(_ node: Node, path: String) throws -> HealthConfig {
        let keys = try fields(node, path: path, what: "health", prefix: "health.",
                              known: ["type", "interval", "timeout", "rise", "fall", "service", "port", "passive",
                                      "revive_after", "damping", "panic_threshold"])
        var h = HealthConfig()
        h.type = .tcp
        if let node = keys["type"] { h.type = try choice(node, name: "health.type") }
        if let node = keys["interval"] { h.intervalMs = try duration(node, name: "health.interval") }
        if let node = keys["timeout"] { h.timeoutMs = try duration(node, name: "health.timeout") }
        if let node = keys["rise"] { h.rise = try int(node, name: "health.rise") }
        if let node = keys["fall"] { h.fall = try int(node, name: "health.fall") }
        if let node = keys["service"] {
            // "" is a meaningful service name (the server as a whole).
            guard case .scalar(let s) = node else { throw failure(node, "health.service must be a string, got \(describe(node))") }
            h.service = s.string
        }
        if let node = keys["port"] { h.port = try int(node, name: "health.port") }
        if let node = keys["passive"] { h.passive = try bool(node, name: "health.passive") }
        if let node = keys["revive_after"] { h.reviveAfterMs = try duration(node, name: "health.revive_after") }
        if let node = keys["panic_threshold"] { h.panicThreshold = try percent(node, name: "health.panic_threshold") }
        if let node = keys["damping"] {
            let d = try fields(node, path: "\(path).damping", what: "health.damping", prefix: "health.damping.",
                               known: ["window", "hold_down", "hold_down_max"])
            if let node = d["window"] { h.damping.windowMs = try duration(node, name: "health.damping.window") }
            if let node = d["hold_down"] {
                // 0 turns damping off.
                let text = try scalar(node, name: "health.damping.hold_down", expected: "a duration")
                h.damping.holdDownMs = text == "0" ? 0 : try duration(node, name: "health.damping.hold_down")
            }
            if let node = d["hold_down_max"] { h.damping.holdDownMaxMs = try duration(node, name: "health.damping.hold_down_max") }
        }
        return h
    }

    private func bool(_ node: Node, name: String) throws -> Bool {
        let text = try scalar(node, name: name, expected: "true or false")
        switch text {
        case "true", "yes", "on": return true
        case "false", "no", "off": return false
        default: throw failure(node, "\(name) must be true or false, got '\(text)'")
        }
    }

    /// Shapes and types only; ranges are `AffinityConfig.validate`'s.
    private mutating func affinity(_ node: Node, path: String) throws -> AffinityConfig {
        let keys = try fields(node, path: path, what: "affinity", prefix: "affinity.",
                              known: ["mode", "timeout", "capacity", "mask_v4", "mask_v6", "balance_factor", "hash_key"])
        var a = AffinityConfig()
        if let node = keys["mode"] {
            let text = try string(node, name: "affinity.mode")
            guard let mode = AffinityConfig.Mode(rawValue: text) else {
                throw failure(node, "affinity.mode must be idle or absolute, got '\(text)'")
            }
            a.mode = mode
        }
        if let node = keys["timeout"] {
            // 0 is meaningful here (affinity only while connected), so
            // accept a bare 0 as well as a duration.
            let text = try scalar(node, name: "affinity.timeout", expected: "a duration")
            if text == "0" { a.timeoutMs = 0 } else { a.timeoutMs = try duration(node, name: "affinity.timeout") }
        }
        if let node = keys["capacity"] { a.capacity = try int(node, name: "affinity.capacity") }
        if let node = keys["mask_v4"] { a.maskV4 = try int(node, name: "affinity.mask_v4") }
        if let node = keys["mask_v6"] { a.maskV6 = try int(node, name: "affinity.mask_v6") }
        if let node = keys["balance_factor"] {
            let text = try scalar(node, name: "affinity.balance_factor", expected: "a number or off")
            if text == "off" || text == "false" {
                a.balanceFactor = nil
            } else {
                guard let c = Double(text) else {
                    throw failure(node, "affinity.balance_factor must be a number such as 1.25, or off, got '\(text)'")
                }
                a.balanceFactor = c
            }
        }
        if let node = keys["hash_key"] {
            let text = try string(node, name: "affinity.hash_key")
            guard let key = SipKey(hex: text) else {
                throw failure(node, "affinity.hash_key must be 32 hex digits, got '\(text)'")
            }
            a.hashKey = key
        }
        return a
    }

    /// Shapes only: the files are read when the daemon starts.
    private mutating func remoteAdmin(_ node: Node, path: String) throws -> RemoteAdminConfig {
        let keys = try fields(node, path: path, what: "admin.remote", prefix: "admin.remote.",
                              known: ["listen", "cert", "key", "client_ca", "allow"])
        let listen = try address(required("listen", in: keys), name: "admin.remote.listen")
        let cert = try string(required("cert", in: keys), name: "admin.remote.cert")
        let key = try string(required("key", in: keys), name: "admin.remote.key")
        let clientCA = try string(required("client_ca", in: keys), name: "admin.remote.client_ca")
        // Required, even though it may be empty: a listener that refuses
        // everyone should be what the file says, not what it forgot.
        let allowNodes = try list(required("allow", in: keys), path: "\(path).allow", name: "admin.remote.allow")
        var allow: [AllowedClient] = []
        for (index, node) in allowNodes.enumerated() {
            let name = "admin.remote.allow[\(index)]"
            let text = try string(node, name: name)
            guard let entry = AllowedClient(text) else {
                throw failure(node, "\(name) must be sha256:<fingerprint> (64 hex digits, colons allowed) or CN=<common name>, got '\(text)'")
            }
            allow.append(entry)
        }
        return RemoteAdminConfig(listen: listen, certificate: cert, privateKey: key, clientCA: clientCA, allow: allow)
    }

    private mutating func ints(_ node: Node, path: String) throws -> [Int] {
        try list(node, path: path, name: path).map { try int($0, name: path) }
    }

    private mutating func target(_ node: Node, path: String) throws -> TargetSpec {
        let keys = try fields(node, path: path, what: "target", prefix: "", known: ["address", "weight", "name"])
        var spec = TargetSpec(address: try address(required("address", in: keys), name: "address"))
        if let node = keys["weight"] { spec.weight = try int(node, name: "weight") }
        if let node = keys["name"] { spec.name = try string(node, name: "name") }
        return spec
    }

    // MARK: Shapes

    /// Checks a mapping's keys against the schema and records where it and
    /// each of its values are.
    mutating func fields(
        _ node: Node, path: String, what: String, prefix: String, known: [String]
    ) throws -> Fields {
        guard case .mapping(let mapping) = node else {
            throw failure(node, "\(what) must be a mapping (keys: \(known.joined(separator: ", "))), got \(describe(node))")
        }
        record(path, node)
        var values: [String: Node] = [:]
        for (keyNode, value) in mapping {
            guard case .scalar(let scalar) = keyNode, !isNull(scalar) else {
                throw failure(keyNode, "keys must be plain words, got \(describe(keyNode))")
            }
            let key = scalar.string
            guard known.contains(key) else {
                let hint = suggestion(for: key, among: known)
                let fallback = hint.isEmpty ? " (known keys: \(known.joined(separator: ", ")))" : hint
                throw failure(keyNode, "unknown key '\(key)' in \(what)\(fallback)")
            }
            values[key] = value
            record(path.isEmpty ? key : "\(path).\(key)", value)
        }
        return Fields(node: node, values: values, what: what, prefix: prefix)
    }

    mutating func list(_ node: Node, path: String, name: String) throws -> [Node] {
        guard case .sequence(let sequence) = node else {
            throw failure(node, "\(name) must be a list, got \(describe(node))")
        }
        for (index, item) in sequence.enumerated() { record("\(path)[\(index)]", item) }
        return Array(sequence)
    }

    func required(_ key: String, in fields: Fields) throws -> Node {
        guard let node = fields[key] else { throw missing(key, in: fields) }
        return node
    }

    /// Reported at the mapping that lacks the key: there is no node for the key itself.
    private func missing(_ key: String, in fields: Fields) -> ConfigError {
        failure(fields.node, "\(fields.what) is missing required key '\(fields.prefix)\(key)'")
    }

    // MARK: Scalars

    func scalar(_ node: Node, name: String, expected: String) throws -> String {
        guard case .scalar(let scalar) = node, !isNull(scalar) else {
            throw failure(node, "\(name) must be \(expected), got \(describe(node))")
        }
        return scalar.string
    }

    func string(_ node: Node, name: String) throws -> String {
        try scalar(node, name: name, expected: "a string")
    }

    /// A word from a fixed set; anything else is refused with the set and
    /// the closest word (`notOneOf`).
    private func choice(_ node: Node, name: String, among words: [String]) throws -> String {
        let text = try string(node, name: name)
        guard words.contains(text) else { throw failure(node, notOneOf(name, text, words)) }
        return text
    }

    /// A case of a string enum, written as its raw value.
    private func choice<E>(_ node: Node, name: String, as _: E.Type = E.self) throws -> E
    where E: RawRepresentable & CaseIterable, E.RawValue == String {
        let text = try choice(node, name: name, among: E.allCases.map(\.rawValue))
        // `choice` just checked that `text` is one of the raw values.
        return E(rawValue: text)!
    }

    func int(_ node: Node, name: String) throws -> Int {
        let text = try scalar(node, name: name, expected: "an integer")
        guard let value = Int(text) else { throw failure(node, "\(name) must be an integer, got '\(text)'") }
        return value
    }

    /// A whole percentage, written `50` or `50%`; the range is the
    /// validator's.
    func percent(_ node: Node, name: String) throws -> Int {
        let text = try scalar(node, name: name, expected: "a percentage")
        let digits = text.hasSuffix("%") ? String(text.dropLast()) : text
        guard let value = Int(digits) else { throw failure(node, "\(name) must be a whole percentage such as 50 or 50%, got '\(text)'") }
        return value
    }

    func address(_ node: Node, name: String) throws -> SocketAddress {
        let text = try scalar(node, name: name, expected: "an address")
        guard let address = SocketAddress(text) else {
            throw failure(node, "\(name) '\(text)' is not an address; \(addressHint)")
        }
        return address
    }

    func duration(_ node: Node, name: String) throws -> Millis {
        let text = try scalar(node, name: name, expected: "a duration")
        guard let value = parseDuration(text) else {
            throw failure(node, "\(name) must be a whole number with a unit (250ms, 5s, 2m, 3h, 1d), got '\(text)'")
        }
        return value
    }

    private func byteSize(_ node: Node, name: String) throws -> Int {
        let text = try scalar(node, name: name, expected: "a size")
        guard let value = parseByteSize(text) else {
            throw failure(node, "\(name) must be a size such as 65536, 64KiB or 1MiB, got '\(text)'")
        }
        return value
    }

    // MARK: Helpers

    mutating func record(_ path: String, _ node: Node) {
        if let mark = node.mark { positions[path] = SourcePosition(line: mark.line, column: mark.column) }
    }

    func failure(_ node: Node, _ message: String) -> ConfigError {
        ConfigError(file: file, line: node.mark?.line, column: node.mark?.column, message: message)
    }

    /// YAML's null: an empty value, `~` or `null`, unless quoted.
    func isNull(_ scalar: Node.Scalar) -> Bool {
        scalar.style == .plain && ["", "~", "null", "Null", "NULL"].contains(scalar.string)
    }

    func describe(_ node: Node) -> String {
        switch node {
        case .mapping: return "a mapping"
        case .sequence: return "a list"
        case .alias: return "an alias"
        case .scalar(let scalar): return isNull(scalar) ? "nothing" : "'\(scalar.string)'"
        }
    }
}
