import ArgumentParser
import Glibc
import Logging
import StickyCore
import StickyControlPlane
import StickyDataPlane

@main
struct StickyD: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stickyd",
        abstract: "A Layer-4 sticky TCP load balancer on io_uring.",
        version: StickyVersion.string,
        subcommands: [Serve.self, CheckConfig.self, VIPReleaseCommand.self],
        defaultSubcommand: Serve.self
    )
}

/// Prints a config error as `file:line:col: message` and exits 1: the form
/// editors and CI logs already know how to jump to.
func fail(_ error: Error) -> ExitCode {
    var stderr = StandardError()
    print("\(error)", to: &stderr)
    return ExitCode(1)
}

struct StandardError: TextOutputStream {
    mutating func write(_ string: String) {
        var s = string
        s.withUTF8 { _ = Glibc.write(2, $0.baseAddress, $0.count) }
    }
}

struct Serve: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Run the daemon (the default).",
        discussion: """
        With --config, the file sets everything and flags override it. Without it,
        --listen and --target give a quick mode: one pool named "default" behind
        every listener.
        """
    )

    @Option(name: .long, help: "Config file (YAML).")
    var config: String?

    @Option(name: .long, help: "Listen address, e.g. 127.0.0.1:7001 or [::1]:7001 (repeatable).")
    var listen: [String] = []

    @Option(name: .long, help: "Target address in the default pool (repeatable).")
    var target: [String] = []

    @Option(name: .long, help: "Forwarding engine: splice or copy.")
    var engine: ForwardingEngine?

    @Option(name: .long, help: "Worker threads (0 = one per CPU).")
    var workers: Int?

    @Option(name: .long, help: "Maximum concurrent connections, over all workers.")
    var maxConnections: Int?

    @Option(name: .long, help: "Close a connection idle this long, e.g. 300s.")
    var idleTimeout: String?

    @Option(name: .long, help: "Give up a backend connect after this long, e.g. 3s.")
    var connectTimeout: String?

    @Option(name: .long, help: "Stop failing a connect over to further targets this long after accept, e.g. 5s.")
    var connectBudget: String?

    // Health: set on every pool (docs/HEALTH.md).
    @Option(name: .long, help: "Health checks on every pool: none, tcp or grpc.")
    var health: String?

    @Option(name: .long, help: "Health check interval, e.g. 2s.")
    var healthInterval: String?

    @Option(name: .long, help: "Health check timeout, e.g. 1s.")
    var healthTimeout: String?

    @Option(name: .long, help: "Successful checks that bring a down target up.")
    var healthRise: Int?

    @Option(name: .long, help: "Failures (checks, and connects with passive detection) that take a target down.")
    var healthFall: Int?

    @Option(name: .long, help: "grpc checks: the service name asked about (default \"\").")
    var healthService: String?

    @Option(name: .long, help: "Passive detection (connect failures count toward fall): on or off.")
    var healthPassive: String?

    @Option(name: .long, help: "Flap damping: the hold-down after a second down in the window, e.g. 2s (0 = off).")
    var healthHoldDown: String?

    @Option(name: .long, help: "Flap damping: the longest hold-down, e.g. 60s.")
    var healthHoldDownMax: String?

    @Option(name: .long, help: "Flap damping: the window downs are counted in, e.g. 60s.")
    var healthWindow: String?

    @Option(name: .long, help: "Without checks: how long a target passive detection took down stays down, e.g. 10s.")
    var healthReviveAfter: String?

    @Option(name: .long, help: "Panic mode: below this percentage of a pool's ready weight healthy, health is ignored (0 = off; default 50).")
    var healthPanicThreshold: Int?

    @Option(name: .long, help: "Admin socket path, or 'none' (default /run/stickyd/admin.sock; none in quick mode).")
    var adminSocket: String?

    @Option(name: .long, help: "Takeover socket path for upgrades, or 'none' (default: the admin socket path with .sock replaced by .takeover.sock).")
    var takeoverSocket: String?

    @Flag(name: .long, help: "Take over from the running stickyd (same config): its listening sockets, targets and affinity, with no connection refused.")
    var takeover = false

    @Option(name: .long, help: "State directory for runtime changes, or 'none' (default /var/lib/stickyd; none in quick mode).")
    var stateDir: String?

    @Option(name: .long, help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: String?

    @Option(name: .long, help: "Serve Prometheus metrics at http://ADDR/metrics, e.g. 127.0.0.1:9900.")
    var metricsListen: String?

    @Option(name: .long, help: "Access log: a file path, 'stderr' or 'none' (default none).")
    var accessLog: String?

    @Option(name: .long, help: "Format of the daemon's own log lines: text (logfmt) or json.")
    var logFormat: LogFormat?
    @Option(name: .long, help: "Require a PROXY header on every listener, from this network, e.g. 10.0.0.0/8 (repeatable).")
    var proxyFrom: [String] = []

    @Option(name: .long, help: "With --proxy-from: how long the whole PROXY header may take, e.g. 3s.")
    var proxyTimeout: String?

    @Option(name: .long, help: "PROXY header written to every pool's targets: v1, v2 or none.")
    var sendProxy: String?

    // `protocol` is a Swift keyword, hence the property's name.
    @Option(name: .customLong("protocol"), help: "What every pool's targets speak: tcp, or h2c (cleartext HTTP/2: a drain ends connections with a GOAWAY).")
    var wireProtocol: PoolProtocol?

    @Option(name: .long, help: ArgumentHelp("io_uring submission queue size (testing).", visibility: .hidden))
    var ringEntries: UInt32 = 1024

    func loadConfig() throws -> StickyConfig {
        var cfg: StickyConfig
        if let path = config {
            cfg = try ConfigLoader.load(path: path)
            if !listen.isEmpty || !target.isEmpty {
                // Without --target only the listeners are taken from `quick`;
                // a discovery pool may list no targets, and quick mode needs one.
                let fileTargets = cfg.pools[0].targets.map { "\($0.address)" }
                let quick = try StickyConfig.quick(listen: listen.isEmpty ? cfg.listeners.map { "\($0.address)" } : listen,
                                                   targets: !target.isEmpty ? target : fileTargets.isEmpty ? ["127.0.0.1:1"] : fileTargets)
                if !listen.isEmpty { cfg.listeners = quick.listeners.map { var l = $0; l.pool = cfg.pools[0].name; return l } }
                if !target.isEmpty { cfg.pools[0].targets = quick.pools[0].targets }
            }
        } else {
            guard !listen.isEmpty, !target.isEmpty else {
                throw ValidationError("give --config FILE, or --listen ADDR and at least one --target ADDR")
            }
            cfg = try StickyConfig.quick(listen: listen, targets: target)
        }
        if let engine { cfg.engine = engine }
        if let workers { cfg.workers = workers }
        if let maxConnections { cfg.limits.maxConnections = maxConnections }
        if let idleTimeout {
            guard let ms = parseDuration(idleTimeout) else { throw ValidationError("--idle-timeout: not a duration: '\(idleTimeout)' (e.g. 500ms, 30s, 5m)") }
            cfg.timeouts.idleMs = ms
        }
        if let connectTimeout {
            guard let ms = parseDuration(connectTimeout) else { throw ValidationError("--connect-timeout: not a duration: '\(connectTimeout)' (e.g. 500ms, 3s)") }
            cfg.timeouts.connectMs = ms
        }
        if let connectBudget { cfg.timeouts.connectBudgetMs = try duration(connectBudget, "--connect-budget") }
        try applyHealthFlags(&cfg)
        if let adminSocket { cfg.adminSocket = adminSocket == "none" ? nil : adminSocket }
        if let takeoverSocket { cfg.takeoverSocket = takeoverSocket == "none" ? .none : .path(takeoverSocket) }
        if let stateDir { cfg.stateDir = stateDir == "none" ? nil : stateDir }
        if let logLevel { cfg.logLevel = logLevel }
        if let metricsListen {
            guard let address = SocketAddress(metricsListen) else {
                throw ConfigError(file: "<command line>", message: "--metrics-listen '\(metricsListen)' is not an address; expected IP:PORT such as 127.0.0.1:9900 or [::1]:9900")
            }
            cfg.observability.metricsListen = address
        }
        if let accessLog {
            guard let destination = AccessLogDestination(accessLog) else {
                throw ConfigError(file: "<command line>", message: "--access-log must be none, stderr or an absolute file path, got '\(accessLog)'")
            }
            cfg.observability.accessLog = destination
        }
        if let logFormat { cfg.observability.logFormat = logFormat }
        if !proxyFrom.isEmpty {
            var from: [CIDR] = []
            for text in proxyFrom {
                switch CIDR.parse(text) {
                case .success(let network): from.append(network)
                case .failure(let e): throw ValidationError("--proxy-from: \(e)")
                }
            }
            for l in cfg.listeners.indices {
                let timeoutMs = cfg.listeners[l].proxyProtocol?.timeoutMs ?? ProxyAcceptConfig.defaultTimeoutMs
                cfg.listeners[l].proxyProtocol = ProxyAcceptConfig(from: from, timeoutMs: timeoutMs)
            }
        }
        if let proxyTimeout {
            guard let ms = parseDuration(proxyTimeout) else { throw ValidationError("--proxy-timeout: not a duration: '\(proxyTimeout)' (e.g. 500ms, 3s)") }
            guard cfg.listeners.contains(where: { $0.proxyProtocol != nil }) else {
                throw ValidationError("--proxy-timeout applies to listeners that take PROXY headers; give --proxy-from too")
            }
            for l in cfg.listeners.indices where cfg.listeners[l].proxyProtocol != nil {
                cfg.listeners[l].proxyProtocol?.timeoutMs = ms
            }
        }
        if let sendProxy {
            guard sendProxy == "none" || ProxyVersion(rawValue: sendProxy) != nil else {
                throw ValidationError("--send-proxy must be v1, v2 or none, got '\(sendProxy)'")
            }
            for p in cfg.pools.indices { cfg.pools[p].sendProxy = ProxyVersion(rawValue: sendProxy) }
        }
        if let wireProtocol {
            for p in cfg.pools.indices { cfg.pools[p].wireProtocol = wireProtocol }
        }
        try cfg.validate(file: config ?? "<command line>")
        return cfg
    }

    func duration(_ text: String, _ flag: String, zeroAllowed: Bool = false) throws -> Millis {
        if zeroAllowed && text == "0" { return 0 }
        guard let ms = parseDuration(text) else { throw ValidationError("\(flag): not a duration: '\(text)' (e.g. 500ms, 2s)") }
        return ms
    }

    /// The --health* flags, applied to every pool; validated with the rest.
    func applyHealthFlags(_ cfg: inout StickyConfig) throws {
        for p in cfg.pools.indices {
            var h = cfg.pools[p].health
            if let health {
                guard let t = HealthCheckType(rawValue: health) else {
                    throw ValidationError("--health: must be none, tcp or grpc, got '\(health)'")
                }
                h.type = t
            }
            if let healthInterval { h.intervalMs = try duration(healthInterval, "--health-interval") }
            if let healthTimeout { h.timeoutMs = try duration(healthTimeout, "--health-timeout") }
            if let healthRise { h.rise = healthRise }
            if let healthFall { h.fall = healthFall }
            if let healthService { h.service = healthService }
            if let healthPassive {
                guard ["on", "off", "true", "false"].contains(healthPassive) else {
                    throw ValidationError("--health-passive: must be on or off, got '\(healthPassive)'")
                }
                h.passive = healthPassive == "on" || healthPassive == "true"
            }
            if let healthHoldDown { h.damping.holdDownMs = try duration(healthHoldDown, "--health-hold-down", zeroAllowed: true) }
            if let healthHoldDownMax { h.damping.holdDownMaxMs = try duration(healthHoldDownMax, "--health-hold-down-max") }
            if let healthWindow { h.damping.windowMs = try duration(healthWindow, "--health-window") }
            if let healthReviveAfter { h.reviveAfterMs = try duration(healthReviveAfter, "--health-revive-after") }
            if let healthPanicThreshold { h.panicThreshold = healthPanicThreshold }
            cfg.pools[p].health = h
        }
    }

    func run() throws {
        let cfg: StickyConfig
        do {
            cfg = try loadConfig()
        } catch let e as ValidationError {
            throw e
        } catch {
            throw fail(error)
        }
        let level = Logger.Level(rawValue: cfg.logLevel) ?? .info
        let format = cfg.observability.logFormat
        let journal = StickyLogHandler.stderrIsJournal()
        LoggingSystem.bootstrap { _ in StickyLogHandler(level: level, format: format, journal: journal) }
        let logger = Logger(label: "stickyd")
        let serve = self
        var reloader: (@Sendable () throws -> StickyConfig)?
        if config != nil {
            reloader = { @Sendable in try serve.loadConfig() }
        }
        let daemon = Daemon(config: cfg, logger: logger, reloader: reloader)
        daemon.ringEntries = ringEntries
        daemon.takeover = takeover
        do {
            let status = try daemon.run()
            if status != 0 { throw ExitCode(status) }
        } catch let e as SystemError {
            logger.critical("cannot start: \(e)")
            throw ExitCode(1)
        } catch let e as ConfigError {
            // A kubeconfig (discovery) that cannot be used: FILE:LINE: why.
            logger.critical("cannot start: \(e)")
            throw ExitCode(1)
        } catch let e as DiscoveryStartError {
            logger.critical("cannot start: \(e)")
            throw ExitCode(1)
        }
    }
}

extension ForwardingEngine: ExpressibleByArgument {}
extension LogFormat: ExpressibleByArgument {}
extension PoolProtocol: ExpressibleByArgument {}

// Parsed once and never mutated: SIGHUP re-reads the config file with the
// same command-line overrides from the main thread.
extension Serve: @unchecked Sendable {}

struct CheckConfig: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check-config",
        abstract: "Validate a config file and exit: 0 if valid, 1 with file:line:col errors if not."
    )

    @Argument(help: "Config file to check.")
    var file: String

    func run() throws {
        do {
            let config = try ConfigLoader.load(path: file)
            // A kubeconfig is a local file: checked here, with its line. No
            // lookup and no request is made (systemctl reload runs this),
            // and in-cluster credentials exist only in the pod.
            _ = try DiscoveryService.credentials(config, inCluster: false)
            print("\(file): OK")
        } catch {
            throw fail(error)
        }
    }
}

struct VIPReleaseCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vip-release",
        abstract: "Remove the config's vip: address from its interface and exit.",
        discussion: """
        The unit's ExecStopPost: systemd runs it after any exit, a crash included,
        so a dead stickyd stops being announced (BIRD's direct protocol sees the
        address go). Exit 0 if the address is gone (or was never there, or the
        config has no vip:), 1 with the reason if it could not be removed.
        """
    )

    @Argument(help: "Config file (the one the daemon runs with).")
    var file: String

    func run() throws {
        let config: StickyConfig
        do {
            config = try ConfigLoader.load(path: file)
        } catch {
            throw fail(error)
        }
        guard let vip = config.vip else {
            print("\(file): no vip: configured; nothing to remove")
            return
        }
        do {
            try VIPRelease.run(vip)
        } catch {
            throw fail(error)
        }
        print("vip \(vip.address) is not on \(vip.interface)")
    }
}
