import ArgumentParser
import Glibc
import Logging
import StickyCore
import StickyIO

@main
struct StickyD: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stickyd",
        abstract: "A Layer-4 sticky TCP load balancer on io_uring.",
        version: "0.1.0",
        subcommands: [Serve.self, CheckConfig.self],
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

    @Option(name: .long, help: "Admin socket path, or 'none' (default /run/stickyd/admin.sock).")
    var adminSocket: String?

    @Option(name: .long, help: "Takeover socket path for upgrades, or 'none' (default: takeover.sock beside the admin socket).")
    var takeoverSocket: String?

    @Flag(name: .long, help: "Take over from the running stickyd (same config): its listening sockets, targets and affinity, with no connection refused.")
    var takeover = false

    @Option(name: .long, help: "State directory for runtime changes, or 'none' (default /var/lib/stickyd).")
    var stateDir: String?

    @Option(name: .long, help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: String?

    @Option(name: .long, help: ArgumentHelp("io_uring submission queue size (testing).", visibility: .hidden))
    var ringEntries: UInt32 = 1024

    func loadConfig() throws -> StickyConfig {
        var cfg: StickyConfig
        if let path = config {
            cfg = try ConfigLoader.load(path: path)
            if !listen.isEmpty || !target.isEmpty {
                let quick = try StickyConfig.quick(listen: listen.isEmpty ? cfg.listeners.map { "\($0.address)" } : listen,
                                                   targets: target.isEmpty ? cfg.pools[0].targets.map { "\($0.address)" } : target)
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
        if let adminSocket { cfg.adminSocket = adminSocket == "none" ? nil : adminSocket }
        if let takeoverSocket { cfg.takeoverSocket = takeoverSocket == "none" ? .none : .path(takeoverSocket) }
        if let stateDir { cfg.stateDir = stateDir == "none" ? nil : stateDir }
        if let logLevel { cfg.logLevel = logLevel }
        try cfg.validate(file: config ?? "<command line>")
        return cfg
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
        LoggingSystem.bootstrap { label in
            var h = StreamLogHandler.standardError(label: label)
            h.logLevel = level
            return h
        }
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
        }
    }
}

extension ForwardingEngine: ExpressibleByArgument {}

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
            _ = try ConfigLoader.load(path: file)
            print("\(file): OK")
        } catch {
            throw fail(error)
        }
    }
}
