import Foundation
import Glibc
import Logging
import Metrics
import Prometheus
import StickyCore
import StickyDataPlane
import Synchronization

/// Runs the workers for one config: binds the listeners, starts one thread
/// (and one ring) per worker, and turns signals into a graceful stop.
public final class Daemon {
    let config: StickyConfig
    let logger: Logger
    /// Test hook: the ring size; tiny rings exercise the full-queue paths.
    public var ringEntries: UInt32 = 1024
    /// Start by taking over from the running daemon (`stickyd --takeover`).
    public var takeover = false
    /// What an upgrade in either direction has done (DaemonTakeover.swift).
    let handoff = HandoffFlags()

    /// Reads the config again for SIGHUP; nil when there is no file
    /// (quick mode), and then SIGHUP only says so.
    let reloader: (@Sendable () throws -> StickyConfig)?

    public init(config: StickyConfig, logger: Logger, reloader: (@Sendable () throws -> StickyConfig)? = nil) {
        self.config = config
        self.logger = logger
        self.reloader = reloader
    }

    public static var processorCount: Int { max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))) }

    public var workerCount: Int { config.workers > 0 ? config.workers : Daemon.processorCount }

    /// Raises the soft descriptor limit to the hard one: each connection
    /// costs two descriptors, and the splice engine's pipes two more each.
    static func raiseDescriptorLimit() -> rlim_t {
        var lim = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &lim) == 0 else { return 0 }
        if lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max
            _ = setrlimit(Int32(RLIMIT_NOFILE.rawValue), &lim)
        }
        return lim.rlim_cur
    }

    /// Binds every listener once per worker, in worker order, so the index
    /// the steering program returns is the worker's index.
    func bindListeners(workers: Int) throws -> [[WorkerSettings.Listener]] {
        var perWorker: [[WorkerSettings.Listener]] = Array(repeating: [], count: workers)
        var opened: [Int32] = []
        do {
            for l in config.listeners {
                guard let pool = config.pools.firstIndex(where: { $0.name == l.pool }) else {
                    preconditionFailure("validated config names an unknown pool")
                }
                for w in 0..<workers {
                    let fd = try Sockets.listener(l.address, backlog: Int32(l.backlog), freebind: config.vip?.address == l.address.ip)
                    opened.append(fd)
                    perWorker[w].append(.init(fd: fd, pool: pool, proxy: l.proxyProtocol))
                    if w == 0 && workers > 1 {
                        // Steer by the pool's affinity key, not the full
                        // address: a masked key (/24) must still land on the
                        // one worker whose shard holds it.
                        let a = config.pools[pool].affinity
                        try Sockets.attachSteering(fd, ipv6: !l.address.ip.isV4,
                                                   prefixLength: l.address.ip.isV4 ? a.maskV4 : a.maskV6, workers: workers)
                    }
                }
            }
        } catch {
            for fd in opened { close(fd) }
            throw error
        }
        return perWorker
    }

    /// Each worker's share of the descriptors not yet in use, less room for
    /// its ring and eventfd, admin sessions and the state file's writes.
    static func descriptorBudget(limit: Int, workers: Int) -> Int {
        let inUse = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd").count) ?? 64
        let reserved = 16 + 4 * workers
        return max(16, (limit - inUse - reserved) / workers)
    }

    var descriptorBudget = 0
    /// The access log every worker writes to; nil when `log.access` is none.
    var accessLog: AccessLogSink?

    func settings(for index: Int, listeners: [WorkerSettings.Listener], workers: Int, pools: [PoolSetup]) -> WorkerSettings {
        var s = WorkerSettings()
        s.index = index
        s.engine = config.engine
        s.listeners = listeners
        s.pools = pools
        // Each worker owns its share; clients are steered by IP, not load.
        s.connectionsMax = max(1, (config.limits.maxConnections + workers - 1) / workers)
        s.pipePoolSize = config.limits.pipePool
        s.pipeSizeBytes = config.limits.pipeSize
        s.bufferCount = config.limits.bufferCount
        s.bufferSizeBytes = config.limits.bufferSize
        s.connectTimeoutMs = config.timeouts.connectMs
        s.idleTimeoutMs = config.timeouts.idleMs
        s.shutdownTimeoutMs = config.timeouts.shutdownMs
        s.connectRetries = config.connectRetries
        s.connectBudgetMs = config.timeouts.connectBudgetMs
        s.ringEntries = ringEntries
        // A successor shares loads even with one worker: the predecessor's
        // connections are added to the shared counts while it finishes them.
        s.sharePoolLoads = workers > 1 || takeover
        s.descriptorBudget = descriptorBudget
        s.acceptQueueMax = config.listeners.map(\.backlog).max() ?? 4096
        s.accessLog = accessLog
        s.accessLogPlacement = config.observability.accessLogPlacement
        s.poolSendProxy = config.pools.map(\.sendProxy)
        return s
    }

    /// Runs until SIGTERM or SIGINT and every worker has stopped.
    /// Returns the process exit status.
    public func run() throws -> Int32 {
        signal(SIGPIPE, SIG_IGN)
        // Block the stop signals before any thread starts, so they are only
        // ever taken by sigwait below, never by a worker mid-operation.
        var signals = sigset_t()
        sigemptyset(&signals)
        for s in [SIGTERM, SIGINT, SIGHUP] { sigaddset(&signals, s) }
        pthread_sigmask(SIG_BLOCK, &signals, nil)

        let fdLimit = Daemon.raiseDescriptorLimit()
        // An upgrade's successor first takes the running daemon's sockets
        // and state; from here until `commit` the old one is not accepting,
        // and any failure (thrown below) rolls it back.
        var successor: (client: TakeoverClient, received: TakeoverReceived)?
        if takeover { successor = try receiveTakeover() }
        do {
            return try serve(fdLimit: fdLimit, successor: successor)
        } catch {
            successor?.client.fail("\(error)")
            throw error
        }
    }

    func serve(fdLimit: rlim_t, successor: (client: TakeoverClient, received: TakeoverReceived)?) throws -> Int32 {
        var signals = sigset_t()
        sigemptyset(&signals)
        for s in [SIGTERM, SIGINT, SIGHUP] { sigaddset(&signals, s) }
        let received = successor?.received
        let workers = received.map { adoptedWorkerCount($0) } ?? workerCount
        // Resolved now, while the path still names this binary.
        let upgrader = Upgrader(arguments: CommandLine.arguments, takeoverConfigured: config.takeoverSocketPath != nil,
                                flags: handoff, logger: logger)
        // First, so that a bad certificate or key stops the start before
        // anything else is bound or written. A successor binds the remote
        // port once the old daemon has let go of it (completeTakeover).
        let remoteTLS = try config.adminRemote.map { try RemoteAdminTLS(config: $0) }
        let peerTLS = try config.peers?.tls.map { try PeerTLS($0) }
        // Kubernetes credentials too: a bad kubeconfig stops the start
        // with its file and line (docs/DISCOVERY.md).
        let kubeAccess = try DiscoveryService.credentials(config)
        let admin = AdminService(logger: logger)
        if successor == nil, let remoteTLS {
            do {
                try admin.listenRemote(remoteTLS)
            } catch {
                admin.stop()
                throw error
            }
        }
        let control = try makeControlPlane(received: received)
        // Built (TLS contexts from the kubeconfigs) before anything is bound.
        let discovery = try DiscoveryService(control: control, access: kubeAccess, logger: logger)
        // Metrics and access log: before any traffic listener, so that an
        // address in use or an unwritable log path stops a clean start. A
        // successor binds the metrics port after the old daemon let go of it.
        let exporter = makeMetricsExporter(control)
        var metrics = successor == nil ? try exporter.map { try startMetrics($0) } : nil
        if config.observability.accessLog != .none { accessLog = try AccessLogSink(config.observability.accessLog) }
        let pools = control.poolSetups(workers: workers)
        let listeners = try received.map { try adoptListeners($0, workers: workers) } ?? bindListeners(workers: workers)
        var takeoverServer: TakeoverServer?
        do {
            if let path = config.adminSocket {
                try admin.listenUnix(path: path, allowedUIDs: Set(config.adminAllowUIDs.map(UInt32.init)),
                                     allowedGIDs: Set(config.adminAllowGIDs.map(UInt32.init)), staged: successor != nil)
            }
            if let path = config.takeoverSocketPath {
                takeoverServer = try TakeoverServer(path: path, staged: successor != nil, logger: logger)
            }
        } catch {
            admin.stop()
            for l in listeners.joined() { close(l.fd) }
            throw error
        }
        let channels = try (0..<workers).map { _ in try WorkerChannel(pinOutbox: config.peers == nil ? 0 : Daemon.pinOutboxSize) }
        control.attach(channels)
        if received != nil { control.publishPanicked() }
        // Before any worker runs: the members' table (their pins arrive
        // as the workers' first commands).
        let peerStart = pullPeerTable(channels: channels, control: control, tls: peerTLS)
        let budget = Daemon.descriptorBudget(limit: Int(fdLimit), workers: workers)
        descriptorBudget = budget
        // Two descriptors per connection; splice pipes (two each) are taken
        // only while bytes are in flight, so they are not counted here.
        if budget * workers < 2 * config.limits.maxConnections {
            logger.warning("RLIMIT_NOFILE allows fewer connections than limits.max_connections; accepting pauses at the descriptor budget",
                           metadata: ["nofile": "\(fdLimit)", "max_connections": "\(config.limits.maxConnections)",
                                      "connections_possible": "\(budget * workers / 2)"])
        }

        let started = Mutex<[Result<Void, SystemError>?]>(Array(repeating: nil, count: workers))
        let finished = Mutex<[WorkerCounters?]>(Array(repeating: nil, count: workers))
        var threads: [Thread] = []
        for w in 0..<workers {
            var s = settings(for: w, listeners: listeners[w], workers: workers, pools: pools)
            if let received {
                s.affinityImport = received.affinity[w]
                s.startHeld = true
            }
            let settings = s
            let logger = self.logger
            let channel = channels[w]
            let t = Thread {
                // The ring is created on the thread that will submit to it:
                // SINGLE_ISSUER binds it to its creator.
                let worker: Worker
                do {
                    worker = try Worker(settings: settings, channel: channel, logger: logger)
                } catch let e as SystemError {
                    started.withLock { $0[w] = .failure(e) }
                    return
                } catch {
                    started.withLock { $0[w] = .failure(SystemError("worker \(w)", errno: EINVAL)) }
                    return
                }
                started.withLock { $0[w] = .success(()) }
                worker.run()
                finished.withLock { $0[w] = worker.counters }
            }
            t.name = "stickyd-w\(w)"
            t.start()
            threads.append(t)
        }

        // Wait (bounded) for every worker to report in.
        var up = false
        for _ in 0..<2000 {
            let snapshot = started.withLock { $0 }
            if snapshot.allSatisfy({ $0 != nil }) {
                for case .failure(let e) in snapshot.compactMap({ $0 }) {
                    for c in channels { c.post(.stop) }
                    admin.stop()
                    takeoverServer?.stop()
                    throw e
                }
                up = true
                break
            }
            usleep(5000)
        }
        guard up else {
            for c in channels { c.post(.stop) }
            admin.stop()
            takeoverServer?.stop()
            throw SystemError("worker start (timed out)", errno: ETIMEDOUT)
        }
        // Both admin listeners answer through one lock: two sessions that
        // change targets at once could publish them to the workers out of order.
        let adminLock = NSLock()
        if let (client, received) = successor {
            try completeTakeover(client, received: received, channels: channels, control: control, admin: admin,
                                 remoteTLS: remoteTLS, takeoverServer: takeoverServer)
            if let exporter {
                metrics = bindAfterHandover("metrics listener") { try startMetrics(exporter) }
            }
            followPredecessorLoads(client, control: control)
        }
        let handoff = self.handoff
        let handoffRefusal = "an upgrade is handing over; try again in a moment"
        let locked: AdminService.Handler = { line, peer in
            adminLock.withLock {
                // A change made while an upgrade hands over would be lost
                // with the snapshot already sent.
                if handoff.inProgress.load(ordering: .acquiring), case .success(let r) = AdminGrammar.parse(line), r.command.mutates {
                    return AdminReply(r.json ? AdminFormat.jsonError(handoffRefusal) : "error: \(handoffRefusal)")
                }
                return control.handle(line, peer)
            }
        }
        // `upgrade` is answered outside the lock: it waits for a hand-over
        // whose `prepare` takes the lock.
        let handler: AdminService.Handler = { line, peer in
            guard case .success(let r) = AdminGrammar.parse(line), case .upgrade(let binary) = r.command else {
                return locked(line, peer)
            }
            if handoff.inProgress.load(ordering: .acquiring) && !upgrader.running.load(ordering: .acquiring) {
                return AdminReply(r.json ? AdminFormat.jsonError(handoffRefusal) : "error: \(handoffRefusal)")
            }
            return upgrader.start(binary: binary, json: r.json)
        }
        // Both transports serve every command, `upgrade` included: its
        // answer is pending until the hand-over is decided.
        admin.start(handler)
        let portsToRelease = metrics
        takeoverServer?.start(takeoverHooks(control: control, channels: channels, listeners: listeners,
                                            workers: workers, adminLock: adminLock, upgrader: upgrader,
                                            releasePorts: {
                                                portsToRelease?.stop()
                                                admin.closeRemoteListener()
                                                admin.handOnPath()
                                            }))
        control.persist()
        // Health: active checks on their own event loop thread, off the rings.
        let prober = HealthProber(logger: logger, plan: { control.probePlan(pool: $0) },
                                  report: { control.probeResult($0, ok: $1, reason: $2) })
        prober.start(pools: control.probedPools)
        control.setTrialRunner { prober.trial($0) }
        // Discovery starts after the workers, so that each change it makes
        // is published to them; a source that does not answer is retried
        // without holding up the start.
        discovery.start()

        let cluster: ClusterRun
        do {
            cluster = try startCluster(peerStart, control: control, channels: channels, tls: peerTLS)
        } catch {
            for c in channels { c.post(.stop) }
            admin.stop()
            prober.stop()
            takeoverServer?.stop()
            throw error
        }
        logger.info("ready", metadata: [
            "listeners": "\(config.listeners.map { "\($0.address)->\($0.pool)" }.joined(separator: ","))",
            "workers": "\(workers)",
            "engine": "\(config.engine.rawValue)",
            "max_connections": "\(config.limits.maxConnections)",
            "nofile": "\(fdLimit)",
            "descriptor_budget_per_worker": "\(descriptorBudget)",
            "takeover_socket": "\(config.takeoverSocketPath ?? "none")",
        ])

        SystemdNotify.send("READY=1\nSTATUS=serving \(config.listeners.count) listener(s) with \(workers) worker(s)\nMAINPID=\(getpid())")

        // The main thread waits for signals, waking every 100 ms to run the
        // control plane's timers (drain deadlines) and the watchdog.
        var tick = timespec(tv_sec: 0, tv_nsec: 100_000_000)
        let watchdogMs = SystemdNotify.watchdogPeriodMs
        var nextWatchdog = ControlPlane.monotonicMs() + (watchdogMs ?? 0)
        var lastBeats = channels.map { $0.heartbeat.load(ordering: .relaxed) }
        while true {
            let caught = sigtimedwait(&signals, nil, &tick)
            if caught < 0 {
                if handoff.handedOver.load(ordering: .acquiring) {
                    logger.notice("stopping after the upgrade: no new connections; open ones may finish",
                                  metadata: ["successor_pid": "\(handoff.successorPid.load(ordering: .relaxed))",
                                             "deadline_ms": "\(config.timeouts.shutdownMs)"])
                    break
                }
                control.tick()
                if let period = watchdogMs, ControlPlane.monotonicMs() >= nextWatchdog {
                    // Pet the watchdog only while every worker's loop is
                    // turning (each ticks at least once a second): a stuck
                    // ring must get the restart systemd would give it.
                    let beats = channels.map { $0.heartbeat.load(ordering: .relaxed) }
                    if zip(beats, lastBeats).allSatisfy({ $0 != $1 }) {
                        SystemdNotify.send("WATCHDOG=1")
                        lastBeats = beats
                    } else {
                        logger.warning("watchdog not renewed: a worker's loop has not ticked since the last period")
                    }
                    nextWatchdog = ControlPlane.monotonicMs() + period
                }
                continue
            }
            if caught == SIGHUP {
                reload(control, adminLock)
                reopenAccessLog()
                continue
            }
            logger.notice("stopping: no new connections; open ones may finish",
                          metadata: ["signal": "\(caught)", "deadline_ms": "\(config.timeouts.shutdownMs)"])
            break
        }
        // First: a hand-over in progress ends (committed or rolled back)
        // before the listeners close; only then is it known whether one did.
        takeoverServer?.stop()
        let handedOver = handoff.handedOver.load(ordering: .acquiring)
        // After an upgrade the successor is the service: telling systemd
        // this process is stopping would stop the unit.
        if !handedOver { SystemdNotify.send("STOPPING=1") }
        // The VIP goes first, so the router stops sending new flows here
        // while the open connections finish.
        cluster.stop(handedOver: handedOver)
        admin.stop()
        prober.stop()
        discovery.stop()
        // The successor serves metrics now and needs the port; a plain stop
        // keeps them up while connections drain, to watch them go.
        if handedOver {
            metrics?.stop()
            metrics = nil
        }
        for c in channels { c.post(.stop) }
        // Join: poll the finished flags; a worker stops by its deadline.
        // Drain deadlines keep running meanwhile (strict drains still cut
        // their connections on time).
        var nextTick = ControlPlane.monotonicMs() + 100
        // After an upgrade the successor counts our open connections in
        // its bounded load until we exit (ControlPlane+Predecessor.swift).
        var loadsFeed = handedOver ? takeoverServer?.takeHandedChannel() : nil
        // The first after a fresh round of reports: the latest may be a
        // tick old, and the successor logs the first figure.
        if loadsFeed != nil { for c in channels { c.post(.report(nil, entries: false, request: 0)) } }
        var nextLoads = ControlPlane.monotonicMs() + TakeoverLimits.loadsEveryMs
        while finished.withLock({ $0.contains { $0 == nil } }) {
            usleep(10_000)
            if ControlPlane.monotonicMs() >= nextTick {
                control.tick()
                nextTick += 100
            }
            if let feed = loadsFeed, ControlPlane.monotonicMs() >= nextLoads {
                if !feedLoads(feed, control: control) { loadsFeed = nil }
                nextLoads += TakeoverLimits.loadsEveryMs
            }
        }
        metrics?.stop()
        var total = WorkerCounters()
        for counters in finished.withLock({ $0.compactMap { $0 } }) { total.add(counters) }
        logger.info("stopped", metadata: [
            "accepted": "\(total[.accepted])",
            "bytes_up": "\(total[.bytesUp])",
            "bytes_down": "\(total[.bytesDown])",
            "connect_errors": "\(total[.connectErrors])",
        ])
        _ = threads
        return 0
    }

    // MARK: - Metrics and access log

    /// Serves /metrics when `metrics.listen` is set. swift-metrics is
    /// bootstrapped onto the same registry, so anything recorded through
    /// its API shows up on the endpoint too.
    /// The exporter behind `metrics.listen`, nil when metrics are off.
    /// swift-metrics takes one bootstrap per process, so this runs once;
    /// binding (`startMetrics`) may be retried.
    func makeMetricsExporter(_ control: ControlPlane) -> MetricsExporter? {
        guard config.observability.metricsListen != nil else { return nil }
        let registry = PrometheusCollectorRegistry()
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
        return MetricsExporter(control: control, registry: registry)
    }

    func startMetrics(_ exporter: MetricsExporter) throws -> MetricsServer {
        guard let listen = config.observability.metricsListen else {
            preconditionFailure("an exporter is made only when metrics.listen is set")
        }
        return try MetricsServer(listen: listen, exporter: exporter, logger: logger)
    }

    /// SIGHUP also reopens the access log file: logrotate has moved it.
    func reopenAccessLog() {
        guard let log = accessLog, case .file(let path) = log.destination else { return }
        do {
            try log.reopen()
            logger.info("access log reopened", metadata: ["path": "\(path)"])
        } catch {
            logger.error("access log not reopened; lines still go to the old file", metadata: ["error": "\(error)"])
        }
    }

    /// SIGHUP: read the config again and apply what can change at runtime.
    /// A config that does not load, or that the registry refuses, is logged
    /// and the running one stays.
    func reload(_ control: ControlPlane, _ lock: NSLock) {
        guard let reloader else {
            logger.notice("SIGHUP: no config file (quick mode); nothing to reload")
            return
        }
        // The registry was already sent to a successor: a change now would
        // be lost when it commits (admin changes are refused likewise).
        if handoff.inProgress.load(ordering: .acquiring) {
            logger.error("reload refused: an upgrade is handing over; reload the successor once it has taken over")
            return
        }
        SystemdNotify.send("RELOADING=1")
        defer { SystemdNotify.send("READY=1") }
        let new: StickyConfig
        do {
            new = try reloader()
        } catch {
            logger.error("reload refused; the running configuration stays", metadata: ["error": "\(error)"])
            return
        }
        switch lock.withLock({ control.reload(new) }) {
        case .success(let summary):
            logger.notice("reloaded", metadata: ["changes": "\(summary)"])
        case .failure(let e):
            logger.error("reload refused; the running configuration stays", metadata: ["error": "\(e)"])
        }
    }

    /// The state file's bytes; nil only when there is none (ENOENT). Any
    /// other failure stops the start: running on the config alone would
    /// overwrite the runtime changes the file holds.
    static func readStateFile(_ path: String) throws -> Data? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        if fd < 0 {
            if errno == ENOENT { return nil }
            throw SystemError("cannot read state file \(path); fix its permissions or move it aside (the config alone is then used)", errno: errno)
        }
        defer { close(fd) }
        var data = Data()
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n == 0 { return data }
            if n < 0 {
                if errno == EINTR { continue }
                throw SystemError("cannot read state file \(path)", errno: errno)
            }
            data.append(contentsOf: chunk[0..<n])
            guard data.count <= 64 << 20 else {
                throw SystemError("state file \(path) is larger than 64 MiB; not a stickyd state file", errno: EFBIG)
            }
        }
    }

    /// Builds the registry from the config and the state file, and settles
    /// the hash key: configured, else kept in the state file, else new.
    func makeControlPlane(received: TakeoverReceived? = nil) throws -> ControlPlane {
        var registry = TargetRegistry(config: config)
        var key: SipKey?
        var generated = false
        var statePath: String?
        if let dir = config.stateDir {
            statePath = dir + "/state.json"
            do {
                try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true,
                                                        attributes: [.posixPermissions: 0o700])
            } catch {
                throw SystemError("state_dir \(dir): \(error)", errno: EACCES)
            }
            if received == nil, let data = try Daemon.readStateFile(statePath!) {
                let file: StateFile
                do {
                    file = try StateFile.decode(data, file: statePath!)
                } catch {
                    // Refuse to start rather than run on the config alone and
                    // overwrite what the operator changed at runtime.
                    throw SystemError("\(error); fix or move it aside (the config alone is then used)", errno: EINVAL)
                }
                let (merged, warnings) = file.overlay(on: registry, nowMs: ControlPlane.monotonicMs(), nowUnixMs: ControlPlane.unixMs())
                registry = merged
                for w in warnings { logger.warning("\(w)") }
                if let hex = file.hashKey { key = SipKey(hex: hex) }
                logger.info("state file applied", metadata: ["path": "\(statePath!)"])
            }
        }
        if let received {
            // The running daemon's registry is newer than its state file
            // could be; it is laid over the config the same way.
            let (merged, warnings) = received.state.registry.overlay(on: registry, nowMs: ControlPlane.monotonicMs(),
                                                                      nowUnixMs: ControlPlane.unixMs())
            registry = merged
            for w in warnings { logger.warning("upgrade: \(w)") }
            key = SipKey(hex: received.state.hashKey)
        }
        if key == nil {
            key = SipKey.random()
            generated = true
        } else {
            generated = true
        }
        if config.pools.allSatisfy({ $0.affinity.hashKey != nil }) { generated = false }
        let control = ControlPlane(config: config, registry: registry, hashKey: key!, generatedKey: generated,
                                   stateFilePath: statePath, logger: logger)
        // Health too: a restart measures it afresh, an upgrade must not
        // put a dead target back in service for its first failures.
        if let received { control.restoreHealth(received.state.health ?? []) }
        return control
    }
}
