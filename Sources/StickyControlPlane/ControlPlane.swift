import Foundation
import Glibc
import Logging
import StickyCore
import StickyDataPlane
import Synchronization

/// The control plane: owns the target registry, answers admin commands,
/// tells the workers what changed, persists runtime state, and runs drain
/// deadlines. It never touches a connection itself; workers do, on their
/// own threads, when told through their channels.
public final class ControlPlane: Sendable {
    struct State {
        var registry: TargetRegistry
        /// Last data-path figures, refreshed by `collect`.
        var lastPersistError: String?
        /// Health checks and passive detection (Health/ControlPlane+Health.swift).
        var health: HealthState
    }

    let config: StickyConfig
    let hashKey: SipKey
    /// Generated (not configured) hash key, kept in the state file.
    let generatedKey: Bool
    let stateFilePath: String?
    let logger: Logger
    let state: Mutex<State>
    let channels: Mutex<[WorkerChannel]>
    let startedWallSec: Int
    let startedMs: Millis
    /// Off while an upgrade hands over and after it did: the successor
    /// owns the state file from then on, and two writers would race.
    let persisting = Atomic<Bool>(true)
    /// Ids for `collect`'s report requests (0 means none).
    let nextRequest = Atomic<UInt64>(0)
    /// Held over a whole state-file write (`persist`).
    let persistLock = NSLock()

    public init(config: StickyConfig, registry: TargetRegistry, hashKey: SipKey, generatedKey: Bool,
                stateFilePath: String?, logger: Logger) {
        self.config = config
        self.hashKey = hashKey
        self.generatedKey = generatedKey
        self.stateFilePath = stateFilePath
        self.logger = logger
        var r = registry
        r.drainModeDefault = config.drain.mode
        r.drainTimeoutMsDefault = config.drain.timeoutMs
        state = Mutex(State(registry: r, health: HealthState(config: config, registry: r)))
        channels = Mutex([])
        startedWallSec = time(nil)
        startedMs = ControlPlane.monotonicMs()
    }

    public static func monotonicMs() -> Millis {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC_COARSE, &ts)
        return Millis(ts.tv_sec) * 1000 + Millis(ts.tv_nsec / 1_000_000)
    }

    static func unixMs() -> Int64 {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Int64(ts.tv_sec) * 1000 + Int64(ts.tv_nsec / 1_000_000)
    }

    public func attach(_ workerChannels: [WorkerChannel]) {
        channels.withLock { $0 = workerChannels }
    }

    var registry: TargetRegistry { state.withLock { $0.registry } }

    /// The registry and the health book read together, so a scrape never
    /// pairs one moment's targets with another's health.
    var registryAndHealth: (registry: TargetRegistry, health: HealthBook) {
        state.withLock { ($0.registry, $0.health.book) }
    }

    /// The affinity settings each worker gets for pool `p`.
    func affinity(pool p: Int, workers: Int) -> AffinityConfig {
        var a = config.pools[p].affinity.perWorker(workers)
        if a.hashKey == nil { a.hashKey = hashKey }
        return a
    }

    /// What every worker starts with: the registry (config plus state file)
    /// with one Maglev table per pool, built here once.
    public func poolSetups(workers: Int) -> [PoolSetup] {
        let r = registry
        return r.pools.indices.map { p in
            let a = affinity(pool: p, workers: workers)
            let specs = r.pools[p].targets.map(\.spec)
            let states = state.withLock { ControlPlane.effectiveStates(r, pool: p, $0.health) }
            return PoolSetup(name: r.pools[p].name, targets: specs, states: states,
                             affinity: a, maglev: MaglevTable(targets: specs, key: a.hashKey!), sharedLoads: SharedLoads())
        }
    }

    func broadcast(_ command: WorkerCommand) {
        for c in channels.withLock({ $0 }) { c.post(command) }
    }

    /// Tells the workers about a change the registry accepted.
    func publish(_ change: RegistryChange, _ r: TargetRegistry) {
        switch change {
        case .targets(let p):
            let key = config.pools[p].affinity.hashKey ?? hashKey
            // Everything from the registry as it is now, under the lock, and
            // sent under it: a publisher holding an older snapshot (the tick,
            // a reload) must not overwrite a newer change an admin session
            // already published. States are the effective ones (health
            // combined with the operator's). Maglev is built once, off the
            // data path, and shared by every worker.
            state.withLock { s in
                s.health.book.sync(s.registry)
                let specs = s.registry.pools[p].targets.map(\.spec)
                let maglev = MaglevTable(targets: specs, key: key)
                broadcast(.setTargets(pool: p, targets: specs, states: ControlPlane.effectiveStates(s.registry, pool: p, s.health),
                                      maglev: maglev))
            }
        case .state(let p, let address, _):
            state.withLock { s in
                guard let record = s.registry.pools[p].targets.first(where: { $0.spec.address == address }) else { return }
                broadcast(.setState(pool: p, address: address, state: s.health.book.effectiveState(pool: p, record: record)))
            }
        }
    }

    // MARK: - Reports

    /// Asks every worker for a fresh report and waits (bounded) for them.
    /// Each caller gets the answers to its own request: `show affinity`, a
    /// metrics scrape and the health tick may ask at the same time, with
    /// different queries. A worker that does not answer in time is
    /// represented by its latest periodic report.
    public func collect(_ query: PinQuery? = nil, entries: Bool = false, timeoutMs: Int = 2000) -> [WorkerReport] {
        let chans = channels.withLock { $0 }
        let request = nextRequest.add(1, ordering: .relaxed).newValue
        for c in chans { c.post(.report(query, entries: entries, request: request)) }
        var out: [WorkerReport?] = Array(repeating: nil, count: chans.count)
        let deadline = ControlPlane.monotonicMs() + Millis(timeoutMs)
        while true {
            for (w, c) in chans.enumerated() where out[w] == nil { out[w] = c.takeAnswer(request) }
            if !out.contains(where: { $0 == nil }) || ControlPlane.monotonicMs() >= deadline { break }
            usleep(1000)
        }
        return zip(out, chans).map { $0 ?? $1.report }
    }

    /// Per pool and target address: loads summed over the workers.
    static func loads(_ reports: [WorkerReport]) -> [Int: [SocketAddress: TargetLoad]] {
        var out: [Int: [SocketAddress: TargetLoad]] = [:]
        for r in reports {
            for (p, pool) in r.pools.enumerated() {
                for t in pool.targets {
                    var sum = out[p, default: [:]][t.address] ?? TargetLoad(address: t.address)
                    sum.connections += t.connections
                    sum.affinityEntries += t.affinityEntries
                    sum.bytesUp &+= t.bytesUp
                    sum.bytesDown &+= t.bytesDown
                    sum.connectionsTotal &+= t.connectionsTotal
                    sum.connectFailures &+= t.connectFailures
                    out[p, default: [:]][t.address] = sum
                }
            }
        }
        return out
    }

    // MARK: - Drain deadlines

    /// Called periodically: drains whose deadline passed get their
    /// remaining connections closed (FIN now, reset after the grace).
    public func tick() {
        let now = ControlPlane.monotonicMs()
        let expired = state.withLock { $0.registry.expireDrains(now: now) }
        for (p, address) in expired {
            logger.notice("drain deadline reached; closing remaining connections",
                          metadata: ["target": "\(address)", "grace_ms": "\(config.drain.graceMs)"])
            broadcast(.closeTarget(pool: p, address: address, graceMs: config.drain.graceMs))
        }
        // Targets a reload dropped leave once their cut connections are gone.
        let (removed, r) = state.withLock { s in
            (s.registry.removeExpiredReloadDrains(now: now, graceMs: config.drain.graceMs), s.registry)
        }
        for p in removed { publish(.targets(pool: p), r) }
        if !expired.isEmpty || !removed.isEmpty { persist() }
        healthTick(now: now)
    }

    // MARK: - Reload

    /// Applies a reloaded config: target membership and weights (see
    /// `TargetRegistry.reload`) and timeouts. What needs a restart
    /// (listeners, pools, engine, workers, limits) is reported, not applied.
    public func reload(_ new: StickyConfig) -> Result<String, RegistryError> {
        let now = ControlPlane.monotonicMs()
        let outcome = state.withLock { s -> (Result<ReloadPlan, RegistryError>, TargetRegistry) in
            (s.registry.reload(new, now: now), s.registry)
        }
        guard case .success(let plan) = outcome.0 else { return outcome.0.map { _ in "" } }
        for change in plan.changes { publish(change, outcome.1) }
        // max_connections: each worker's share, within the slots it made
        // at start; connect_retries as is.
        let workers = max(1, channels.withLock { $0.count })
        let startShare = (config.limits.maxConnections + workers - 1) / workers
        let share = min((new.limits.maxConnections + workers - 1) / workers, startShare)
        broadcast(.setLimits(connectionsMax: share, connectRetries: new.connectRetries))
        broadcast(.setTimeouts(connectMs: new.timeouts.connectMs, idleMs: new.timeouts.idleMs,
                               shutdownMs: new.timeouts.shutdownMs, connectBudgetMs: new.timeouts.connectBudgetMs))
        persist()
        var ignored: [String] = []
        if new.listeners != config.listeners { ignored.append("listeners") }
        if new.engine != config.engine { ignored.append("engine") }
        if new.workers != config.workers { ignored.append("workers") }
        var fixedLimits = new.limits
        fixedLimits.maxConnections = config.limits.maxConnections
        if fixedLimits != config.limits { ignored.append("limits other than max_connections") }
        if new.limits.maxConnections > config.limits.maxConnections {
            ignored.append("max_connections above \(config.limits.maxConnections), the value at start")
        }
        if new.pools.map(\.affinity) != config.pools.map(\.affinity) { ignored.append("affinity") }
        if new.logLevel != config.logLevel || new.observability != config.observability { ignored.append("log, metrics") }
        if new.pools.map(\.sendProxy) != config.pools.map(\.sendProxy) { ignored.append("send_proxy") }
        if new.pools.map(\.health) != config.pools.map(\.health) { ignored.append("health") }
        var summary = "added \(plan.added.count), draining \(plan.draining.count), reweighted \(plan.reweighted.count); timeouts, max_connections and connect_retries applied"
        if !ignored.isEmpty { summary += "; needs a restart to change: \(ignored.joined(separator: ", "))" }
        return .success(summary)
    }

    // MARK: - Persistence

    /// Writes the state file atomically: a temporary file, fsync, rename,
    /// then fsync of the directory so the rename itself survives a crash.
    func persist() {
        guard let path = stateFilePath else { return }
        // One writer at a time (admin, tick and takeover threads all
        // persist): they share the temporary file, and renames landing out
        // of order would leave an older registry in place.
        persistLock.lock()
        defer { persistLock.unlock() }
        guard persisting.load(ordering: .acquiring) else { return }
        let r = registry
        let file = StateFile(registry: r, hashKey: generatedKey ? hashKey.hex : nil,
                             nowMs: ControlPlane.monotonicMs(), nowUnixMs: ControlPlane.unixMs())
        do {
            try ControlPlane.writeAtomically(try file.encoded(), to: path)
            state.withLock { $0.lastPersistError = nil }
        } catch {
            logger.error("could not write the state file; runtime changes will not survive a restart",
                         metadata: ["path": "\(path)", "error": "\(error)"])
            state.withLock { $0.lastPersistError = "\(error)" }
        }
    }

    /// Upgrade: stop (or resume) writing the state file.
    /// Under the persist lock: once it returns, no write is in flight.
    func setPersisting(_ on: Bool) { persistLock.withLock { persisting.store(on, ordering: .releasing) } }

    public static func writeAtomically(_ data: Data, to path: String) throws {
        let tmp = path + ".tmp"
        let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw SystemError("open(\(tmp))", errno: errno) }
        var ok = true
        var err: Int32 = 0
        data.withUnsafeBytes { raw in
            var off = 0
            while off < raw.count {
                let n = write(fd, raw.baseAddress! + off, raw.count - off)
                if n < 0 {
                    if errno == EINTR { continue }
                    ok = false
                    err = errno
                    return
                }
                off += n
            }
        }
        if ok && fsync(fd) != 0 {
            ok = false
            err = errno
        }
        close(fd)
        guard ok else {
            unlink(tmp)
            throw SystemError("write(\(tmp))", errno: err)
        }
        guard rename(tmp, path) == 0 else {
            let e = errno
            unlink(tmp)
            throw SystemError("rename(\(tmp), \(path))", errno: e)
        }
        let dir = (path as NSString).deletingLastPathComponent
        let dfd = open(dir.isEmpty ? "." : dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if dfd >= 0 {
            fsync(dfd)
            close(dfd)
        }
    }

    // MARK: - Admin commands

    /// Answers one admin line. Never throws: every failure is an error line
    /// (or JSON object) and the session goes on.
    public func handle(_ line: Substring, _ peer: PeerCredentials) -> AdminReply {
        let request: AdminRequest
        switch AdminGrammar.parse(line) {
        case .success(let r): request = r
        case .failure(let e):
            let json = line.split(separator: " ").first == "json"
            return AdminReply(json ? AdminFormat.jsonError(e.message) : "error: \(e.message)")
        }
        let result = execute(request.command)
        switch result {
        case .success(let answer):
            return AdminReply(request.json ? answer.json : answer.text, close: request.command == .quit)
        case .failure(let e):
            return AdminReply(request.json ? AdminFormat.jsonError(e.message) : "error: \(e.message)")
        }
    }

    func execute(_ command: AdminCommand) -> Result<AdminAnswer, RegistryError> {
        let now = ControlPlane.monotonicMs()
        switch command {
        case .help:
            return .success(AdminAnswer(text: AdminGrammar.synopsis.joined(separator: "\n"),
                                        json: AdminFormat.json(["commands": AdminGrammar.synopsis])))
        case .quit:
            return .success(AdminAnswer(text: "bye", json: AdminFormat.json(["result": "bye"])))
        case .upgrade:
            // The daemon answers it before the lock (DaemonUpgrade.swift):
            // it waits for a hand-over that itself needs the lock.
            return .failure(RegistryError("upgrade is not available on this listener"))
        case .showInfo:
            return .success(info(now: now))
        case .showStats:
            return .success(stats())
        case .showTargets(let pool):
            let r = registry
            return r.poolIndex(pool).map { _ in targets(r, pool: pool, now: now) }.flatMapError { e in
                pool == nil && r.pools.count > 1 ? .success(targets(r, pool: nil, now: now)) : .failure(e)
            }
        case .showAffinity(let pool, let client, let limit):
            let r = registry
            return ControlPlane.poolFilter(r, pool).map { pi in
                affinity(r, pool: pi, client: client, limit: limit ?? 100, now: now)
            }
        case .clearAffinity(let pool, let scope):
            return ControlPlane.poolFilter(registry, pool).map { pi in
                broadcast(.clearAffinity(pool: pi, scope: scope))
                return .ok("affinity cleared (entries with open connections stay until they close)")
            }
        case .addTarget(let pool, let address, let weight, let name):
            return mutate { $0.add(pool: pool, address: address, weight: weight, name: name) }
                .map { _ in .ok("added \(address)") }
        case .setWeight(let pool, let address, let weight):
            return mutate { $0.setWeight(pool: pool, address: address, weight: weight) }
                .map { _ in .ok("weight of \(address) set to \(weight)") }
        case .drain(let pool, let address, let mode, let timeoutMs):
            return mutate { $0.drain(pool: pool, address: address, mode: mode, timeoutMs: timeoutMs, now: now) }
                .map { _ in
                    let m = mode ?? config.drain.mode
                    let t = timeoutMs ?? config.drain.timeoutMs
                    return .ok("draining \(address) (mode \(m.rawValue), deadline in \(formatDuration(t)))")
                }
        case .ready(let pool, let address):
            return mutate { $0.setState(pool: pool, address: address, .ready) }.map { _ in .ok("\(address) is ready") }
        case .maint(let pool, let address):
            return mutate { $0.setState(pool: pool, address: address, .maint) }.map { _ in .ok("\(address) is in maintenance") }
        case .remove(let pool, let address, let force):
            let p: Int
            switch registry.locate(pool, address) {
            case .success(let found): p = found.0
            case .failure(let e): return .failure(e)
            }
            let open = ControlPlane.loads(collect())[p]?[address]?.connections ?? 0
            return mutate { $0.remove(pool: pool, address: address, force: force, openConnections: open) }
                .map { _ in
                    if force && open > 0 {
                        broadcast(.closeTarget(pool: p, address: address, graceMs: 0))
                        return .ok("removed \(address); \(open) connection(s) reset")
                    }
                    return .ok("removed \(address)")
                }
        }
    }

    /// A command's optional pool: nil means every pool; a name must exist.
    static func poolFilter(_ r: TargetRegistry, _ pool: String?) -> Result<Int?, RegistryError> {
        guard pool != nil else { return .success(nil) }
        return r.poolIndex(pool).map { Optional($0) }
    }

    /// Applies a registry change under the lock, then publishes and
    /// persists it (outside the lock: workers and disks can be slow).
    func mutate(_ body: (inout TargetRegistry) -> Result<RegistryChange, RegistryError>) -> Result<RegistryChange, RegistryError> {
        let outcome = state.withLock { s -> (Result<RegistryChange, RegistryError>, TargetRegistry) in
            (body(&s.registry), s.registry)
        }
        if case .success(let change) = outcome.0 {
            publish(change, outcome.1)
            persist()
        }
        return outcome.0
    }

    // MARK: - Answers

    func info(now: Millis) -> AdminAnswer {
        let r = registry
        let reports = collect()
        let active = reports.reduce(0) { $0 + $1.counters.active }
        let accepted = reports.reduce(UInt64(0)) { $0 + $1.counters.accepted }
        let persistError = state.withLock { $0.lastPersistError }
        let fields: [(String, String)] = [
            ("version", StickyVersion.string),
            ("pid", "\(getpid())"),
            ("uptime_s", "\((now - startedMs) / 1000)"),
            ("workers", "\(reports.count)"),
            ("engine", config.engine.rawValue),
            ("pools", "\(r.pools.count)"),
            ("targets", "\(r.pools.reduce(0) { $0 + $1.targets.count })"),
            ("connections_active", "\(active)"),
            ("connections_accepted", "\(accepted)"),
            ("max_connections", "\(config.limits.maxConnections)"),
            ("state_file", stateFilePath ?? "none"),
            ("state_file_error", persistError ?? "none"),
        ]
        return AdminAnswer(text: fields.map { "\($0.0): \($0.1)" }.joined(separator: "\n"),
                           json: AdminFormat.json(Dictionary(uniqueKeysWithValues: fields)))
    }

    func stats() -> AdminAnswer {
        let reports = collect()
        var c = WorkerCounters()
        for r in reports {
            let w = r.counters
            c.accepted += w.accepted
            c.active += w.active
            c.rejectedFull += w.rejectedFull
            c.acceptErrors += w.acceptErrors
            c.acceptPauses += w.acceptPauses
            c.descriptorExhaustion += w.descriptorExhaustion
            c.connectErrors += w.connectErrors
            c.connectTimeouts += w.connectTimeouts
            c.connectRetries += w.connectRetries
            c.bytesUp += w.bytesUp
            c.bytesDown += w.bytesDown
            c.pipeWaits += w.pipeWaits
            c.bufferStarvations += w.bufferStarvations
            c.drainCuts += w.drainCuts
            c.proxyHeadersReceived += w.proxyHeadersReceived
            c.proxyHeadersSent += w.proxyHeadersSent
            c.proxySendFailures += w.proxySendFailures
            for k in c.proxyRejected.indices { c.proxyRejected[k] += w.proxyRejected[k] }
            for k in c.closed.indices { c.closed[k] += w.closed[k] }
        }
        var a = AffinityCounters()
        for r in reports {
            for p in r.pools {
                a.hits += p.affinity.hits
                a.misses += p.affinity.misses
                a.spills += p.affinity.spills
                a.expirations += p.affinity.expirations
                a.evictions += p.affinity.evictions
                a.unrecorded += p.affinity.unrecorded
                a.noTarget += p.affinity.noTarget
                a.size += p.affinity.size
                for reason in MoveReason.allCases { a.moves[reason] += p.affinity.moves[reason] }
            }
        }
        var fields: [(String, UInt64)] = [
            ("connections_accepted", c.accepted), ("connections_active", UInt64(c.active)),
            ("connections_rejected_full", c.rejectedFull), ("accept_errors", c.acceptErrors),
            ("accept_pauses", c.acceptPauses), ("descriptor_exhaustion", c.descriptorExhaustion),
            ("connect_errors", c.connectErrors), ("connect_timeouts", c.connectTimeouts),
            ("connect_retries", c.connectRetries), ("bytes_client_to_target", c.bytesUp),
            ("bytes_target_to_client", c.bytesDown), ("pipe_waits", c.pipeWaits),
            ("buffer_starvations", c.bufferStarvations), ("drain_deadline_cuts", c.drainCuts),
            ("affinity_hits", a.hits), ("affinity_misses", a.misses), ("affinity_spills", a.spills),
            ("affinity_expirations", a.expirations), ("affinity_evictions", a.evictions),
            ("affinity_unrecorded", a.unrecorded), ("affinity_no_target", a.noTarget),
            ("affinity_entries", UInt64(a.size)),
        ]
        for reason in MoveReason.allCases { fields.append(("affinity_moves_\(reason)", a.moves[reason])) }
        fields.append(("proxy_headers_received", c.proxyHeadersReceived))
        fields.append(("proxy_headers_sent", c.proxyHeadersSent))
        fields.append(("proxy_send_failures", c.proxySendFailures))
        for reason in ProxyRejection.allCases {
            fields.append(("proxy_rejected_\(reason.metricName)", c.proxyRejected[Int(reason.rawValue)]))
        }
        for reason in CloseReason.allCases where reason != .none {
            fields.append(("closed_\(reason.metricName)", c.closed[Int(reason.rawValue)]))
        }
        return AdminAnswer(text: fields.map { "\($0.0): \($0.1)" }.joined(separator: "\n"),
                           json: AdminFormat.json(Dictionary(uniqueKeysWithValues: fields.map { ($0.0, $0.1) })))
    }

    func targets(_ r: TargetRegistry, pool: String?, now: Millis) -> AdminAnswer {
        // Entry counts walk every worker's table: only `show targets` pays.
        let loads = ControlPlane.loads(collect(entries: true))
        var rows: [[String]] = []
        var objects: [[String: Any]] = []
        for (p, pr) in r.pools.enumerated() where pool == nil || pr.name == pool {
            for t in pr.targets {
                let l = loads[p]?[t.spec.address] ?? TargetLoad(address: t.spec.address)
                var stateText = "ready"
                var drainText = "-"
                var drainLeftMs: Millis?
                switch t.state {
                case .ready: stateText = "ready"
                case .down: stateText = "down"
                case .maint: stateText = "maint"
                case .draining(let m): stateText = "draining(\(m.rawValue))"
                }
                if let d = t.drain {
                    drainLeftMs = max(0, d.deadlineMs - now)
                    // Whole seconds, rounded up: "0s" only once it is over.
                    drainText = d.expired ? "expired" : "\((max(0, d.deadlineMs - now) + 999) / 1000)s"
                }
                let health = healthFields(pool: p, record: t, now: now)
                rows.append([pr.name, "\(t.spec.address)", t.spec.name ?? "-", stateText, "\(t.spec.weight)",
                             "\(l.connections)", "\(l.affinityEntries)", "\(l.connectionsTotal)",
                             "\(l.bytesUp)", "\(l.bytesDown)", drainText, health.text, health.changes])
                var o: [String: Any] = [
                    "pool": pr.name, "address": "\(t.spec.address)", "state": stateText.split(separator: "(").first.map(String.init) ?? stateText,
                    "weight": t.spec.weight, "connections": l.connections, "affinity_entries": l.affinityEntries,
                    "connections_total": l.connectionsTotal, "bytes_in": l.bytesUp, "bytes_out": l.bytesDown,
                    "origin": t.origin.rawValue,
                ]
                if let n = t.spec.name { o["name"] = n }
                if case .draining(let m) = t.state { o["drain_mode"] = m.rawValue }
                if let left = drainLeftMs { o["drain_remaining_ms"] = left }
                if let d = t.drain { o["drain_expired"] = d.expired }
                o["connect_failures"] = l.connectFailures
                o.merge(health.json) { a, _ in a }
                objects.append(o)
            }
        }
        let header = ["POOL", "ADDRESS", "NAME", "STATE", "WEIGHT", "CONNS", "AFFINITY", "TOTAL", "BYTES_IN", "BYTES_OUT", "DRAIN_LEFT",
                      "HEALTH", "HEALTH_CHANGES"]
        return AdminAnswer(text: AdminFormat.table(header, rows), json: AdminFormat.json(["targets": objects]))
    }

    func affinity(_ r: TargetRegistry, pool: Int?, client: IPAddress?, limit: Int, now: Millis) -> AdminAnswer {
        let reports = collect(PinQuery(pool: pool, client: client, limit: limit))
        var rows: [[String]] = []
        var objects: [[String: Any]] = []
        let nowSec = UInt32(truncatingIfNeeded: now / 1000)
        for (w, report) in reports.enumerated() {
            for (p, pin) in report.pins.prefix(limit - rows.count) {
                let target = pin.address.map { "\($0)" } ?? "(gone)"
                let idle = nowSec &- pin.seenSec
                rows.append([r.pools.indices.contains(p) ? r.pools[p].name : "\(p)", "\(pin.key.address)", target,
                             "\(pin.connections)", "\(idle)", "\(w)"])
                objects.append(["pool": r.pools.indices.contains(p) ? r.pools[p].name : "\(p)", "client": "\(pin.key.address)",
                                "target": target, "connections": pin.connections, "idle_s": idle, "worker": w])
            }
        }
        let header = ["POOL", "CLIENT", "TARGET", "CONNS", "IDLE_S", "WORKER"]
        return AdminAnswer(text: AdminFormat.table(header, rows), json: AdminFormat.json(["entries": objects]))
    }
}

/// An answer in both forms; the request picks one.
struct AdminAnswer {
    var text: String
    var json: String
    static func ok(_ message: String) -> AdminAnswer {
        AdminAnswer(text: "ok: \(message)", json: AdminFormat.json(["result": "ok", "message": message]))
    }
}

enum AdminFormat {
    static func json(_ object: Any) -> String {
        guard let data = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]),
              let s = String(data: data, encoding: .utf8) else { return "{\"error\":\"internal: unencodable answer\"}" }
        return s
    }

    static func jsonError(_ message: String) -> String { json(["error": message]) }

    /// Left-aligned columns, two spaces apart.
    static func table(_ header: [String], _ rows: [[String]]) -> String {
        var widths = header.map(\.count)
        for r in rows { for (i, c) in r.enumerated() { widths[i] = max(widths[i], c.count) } }
        func line(_ cells: [String]) -> String {
            cells.enumerated().map { i, c in
                i == cells.count - 1 ? c : c.padding(toLength: widths[i], withPad: " ", startingAt: 0)
            }.joined(separator: "  ")
        }
        return ([line(header)] + rows.map(line)).joined(separator: "\n")
    }
}
